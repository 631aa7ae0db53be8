"""gunicorn's settings for bench/preload.sh: bench/preload/heavy.py's
readiness marker, written as each worker is about to serve."""

import os


def post_worker_init(worker):
    path = os.environ.get("HEAVY_READY_FILE")
    if path:
        with open(path, "a") as f:
            f.write("%d\n" % os.getpid())
