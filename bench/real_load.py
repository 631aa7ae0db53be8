#!/usr/bin/env python3
"""Bounded HTTP load for bench/real-servers.sh: THREADS threads send
`GET /` on a fresh connection each (`Connection: close`) to 127.0.0.1:PORT
until the file STOP exists, MAX_SECS have passed, or each thread made
MAX_REQUESTS. A request fails unless a complete 200 response arrives.
Prints `failed=F total=T` and the first few failures on stderr.

    real_load.py PORT STOP [THREADS] [MAX_SECS] [MAX_REQUESTS]
"""

import os
import socket
import sys
import threading
import time

port = int(sys.argv[1])
stop_file = sys.argv[2]
threads = int(sys.argv[3]) if len(sys.argv) > 3 else 4
max_secs = float(sys.argv[4]) if len(sys.argv) > 4 else 300
max_requests = int(sys.argv[5]) if len(sys.argv) > 5 else 200000

lock = threading.Lock()
total = 0
failures = []
REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"


def one_request():
    """None when a complete 200 response came, else why not."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(REQUEST)
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
    except OSError as e:
        return f"{type(e).__name__}: {e}"
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return f"incomplete response: {data[:80]!r}"
    status = head.split(b" ", 2)[1] if head.count(b" ") >= 1 else b"?"
    if status != b"200":
        return f"status {status.decode(errors='replace')}"
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            if len(body) < int(line.split(b":", 1)[1]):
                return "body cut short"
    return None


def run():
    global total
    deadline = time.monotonic() + max_secs
    for _ in range(max_requests):
        if os.path.exists(stop_file) or time.monotonic() > deadline:
            return
        why = one_request()
        with lock:
            total += 1
            if why is not None:
                failures.append(why)


workers = [threading.Thread(target=run) for _ in range(threads)]
for w in workers:
    w.start()
for w in workers:
    w.join()
print(f"failed={len(failures)} total={total}")
for why in failures[:5]:
    print(f"  failure: {why}", file=sys.stderr)
