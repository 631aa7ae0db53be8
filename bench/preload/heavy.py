"""A heavy app for bench/preload.sh: at load time it builds HEAVY_MB MiB of
read-only state out of many small objects (dicts, strings, ints, floats, as
an app's heap holds, not one bytes blob) and burns BOOT_MS of CPU, as an app
importing its framework does. The same file runs four ways:

    python3 heavy.py                          # forkmaster, exec or --preload
    gunicorn --preload -c gunicorn.conf.py heavy:app

Run as a script it calls the preload helper's serve() (which returns at
once in exec mode), then serves `app` over HTTP on the inherited fd 3 and
sends READY=1 to NOTIFY_SOCKET. Each worker appends its pid to
HEAVY_READY_FILE, if set, once it is about to serve (gunicorn does it from
its post_worker_init hook). TERM (or QUIT) finishes the requests in flight
and exits. Answers `pid=PID items=N`.
"""

import os
import select
import signal
import socket
import sys
import time

# The HTTP server's modules are part of the loaded app: imported here, before
# serve() forks, they are shared by every worker as gunicorn's are (imported
# in serve_http() instead, each worker would load its own copy, with
# http.client's ssl and libcrypto: about 6 MiB of private memory a worker).
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

HEAVY_MB = int(os.environ.get("HEAVY_MB", "64"))
BOOT_MS = int(os.environ.get("BOOT_MS", "300"))
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def build_state(mib):
    """Grows a dict of records until the process's RSS grew by `mib` MiB."""
    state = {}
    target = rss_bytes() + mib * 1024 * 1024
    i = 0
    while rss_bytes() < target:
        for _ in range(2000):
            state["user:%d" % i] = {
                "id": i,
                "name": "user-%d-%s" % (i, "x" * (i % 40)),
                "score": i * 0.5,
                "tags": ["t%d" % (i % 7), "g%d" % (i % 13)],
            }
            i += 1
    return state


def burn_cpu(ms):
    deadline = time.process_time() + ms / 1000.0
    n = 0
    while time.process_time() < deadline:
        n += sum(range(1000))
    return n


STATE = build_state(HEAVY_MB)
burn_cpu(BOOT_MS)


def app(environ, start_response):
    body = ("pid=%d items=%d\n" % (os.getpid(), len(STATE))).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def mark_ready():
    path = os.environ.get("HEAVY_READY_FILE")
    if path:
        with open(path, "a") as f:
            f.write("%d\n" % os.getpid())


def notify_ready():
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    # Best effort, as sd_notify(3): no listener is not this app's failure.
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(b"READY=1", addr)
    except OSError:
        pass


def serve_http():
    """`app` through wsgiref, one thread per connection, on fd 3."""

    class Handler(WSGIRequestHandler):
        def log_message(self, *args):
            pass

    class Server(ThreadingMixIn, WSGIServer):
        daemon_threads = False
        block_on_close = True

    sock = socket.socket(fileno=3)
    # Every worker polls the one listener: a blocking accept() would hang
    # in the worker that lost the race for a connection, deaf to TERM.
    sock.setblocking(False)
    server = Server(sock.getsockname(), Handler, bind_and_activate=False)
    server.socket.close()
    server.socket = sock
    server.server_name, server.server_port = sock.getsockname()[:2]
    server.setup_environ()
    server.set_app(app)

    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    signal.signal(signal.SIGQUIT, lambda *_: stopping.append(True))
    # EPOLLEXCLUSIVE: a connection wakes one of the workers polling the
    # listener, not all of them (a thundering herd of Python processes eats
    # the CPU that booting workers need). The 0.2 s timeout lets a stop
    # signal be seen; server_close() then waits for the requests in flight.
    poller = select.epoll()
    poller.register(sock.fileno(), select.EPOLLIN | select.EPOLLEXCLUSIVE)
    mark_ready()
    notify_ready()
    while not stopping:
        if poller.poll(0.2):
            server._handle_request_noblock()
    poller.close()
    server.server_close()


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, os.path.join(here, "..", "..", "contrib", "preload", "python"))
    if os.environ.get("FORKMASTER_PRELOAD_FD"):
        import forkmaster_preload

        forkmaster_preload.serve()
    serve_http()


if __name__ == "__main__":
    main()
