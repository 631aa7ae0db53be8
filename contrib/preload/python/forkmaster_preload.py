"""forkmaster's preload helper for Python: load the app once, fork workers.

With ``forkmaster --preload`` the master runs the app once per generation as
the *preloader*; this module then forks the workers on the master's request,
so they share the loaded code copy-on-write (docs/PRELOAD.md, protocol
version 1). Without ``--preload`` (``FORKMASTER_PRELOAD_FD`` unset) ``serve()``
returns at once, so the same app runs in both modes.

Usage, after the app is loaded and before it serves::

    import forkmaster_preload
    forkmaster_preload.serve()   # returns in each forked worker (or at once in exec mode)

Register what must be redone in each worker (reconnect databases, restart
threads) with ``forkmaster_preload.after_fork(fn)`` (also a decorator).

Standard library only; Python 3.9 or later; Linux.
"""

import ctypes
import gc
import json
import os
import random
import select
import socket
import sys
import time

__all__ = ["after_fork", "serve", "PROTOCOL_VERSION"]

PROTOCOL_VERSION = 1
PRELOAD_FD = "FORKMASTER_PRELOAD_FD"
MASTER_PID = "FORKMASTER_MASTER_PID"
MAX_PACKET = 65536
_PR_SET_PDEATHSIG = 1
# How long a new worker waits to be reparented to the master.
_REPARENT_WAIT = 5.0
_REPARENT_POLL = 0.001
# While intermediate children are pending, how long the preloader waits for
# the next request before it looks for exited ones again (milliseconds).
_REAP_POLL_MS = 2

_hooks = []
# The preloader's intermediate children not reaped yet.
_pending = set()


def after_fork(fn):
    """Registers ``fn()`` to run in each forked worker, in registration
    order, before ``serve()`` returns there. Returns ``fn`` (a decorator)."""
    _hooks.append(fn)
    return fn


def serve():
    """In exec mode (``FORKMASTER_PRELOAD_FD`` unset): returns at once.

    As the preloader: says hello, then forks a worker for each ``spawn``
    request; exits with status 0 when the master closes the socket. Returns
    only in a forked worker, after the worker steps of the protocol."""
    value = os.environ.get(PRELOAD_FD)
    if value is None:
        return
    fd = int(value)
    sock = socket.socket(fileno=fd)
    # Once, before the first fork: the loaded heap stays shared, as the
    # collector no longer touches it. The few objects the loop makes later
    # need no freezing.
    gc.freeze()
    _libc()
    _hello(sock)
    # The preloader does not wait for an intermediate child before it takes
    # the next request, so the forks overlap; it reaps them without blocking
    # between requests, and while any is pending it waits for the socket
    # only briefly, so none lingers as a zombie.
    pending = _pending
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    while True:
        _reap(pending, block=False)
        if pending and not poller.poll(_REAP_POLL_MS):
            continue
        try:
            data, fds, _flags, _addr = socket.recv_fds(sock, MAX_PACKET, 2)
        except InterruptedError:
            continue
        if not data:
            _flush()
            _reap(pending, block=True)
            os._exit(0)
        try:
            message = json.loads(data)
        except ValueError:
            message = None
        if not isinstance(message, dict) or message.get("type") != "spawn":
            for extra in fds:
                os.close(extra)
            continue
        if len(fds) != 2:
            _failed(sock, message.get("id"), "expected 2 fds with spawn, got %d" % len(fds), fds)
            continue
        if _spawn(sock, message, fds):
            return


def _send(sock, message):
    sock.send(json.dumps(message).encode())


def _hello(sock):
    runtime = "python %d.%d.%d" % sys.version_info[:3]
    _send(sock, {"type": "hello", "version": PROTOCOL_VERSION, "pid": os.getpid(), "runtime": runtime})


def _flush():
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass


def _reap(pending, block):
    """Reaps the intermediate children in ``pending`` that have exited (all
    of them when ``block``), and forgets them."""
    flags = 0 if block else os.WNOHANG
    for pid in list(pending):
        try:
            done, _status = os.waitpid(pid, flags)
        except ChildProcessError:
            done = pid
        if done:
            pending.discard(pid)


def _spawn(sock, message, fds):
    """Double fork. True only in the new worker, set up and ready to return;
    in the preloader the intermediate child joins ``_pending``."""
    request_id = message.get("id")
    _flush()
    try:
        middle = os.fork()
    except OSError as e:
        _failed(sock, request_id, "fork: %s" % e.strerror, fds)
        return False
    if middle:
        for fd in fds:
            os.close(fd)
        _pending.add(middle)
        return False
    # The intermediate child: fork the worker, report, exit so the worker
    # is reparented to the master (a child subreaper).
    try:
        worker = os.fork()
    except OSError as e:
        _failed(sock, request_id, "fork: %s" % e.strerror, [])
        os._exit(1)
    if worker:
        try:
            _send(sock, {"type": "spawned", "id": request_id, "pid": worker})
        finally:
            os._exit(0)
    try:
        _become_worker(sock, message, fds)
    except BaseException as e:
        try:
            os.write(2, ("forkmaster_preload: worker setup failed: %r\n" % (e,)).encode())
        except OSError:
            pass
        os._exit(1)
    return True


def _failed(sock, request_id, why, fds):
    for fd in fds:
        os.close(fd)
    try:
        _send(sock, {"type": "spawn_failed", "id": request_id, "message": why})
    except OSError:
        pass


_libc_handle = None


def _libc():
    """The C library, loaded once in the preloader rather than in each worker."""
    global _libc_handle
    if _libc_handle is None:
        _libc_handle = ctypes.CDLL(None, use_errno=True)
    return _libc_handle


def _become_worker(sock, message, fds):
    """The protocol's worker steps, in order."""
    # 1. Its own process group, as an exec'd worker.
    os.setpgid(0, 0)
    # 2. Wait to be reparented to the master.
    master = int(os.environ.get(MASTER_PID, "0"))
    deadline = time.monotonic() + _REPARENT_WAIT
    while os.getppid() != master:
        if time.monotonic() > deadline:
            os._exit(1)
        time.sleep(_REPARENT_POLL)
    # 3. Die with the master; it may have died just before.
    _libc().prctl(_PR_SET_PDEATHSIG, 9, 0, 0, 0)
    if os.getppid() != master:
        os._exit(1)
    # 4. Its stdout and stderr.
    for target, fd in zip((1, 2), fds):
        os.dup2(fd, target)
        os.close(fd)
    # 5. Its environment.
    env = message.get("env")
    if isinstance(env, dict):
        for key, value in env.items():
            if isinstance(key, str) and isinstance(value, str):
                os.environ[key] = value
    os.environ["LISTEN_PID"] = str(os.getpid())
    os.environ.pop(PRELOAD_FD, None)
    # 6. The preload socket is the preloader's alone.
    sock.close()
    # 7. Fresh random state, then the app's hooks.
    random.seed()
    for hook in _hooks:
        hook()
