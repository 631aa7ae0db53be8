#!/usr/bin/env python3
"""Log writer for bench/scale.sh: writes LOG_LINES lines of exactly 100 bytes
(99 characters and a newline, starting with `w<FORKMASTER_WORKER or WRITER>`)
to stdout as fast as it can, then sleeps (under forkmaster, so that it is
not respawned) or exits (`LINGER=0`).

Lines go out 40 at a time, in single write(2) calls of 4000 bytes: under
PIPE_BUF (4096), so a pipe shared by several writers never interleaves
them, just as a real app writing whole lines would do.
"""

import os
import time

lines = int(os.environ.get("LOG_LINES", "200000"))
who = os.environ.get("FORKMASTER_WORKER", os.environ.get("WRITER", "0"))
line = ("w%s " % who).ljust(99, "x") + "\n"
batch = 40
chunk = (line * batch).encode()
for _ in range(lines // batch):
    os.write(1, chunk)
if lines % batch:
    os.write(1, (line * (lines % batch)).encode())
if os.environ.get("LINGER", "1") == "1":
    time.sleep(3600)
