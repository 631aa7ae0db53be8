"""The conformance app for the Python helper (contrib/preload/conformance.py):
loads the helper, registers an after-fork hook, calls serve(), then, in each
worker, prints its one-line JSON report on stdout and a line on stderr and
sleeps until killed. The report's fields are in docs/PRELOAD.md."""

import ctypes
import json
import os
import random
import sys
import threading

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
import forkmaster_preload  # noqa: E402

PR_GET_PDEATHSIG = 2


def pdeathsig():
    libc = ctypes.CDLL(None, use_errno=True)
    sig = ctypes.c_int(0)
    if libc.prctl(PR_GET_PDEATHSIG, ctypes.byref(sig), 0, 0, 0) != 0:
        return None
    return sig.value


loaded_in = os.getpid()
hook = {"calls": 0, "pid": None, "listen_pid": None}


def after_fork():
    hook["calls"] += 1
    hook["pid"] = os.getpid()
    hook["listen_pid"] = os.environ.get("LISTEN_PID")


forkmaster_preload.after_fork(after_fork)
forkmaster_preload.serve()

report = {
    "pid": os.getpid(),
    "ppid": os.getppid(),
    "pgid": os.getpgrp(),
    "loaded_in": loaded_in,
    "hook_calls": hook["calls"],
    "hook_pid": hook["pid"],
    "hook_listen_pid": hook["listen_pid"],
    "random": str(random.getrandbits(62)),
    "pdeathsig": pdeathsig(),
    "runtime": "python %d.%d.%d" % sys.version_info[:3],
    "env": {k: v for k, v in os.environ.items()
            if k.startswith(("FORKMASTER_", "LISTEN_")) or k == "NOTIFY_SOCKET"},
}
sys.stdout.write(json.dumps(report) + "\n")
sys.stdout.flush()
sys.stderr.write("conformance-stderr pid=%d\n" % os.getpid())
sys.stderr.flush()
threading.Event().wait()
