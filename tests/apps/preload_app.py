"""A small HTTP app for forkmaster's preload tests (stdlib only).

Loads forkmaster's preload helper from contrib/preload/python, records its
boot (one line per load of this module) in $PRELOAD_APP_BOOTS, then serves
`GET /` on the inherited listener (fd 3) with one line of key=value fields:
its pid, slot, generation, the pid that loaded the module, and the token in
$DEMO_TOKEN_FILE. It sends READY=1 to NOTIFY_SOCKET, stops after the request
in hand on SIGTERM, and in exec mode (no FORKMASTER_PRELOAD_FD) runs as is.

PRELOAD_APP_MODE: `garbage` sends malformed and unknown packets after its
hello; `garbage-first` sends one before its hello; `refuse` answers every
spawn with spawn_failed; `liar` answers with a pid that is not a new worker;
`oversize` sends a packet over 64 KiB after its hello; `version2` says hello
in protocol version 2; `glitch` answers spawn_failed to every spawn that
comes within 0.6 s of the first, then forks as usual, and records the
monotonic time of each spawn it receives in $PRELOAD_APP_SPAWNS; `flood`
sends junk packets from a thread, as fast as the socket takes them, for
$PRELOAD_APP_FLOOD_SECS seconds (default 3) after its hello while it
serves spawns, then writes how many it sent to $PRELOAD_APP_FLOODED.
"""

import os
import signal
import socket
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "contrib", "preload", "python"))

import forkmaster_preload  # noqa: E402

BOOT_PID = os.getpid()
boots = os.environ.get("PRELOAD_APP_BOOTS")
if boots:
    with open(boots, "a") as f:
        f.write("boot pid=%d\n" % BOOT_PID)

mode = os.environ.get("PRELOAD_APP_MODE", "")
if mode == "oversize":
    real_hello = forkmaster_preload._hello

    def oversize_hello(sock):
        real_hello(sock)
        sock.send(b" " * 70000)

    forkmaster_preload._hello = oversize_hello
if mode == "version2":
    forkmaster_preload.PROTOCOL_VERSION = 2
if mode.startswith("garbage"):
    real_hello = forkmaster_preload._hello

    def noisy_hello(sock):
        if mode == "garbage-first":
            sock.send(b"this is not json")
        real_hello(sock)
        sock.send(b"this is not json")
        sock.send(b'{"type": "bogus"}')
        sock.send(b'{"type": "spawned", "id": 999999, "pid": 1}')

    forkmaster_preload._hello = noisy_hello

if mode == "flood":
    import threading
    import time

    real_hello = forkmaster_preload._hello

    def flood(sock):
        end = time.monotonic() + float(os.environ.get("PRELOAD_APP_FLOOD_SECS", "3"))
        sent = 0
        while time.monotonic() < end:
            try:
                sock.send(b'{"type": "bogus", "n": %d}' % sent, socket.MSG_DONTWAIT)
                sent += 1
            except BlockingIOError:
                time.sleep(0.0005)
        flooded = os.environ.get("PRELOAD_APP_FLOODED")
        if flooded:
            with open(flooded + ".tmp", "w") as f:
                f.write("%d\n" % sent)
            os.rename(flooded + ".tmp", flooded)

    def flooding_hello(sock):
        real_hello(sock)
        # Alongside the spawns: the helper's loop forks workers meanwhile.
        threading.Thread(target=flood, args=(sock,), daemon=True).start()

    forkmaster_preload._hello = flooding_hello

if mode == "glitch":
    import time

    real_spawn = forkmaster_preload._spawn
    first_spawn = []

    def glitchy_spawn(sock, message, fds):
        now = time.monotonic()
        first_spawn[:] = first_spawn or [now]
        glitching = now - first_spawn[0] < 0.6
        with open(os.environ["PRELOAD_APP_SPAWNS"], "a") as f:
            f.write("spawn at=%.6f failed=%s\n" % (now, "yes" if glitching else "no"))
        if glitching:
            forkmaster_preload._failed(sock, message["id"], "a transient glitch", fds)
            return False
        return real_spawn(sock, message, fds)

    forkmaster_preload._spawn = glitchy_spawn

if mode in ("refuse", "liar"):

    def bad_spawn(sock, message, fds):
        for fd in fds:
            os.close(fd)
        if mode == "refuse":
            reply = {"type": "spawn_failed", "id": message["id"], "message": "refused by the test"}
        else:
            # The master itself: never the master's own child.
            reply = {"type": "spawned", "id": message["id"], "pid": os.getppid()}
        forkmaster_preload._send(sock, reply)
        return False

    forkmaster_preload._spawn = bad_spawn

hooks_run = []
forkmaster_preload.after_fork(lambda: hooks_run.append("after_fork"))

forkmaster_preload.serve()

stopping = False


def on_term(signum, frame):
    global stopping
    stopping = True


signal.signal(signal.SIGTERM, on_term)
signal.signal(signal.SIGINT, on_term)
listener = socket.socket(fileno=3)
# Woken now and then to see a stop asked for; the request in hand is answered.
listener.settimeout(0.2)
notify = os.environ.get("NOTIFY_SOCKET")
if notify:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.sendto(b"READY=1", notify)
    s.close()


def answer(conn):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            return
        data += chunk
    token = ""
    token_file = os.environ.get("DEMO_TOKEN_FILE")
    if token_file:
        try:
            with open(token_file) as f:
                token = f.read().strip()
        except OSError:
            pass
    env = os.environ
    body = (
        "pid=%d worker=%s generation=%s boot_pid=%d token=%s hooks=%s listen_pid=%s preload_fd=%s notify=%s\n"
        % (
            os.getpid(),
            env.get("FORKMASTER_WORKER", "-"),
            env.get("FORKMASTER_GENERATION", "-"),
            BOOT_PID,
            token,
            ",".join(hooks_run) or "-",
            env.get("LISTEN_PID", "-"),
            env.get("FORKMASTER_PRELOAD_FD", "-"),
            "yes" if env.get("NOTIFY_SOCKET") else "no",
        )
    )
    head = "HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
    conn.sendall(head.encode() + body.encode())


while not stopping:
    try:
        conn, _ = listener.accept()
    except socket.timeout:
        continue
    conn.settimeout(10)
    try:
        answer(conn)
    except OSError:
        pass
    finally:
        conn.close()
sys.exit(0)
