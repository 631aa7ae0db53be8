#!/usr/bin/env python3
"""Baseline for bench/scale.sh: the least a preforking supervisor can do.

    notify_spawner.py N DEMO SOCKET_PATH LOG_FILE

Binds a listening Unix socket, starts N copies of DEMO with it as fd 3
(`LISTEN_FDS=1`) and `NOTIFY_SOCKET` pointing at an abstract datagram socket
of ours, all with posix_spawn (no per-child bookkeeping, no logging, no
timers), then waits for N `READY=1` datagrams. Prints, on one line:

    start=<epoch s> spawned=<epoch s> ready=<epoch s> self_cpu=<s> children_cpu=<s>

`start`: when main() began (the interpreter's own start-up is left out);
`spawned`: when the spawn loop ended; `ready`: when the N-th READY=1
arrived; `self_cpu`: this process's CPU time up to then; `children_cpu`: the
CPU time of the N demo processes (boot, then SIGKILL), i.e. what N boots
of the app cost the machine. Exits 1 if not all are ready in 120 s.
Every child is killed before exit, also on SIGTERM/SIGINT.
"""

import os
import resource
import signal
import socket
import sys
import time


def main():
    start = time.time()
    count, demo, sock_path, log_path = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, lambda *_: sys.exit(130))

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(sock_path)
    listener.listen(1024)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = "forkmaster-bench/%d/notify" % os.getpid()
    notify.bind("\0" + name)
    notify.settimeout(120)
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    env = dict(os.environ)
    for key in [k for k in env if k.startswith(("LISTEN_", "FORKMASTER_", "WATCHDOG_"))]:
        del env[key]
    env.update(LISTEN_FDS="1", NOTIFY_SOCKET="@" + name)
    actions = [
        (os.POSIX_SPAWN_DUP2, listener.fileno(), 3),
        (os.POSIX_SPAWN_DUP2, log_fd, 1),
        (os.POSIX_SPAWN_DUP2, log_fd, 2),
    ]
    children = []
    try:
        for slot in range(count):
            env["FORKMASTER_WORKER"] = str(slot)
            children.append(os.posix_spawn(demo, [demo], env, file_actions=actions))
        spawned = time.time()
        ready = 0
        while ready < count:
            data = notify.recv(4096)
            if b"READY=1" in data.split(b"\n"):
                ready += 1
        done = time.time()
        own = resource.getrusage(resource.RUSAGE_SELF)
        self_cpu = own.ru_utime + own.ru_stime
    except socket.timeout:
        print("notify_spawner: only %d of %d ready in 120s" % (ready, count), file=sys.stderr)
        return 1
    finally:
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in children:
            os.waitpid(pid, 0)
        os.unlink(sock_path)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(
        "start=%.6f spawned=%.6f ready=%.6f self_cpu=%.3f children_cpu=%.3f"
        % (start, spawned, done, self_cpu, kids.ru_utime + kids.ru_stime)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
