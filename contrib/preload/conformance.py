#!/usr/bin/env python3
"""Checks a preload helper against docs/PRELOAD.md (protocol version 1).

    python3 contrib/preload/conformance.py -- ruby contrib/preload/conformance/app.rb
    python3 contrib/preload/conformance.py -- python3 contrib/preload/conformance/app.py

Plays the master's part exactly as the protocol says: becomes a child
subreaper, creates the SEQPACKET socketpair, execs COMMAND as the preloader
with a listener (127.0.0.1, an ephemeral port) at fd 3 and the preloader's
environment, waits for `hello`, sends `spawn` requests with two pipes each,
and checks what the workers and the preloader do, from outside (/proc) and
from the report each worker of the conformance app prints on its stdout.
Then it closes the socket and expects the preloader to exit 0. Last, a
child of it plays a second master, is SIGKILLed once its worker is up, and
the worker must die of SIGKILL (the parent-death signal, seen from outside).

Prints one line per check, `PASS name: detail`, `FAIL name: detail` or, for
checks of behaviour the protocol leaves open, `WARN name: detail`; then
`N passed, N failed, N warnings`. Exits 1 if a check failed, 2 on bad usage.
Linux only, Python 3.9 or later, standard library only.
"""

import argparse
import array
import ctypes
import fcntl
import json
import os
import secrets
import shlex
import select
import signal
import socket
import sys
import tempfile
import time

PROTOCOL_VERSION = 1
MAX_PACKET = 65536
PR_SET_CHILD_SUBREAPER = 36
LISTENER_FD = 3
# Not 4: a helper must read the number from FORKMASTER_PRELOAD_FD.
PRELOAD_FD = 7
SIGKILL = int(signal.SIGKILL)
CHANGED_VAR = "FORKMASTER_CONFORMANCE_CHANGED"
TOKEN_VAR = "FORKMASTER_CONFORMANCE_TOKEN"
# What the preloader must not inherit from the environment this runs in.
WORKER_ONLY = ("NOTIFY_SOCKET", "FORKMASTER_WORKER", "WATCHDOG_USEC", "WATCHDOG_PID")


class Checks:
    """Prints each check as it is decided and counts the outcomes."""

    def __init__(self):
        self.passed = self.failed = self.warned = 0

    def check(self, name, ok, detail, optional=False):
        if ok:
            self.passed += 1
            word = "PASS"
        elif optional:
            self.warned += 1
            word = "WARN"
        else:
            self.failed += 1
            word = "FAIL"
        print(f"{word} {name}: {detail}", flush=True)
        return ok


def wait_for(condition, timeout):
    """Polls `condition` every 10 ms; its last value (falsy on timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.01)


def proc_ppid(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    # Field 4, after the command name in parentheses (which may hold spaces).
    return int(stat.rsplit(")", 1)[1].split()[1])


def proc_fds(pid):
    """{fd: link target} of a process, or {} if it is gone."""
    fds = {}
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return fds
    for name in names:
        try:
            fds[int(name)] = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            pass
    return fds


def proc_children(pid):
    """Pids whose parent is `pid` (a scan of /proc: no kernel option needed)."""
    children = []
    for name in os.listdir("/proc"):
        if name.isdigit() and proc_ppid(int(name)) == pid:
            children.append(int(name))
    return children


def inode_link(kind, fd):
    return f"{kind}:[{os.fstat(fd).st_ino}]"


def alive(pid):
    """Running and not a zombie (a zombie child answers kill(0))."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def become_subreaper():
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


class Master:
    """The master's side: the preloader, its socket, and what it sent."""

    def __init__(self, command, workers, log):
        self.command = command
        self.workers = workers
        self.log = log
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.address = "127.0.0.1:%d" % self.listener.getsockname()[1]
        self.sock, self.preloader_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.preload_link = inode_link("socket", self.preloader_end.fileno())
        self.listener_link = inode_link("socket", self.listener.fileno())
        self.pid = None
        self.status = None
        self.early = []  # messages received while waiting for others

    def listener_env(self):
        """What exec mode gives every worker for the one listener at fd 3."""
        return {
            "LISTEN_FDS": "1",
            "LISTEN_FDNAMES": self.address,
            "SERVER_STARTER_PORT": f"{self.address}={LISTENER_FD}",
            "EINHORN_FD_COUNT": "1",
            "EINHORN_FD_0": str(LISTENER_FD),
            "FORKMASTER_WORKERS": str(self.workers),
            "FORKMASTER_GENERATION": "1",
            "FORKMASTER_MASTER_PID": str(os.getpid()),
        }

    def preloader_env(self):
        env = {k: v for k, v in os.environ.items()
               if k not in WORKER_ONLY and not k.startswith(("LISTEN_", "EINHORN_", "FORKMASTER_"))}
        env.pop("SERVER_STARTER_PORT", None)
        env.update(self.listener_env())
        env["FORKMASTER_PRELOAD_FD"] = str(PRELOAD_FD)
        env[CHANGED_VAR] = "preloader"
        return env

    def exec_preloader(self):
        env = self.preloader_env()
        # High, close-on-exec copies first, so that placing them at 3 and 7
        # cannot overwrite one with the other.
        listener = fcntl.fcntl(self.listener.fileno(), fcntl.F_DUPFD_CLOEXEC, 100)
        preload = fcntl.fcntl(self.preloader_end.fileno(), fcntl.F_DUPFD_CLOEXEC, 100)
        out = os.open(self.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        pid = os.fork()
        if pid == 0:
            try:
                null = os.open(os.devnull, os.O_RDONLY)
                os.dup2(null, 0)
                os.dup2(out, 1)
                os.dup2(out, 2)
                os.dup2(listener, LISTENER_FD)
                os.dup2(preload, PRELOAD_FD)
                env["LISTEN_PID"] = str(os.getpid())
                os.execvpe(self.command[0], self.command, env)
            except BaseException as e:  # noqa: B036 - nothing may return into the parent's code
                os.write(2, f"conformance: exec {self.command[0]}: {e}\n".encode())
            os._exit(127)
        for fd in (listener, preload, out):
            os.close(fd)
        self.preloader_end.close()
        self.pid = pid

    def receive(self, timeout):
        """One message (a dict, or the raw bytes if it is not a JSON object),
        or None on timeout or EOF."""
        ready, _, _ = select.select([self.sock], [], [], max(timeout, 0))
        if not ready:
            return None
        data, ancdata, flags, _ = self.sock.recvmsg(MAX_PACKET + 1, socket.CMSG_SPACE(64))
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
                for fd in fds:
                    os.close(fd)
        if not data and not ancdata:
            return None
        if flags & socket.MSG_TRUNC or len(data) > MAX_PACKET:
            return {"type": "<too long>", "bytes": len(data)}
        try:
            message = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return data
        return message if isinstance(message, dict) else data

    def wait_message(self, match, timeout):
        """The first message `match` accepts (earlier unmatched ones are kept)."""
        for i, message in enumerate(self.early):
            if match(message):
                return self.early.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            message = self.receive(deadline - time.monotonic())
            if message is None:
                return None
            if match(message):
                return message
            self.early.append(message)

    def send(self, message, fds=()):
        data = json.dumps(message).encode()
        ancdata = []
        if fds:
            ancdata = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
        self.sock.sendmsg([data], ancdata)

    def reap(self, block_pid=None, timeout=0):
        """Reaps every exited child; the exit status of `block_pid` once it
        has exited (within `timeout`), else None."""
        deadline = time.monotonic() + timeout
        while True:
            while True:
                try:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid == 0:
                    break
                if pid == self.pid:
                    self.status = status
            if block_pid is None or block_pid != self.pid:
                return None
            if self.status is not None or time.monotonic() > deadline:
                return self.status
            time.sleep(0.01)

    def preloader_log(self):
        try:
            with open(self.log, errors="replace") as f:
                return f.read()
        except OSError:
            return ""


class Worker:
    """One spawn request and what came of it."""

    def __init__(self, slot, request_id):
        self.slot = slot
        self.id = request_id
        self.out_r, self.out_w = os.pipe()
        self.err_r, self.err_w = os.pipe()
        self.out_link = inode_link("pipe", self.out_r)
        self.err_link = inode_link("pipe", self.err_r)
        self.token = secrets.token_hex(8)
        self.notify = f"/run/forkmaster-conformance-{os.getpid()}/notify"
        self.pid = None
        self.report = None

    def request(self, master):
        env = dict(master.listener_env())
        env.update({
            "FORKMASTER_WORKER": str(self.slot),
            "NOTIFY_SOCKET": self.notify,
            CHANGED_VAR: f"worker-{self.slot}",
            TOKEN_VAR: self.token,
        })
        # `future` is an unknown member: a helper must ignore it.
        return {"type": "spawn", "id": self.id, "slot": self.slot, "generation": 1,
                "env": env, "future": {"ignored": True}}

    def send(self, master):
        master.send(self.request(master), [self.out_w, self.err_w])
        os.close(self.out_w)
        os.close(self.err_w)

    def read_line(self, fd, timeout):
        """The first line written to the pipe, or None."""
        data = b""
        deadline = time.monotonic() + timeout
        while b"\n" not in data:
            ready, _, _ = select.select([fd], [], [], max(deadline - time.monotonic(), 0))
            if not ready:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            data += chunk
        return data.split(b"\n", 1)[0].decode("utf-8", "replace") if data else None

    def close(self):
        for fd in (self.out_r, self.err_r):
            os.close(fd)


def check_hello(checks, master, timeout):
    message = master.receive(timeout)
    if message is None:
        status = master.reap(master.pid, 1)
        why = "no message" if status is None else \
            f"the preloader exited with status {os.waitstatus_to_exitcode(status)}"
        checks.check("hello.received", False, f"{why} within {timeout}s")
        return False
    if not checks.check("hello.received", isinstance(message, dict),
                        f"first message within {timeout}s: {message!r:.200}"):
        return False
    ok = checks.check("hello.type", message.get("type") == "hello", f"type {message.get('type')!r}")
    ok &= checks.check("hello.version", message.get("version") == PROTOCOL_VERSION,
                       f"version {message.get('version')!r}, expected {PROTOCOL_VERSION}")
    ok &= checks.check("hello.pid", message.get("pid") == master.pid,
                       f"pid {message.get('pid')!r}, exec'd pid {master.pid}")
    checks.check("hello.runtime", isinstance(message.get("runtime"), str),
                 f"runtime {message.get('runtime')!r}", optional=True)
    # A master fails the generation on a bad hello: nothing more to check.
    return ok


def check_spawn(checks, master, worker, timeout):
    """Sends one spawn; checks the answer and the adoption. True if the
    worker is ours."""
    name = f"spawn.{worker.slot}"
    worker.send(master)
    answer = master.wait_message(
        lambda m: isinstance(m, dict) and m.get("id") == worker.id
        and m.get("type") in ("spawned", "spawn_failed"), timeout)
    if not checks.check(f"{name}.answered", answer is not None and answer.get("type") == "spawned"
                        and isinstance(answer.get("pid"), int),
                        f"answer to spawn id {worker.id} within {timeout}s: {answer!r:.200}"):
        return False
    worker.pid = answer["pid"]
    adopted = wait_for(lambda: proc_ppid(worker.pid) == os.getpid(), timeout)
    return checks.check(f"{name}.adopted", adopted,
                        f"pid {worker.pid} became the master's child (parent now {proc_ppid(worker.pid)})")


def check_worker(checks, master, worker, preloader_pid, timeout):
    name = f"worker.{worker.slot}"
    line = worker.read_line(worker.out_r, timeout)
    try:
        report = json.loads(line) if line else None
    except ValueError:
        report = None
    if not checks.check(f"{name}.stdout", isinstance(report, dict),
                        f"a JSON report on the stdout pipe within {timeout}s: {line!r:.200}"):
        return
    worker.report = report
    err = worker.read_line(worker.err_r, timeout)
    checks.check(f"{name}.stderr", err == f"conformance-stderr pid={worker.pid}",
                 f"the stderr pipe got {err!r:.200}")
    pid = worker.pid
    checks.check(f"{name}.pid", report.get("pid") == pid, f"reported pid {report.get('pid')}, spawned {pid}")
    checks.check(f"{name}.ppid", report.get("ppid") == os.getpid(),
                 f"getppid() {report.get('ppid')}, master {os.getpid()}")
    checks.check(f"{name}.pgid", report.get("pgid") == pid, f"process group {report.get('pgid')}, pid {pid}")
    checks.check(f"{name}.preloaded", report.get("loaded_in") == preloader_pid,
                 f"app loaded in pid {report.get('loaded_in')}, the preloader is {preloader_pid}")
    env = report.get("env") if isinstance(report.get("env"), dict) else {}
    expected = {
        "FORKMASTER_WORKER": str(worker.slot),
        "NOTIFY_SOCKET": worker.notify,
        CHANGED_VAR: f"worker-{worker.slot}",
        TOKEN_VAR: worker.token,
        "LISTEN_PID": str(pid),
        "LISTEN_FDS": "1",
        "FORKMASTER_MASTER_PID": str(os.getpid()),
    }
    wrong = {k: env.get(k) for k, v in expected.items() if env.get(k) != v}
    checks.check(f"{name}.env", not wrong, f"wrong or missing: {wrong}" if wrong else "spawn env applied, LISTEN_PID is its pid")
    checks.check(f"{name}.env_preload_fd", "FORKMASTER_PRELOAD_FD" not in env,
                 f"FORKMASTER_PRELOAD_FD {'still set' if 'FORKMASTER_PRELOAD_FD' in env else 'removed'}")
    fds = proc_fds(pid)
    preload = sorted(fd for fd, link in fds.items() if link == master.preload_link)
    checks.check(f"{name}.preload_fd_closed", not preload,
                 f"preload socket open at fds {preload}" if preload else "no fd on the preload socket")
    out_fds = sorted(fd for fd, link in fds.items() if link == worker.out_link)
    err_fds = sorted(fd for fd, link in fds.items() if link == worker.err_link)
    checks.check(f"{name}.output_fds", out_fds == [1] and err_fds == [2],
                 f"stdout pipe at fds {out_fds}, stderr pipe at fds {err_fds} (expected [1], [2])")
    checks.check(f"{name}.listener", fds.get(LISTENER_FD) == master.listener_link,
                 f"fd {LISTENER_FD} is {fds.get(LISTENER_FD)!r}, the listener is {master.listener_link}")
    checks.check(f"{name}.pdeathsig", report.get("pdeathsig") == SIGKILL,
                 f"PR_GET_PDEATHSIG says {report.get('pdeathsig')!r}, expected {SIGKILL}")
    hooks_ok = (report.get("hook_calls") == 1 and report.get("hook_pid") == pid
                and report.get("hook_listen_pid") == str(pid))
    checks.check(f"{name}.after_fork", hooks_ok,
                 f"hook ran {report.get('hook_calls')} time(s) in pid {report.get('hook_pid')} "
                 f"seeing LISTEN_PID={report.get('hook_listen_pid')!r}")


def check_preloader_tidy(checks, master, workers, timeout):
    """The preloader reaped its intermediate children and closed the pipes."""
    links = {w.out_link for w in workers} | {w.err_link for w in workers}
    kids = wait_for(lambda: not proc_children(master.pid), timeout) or proc_children(master.pid)
    checks.check("preloader.reaped", kids is True,
                 "no child left" if kids is True else f"children {kids} left (unreaped intermediates?)")
    held = wait_for(lambda: not (links & set(proc_fds(master.pid).values())), timeout)
    checks.check("preloader.closed_fds", held,
                 "closed its copies of the pipes" if held else "still holds worker pipe fds")


def check_robustness(checks, master, timeout):
    """Junk from the master must not kill the preloader (optional: the
    master never sends junk)."""
    worker = Worker(90, 900)
    try:
        master.send({"type": "no-such-type", "id": 901})
        master.sock.sendmsg([b"this is not JSON"])
        master.send({"type": "spawn", "id": 902, "slot": 91, "generation": 1, "env": {}})
        worker.send(master)
        answer = master.wait_message(lambda m: isinstance(m, dict) and m.get("id") == 900, timeout)
        ok = isinstance(answer, dict) and answer.get("type") == "spawned"
        checks.check("robust.junk", ok, "unknown type, non-JSON and fd-less spawn ignored; next spawn served"
                     if ok else f"no answer to a valid spawn after junk: {answer!r:.200}", optional=True)
        if ok:
            worker.pid = answer["pid"]
            wait_for(lambda: proc_ppid(worker.pid) == os.getpid(), timeout)
        return worker
    except OSError as e:
        checks.check("robust.junk", False, f"socket error: {e}", optional=True)
        return worker


def check_ending(checks, master, workers, timeout):
    master.sock.close()
    status = master.reap(master.pid, timeout)
    if status is None:
        checks.check("ending.exit", False, f"still running {timeout}s after the socket closed")
        return
    code = os.waitstatus_to_exitcode(status)
    checks.check("ending.exit", code == 0, f"exit status {code} after end-of-file")
    survivors = [w.pid for w in workers if w.pid and alive(w.pid)]
    expected = [w.pid for w in workers if w.pid]
    checks.check("ending.workers_survive", survivors == expected,
                 f"workers alive after the preloader's exit: {survivors} of {expected}")


def run_doomed_master(command, log, timeout, report_fd):
    """In a child: a master of its own for one worker; writes the worker's
    pid to `report_fd` once it is set up, then waits to be killed."""
    become_subreaper()
    master = Master(command, 1, log)
    master.exec_preloader()
    hello = master.receive(timeout)
    if not isinstance(hello, dict) or hello.get("type") != "hello":
        return
    worker = Worker(0, 1)
    worker.send(master)
    answer = master.wait_message(lambda m: isinstance(m, dict) and m.get("id") == 1, timeout)
    if not isinstance(answer, dict) or not isinstance(answer.get("pid"), int):
        return
    pid = answer["pid"]
    # Its report comes after step 3: the parent-death signal is set by then.
    if wait_for(lambda: proc_ppid(pid) == os.getpid(), timeout) and worker.read_line(worker.out_r, timeout):
        os.write(report_fd, b"%d\n" % pid)
        time.sleep(timeout * 10)


def check_parent_death(checks, command, log, timeout):
    """A worker dies with its master: a child of ours plays a master, is
    SIGKILLed once its worker is up, and the worker (then reparented to us,
    a subreaper) must have been killed by SIGKILL."""
    r, w = os.pipe()
    doomed = os.fork()
    if doomed == 0:
        try:
            os.close(r)
            run_doomed_master(command, log, timeout, w)
        finally:
            os._exit(0)
    os.close(w)
    ready, _, _ = select.select([r], [], [], timeout * 2)
    line = os.read(r, 64).decode().strip() if ready else ""
    os.close(r)
    os.kill(doomed, signal.SIGKILL)
    os.waitpid(doomed, 0)
    if not checks.check("pdeathsig.setup", line.isdigit(), "a second master got a worker up"
                        if line.isdigit() else "a second master could not get a worker up"):
        return
    pid = int(line)

    def reaped():
        try:
            got, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # not reparented to us yet
            return None
        return status if got == pid else None

    status = wait_for(reaped, timeout)
    if status is None:
        checks.check("pdeathsig.killed", False, f"worker {pid} still running {timeout}s after its master died")
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
        return
    killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == SIGKILL
    checks.check("pdeathsig.killed", killed, f"worker {pid} ended with wait status {status:#x} "
                 f"when its master was SIGKILLed (expected death by SIGKILL)")


def stop_everything(master, workers):
    for worker in workers:
        if worker.pid:
            for target in (-worker.pid, worker.pid):
                try:
                    os.kill(target, signal.SIGKILL)
                except OSError:
                    pass
    if master.pid and master.status is None:
        try:
            os.kill(master.pid, signal.SIGKILL)
        except OSError:
            pass
    wait_for(lambda: master.reap() is None and not proc_children(os.getpid()), 5)


def main(argv):
    parser = argparse.ArgumentParser(
        description="Checks a preload helper against docs/PRELOAD.md.",
        usage="%(prog)s [options] -- COMMAND [ARGS...]")
    parser.add_argument("--hello-timeout", type=float, default=30.0,
                        help="seconds the app may take to load and say hello (default 30)")
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="seconds for each other step (default 10)")
    parser.add_argument("--workers", type=int, default=2, help="workers to spawn (at least 2)")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command or args.workers < 2:
        parser.print_usage(sys.stderr)
        return 2

    become_subreaper()
    checks = Checks()
    with tempfile.TemporaryDirectory(prefix="forkmaster-conformance.") as tmp:
        master = Master(command, args.workers, os.path.join(tmp, "preloader.log"))
        workers = [Worker(slot, 10 + slot) for slot in range(args.workers)]
        hello_ok = False
        try:
            master.exec_preloader()
            print(f"# preloader pid {master.pid}: {shlex.join(command)}", flush=True)
            hello_ok = check_hello(checks, master, args.hello_timeout)
            if hello_ok:
                spawned = [w for w in workers if check_spawn(checks, master, w, args.timeout)]
                for worker in spawned:
                    check_worker(checks, master, worker, master.pid, args.timeout)
                check_preloader_tidy(checks, master, spawned, args.timeout)
                reports = [w.report for w in spawned if w.report]
                if len(reports) >= 2:
                    pids = {r.get("pid") for r in reports}
                    randoms = {r.get("random") for r in reports}
                    checks.check("workers.distinct", len(pids) == len(reports), f"pids {sorted(pids)}")
                    checks.check("workers.reseeded", len(randoms) == len(reports),
                                 f"{len(randoms)} distinct random values from {len(reports)} workers")
                workers.append(check_robustness(checks, master, args.timeout))
            check_ending(checks, master, workers, args.timeout)
        finally:
            stop_everything(master, workers)
            for worker in workers:
                worker.close()
        if hello_ok:
            check_parent_death(checks, command, os.path.join(tmp, "preloader-2.log"), args.timeout)
            # Its preloader, reparented to us, exits at EOF: reap it.
            wait_for(lambda: master.reap() is None and not proc_children(os.getpid()), args.timeout)
        if checks.failed:
            log = master.preloader_log().splitlines()[-30:]
            print("# the preloader's output (last 30 lines):" if log else "# the preloader wrote nothing")
            for line in log:
                print(f"#   {line}")
    print(f"{checks.passed} passed, {checks.failed} failed, {checks.warned} warnings")
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
