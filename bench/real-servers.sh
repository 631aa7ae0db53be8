#!/usr/bin/env bash
# Real app servers under forkmaster, run from the repo root:
#
#     bash bench/real-servers.sh            # every server that is installed
#     bash bench/real-servers.sh gunicorn   # only the ones named
#
# Installs nothing: for each server in docs/APPS.md's table it checks that
# the server is present, writes a tiny app for it in a temp dir, starts
# forkmaster (release build, 2 workers, 127.0.0.1) with it, and drives a
# bounded load (bench/real_load.py: a few threads, a fresh connection per
# request) through BENCH_ROUNDS upgrades (`forkmaster upgrade --wait`), then
# a fresh load through BENCH_ROUNDS reloads (`forkmaster reload --wait`),
# and prints failed and total requests of each per server. A server that is missing is reported as
# skipped, with what to install.
#
# BENCH_NGINX=once puts nginx (foreground, config in the temp dir) in front
# of each server, the load then going through nginx; BENCH_NGINX=twice lists
# the server twice in nginx's upstream (max_fails=0), so that
# `proxy_next_upstream` has a next server to retry on.
#
# Settings: BENCH_ROUNDS (default 3), BENCH_THREADS (default 4),
# BENCH_PAUSE (seconds of load between steps, default 1), BENCH_KEEP=1 keeps
# the temp dir (master logs), CARGO names the cargo command for the release
# build (default: cargo). Exits 1 if an upgrade or reload failed; failed
# requests alone do not fail it (several servers are known to drop a few,
# see docs/APPS.md).
set -euo pipefail

export LC_ALL=C
readonly ROUNDS=${BENCH_ROUNDS:-3}
readonly THREADS=${BENCH_THREADS:-4}
readonly PAUSE=${BENCH_PAUSE:-1}
readonly WORKERS=2
# Bounds: no load runs longer than this, whatever happens.
readonly LOAD_MAX_SECS=300
readonly NGINX_MODE=${BENCH_NGINX:-}
NGINX_PID=""

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$(pwd)
readonly REPO
readonly FM="$REPO/target/release/forkmaster"
TMP=$(mktemp -d "${TMPDIR:-/tmp}/forkmaster-real.XXXXXX")
readonly TMP
LOAD_PID=""
RESULTS=()
STEP_FAILURES=0

say() { printf '# %s\n' "$*" >&2; }

cleanup() {
    local pidfile pid
    [[ -n $LOAD_PID ]] && kill "$LOAD_PID" 2>/dev/null || true
    [[ -n $NGINX_PID ]] && kill "$NGINX_PID" 2>/dev/null || true
    for pidfile in "$TMP"/*/fm.pid "$TMP"/*/fm.pid.oldbin; do
        [[ -f $pidfile ]] || continue
        pid=$(tr -dc '0-9' <"$pidfile")
        [[ -n $pid && $(readlink "/proc/$pid/exe" 2>/dev/null) == "$(readlink -f "$FM")" ]] || continue
        kill -TERM "$pid" 2>/dev/null || true
    done
    if [[ ${BENCH_KEEP:-} == 1 ]]; then
        say "kept $TMP"
    else
        rm -rf "$TMP"
    fi
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# ---------------------------------------------------------------------------
# One function per server: checks what it needs (prints why not and returns
# 1 if something is missing), writes its app into $dir, and sets
#   CMD     the worker command          READY   --ready mode
#   STOP    --stop-signal               VERSION what ran, for the table
# Each listens on the inherited socket, fd 3, as the table says.

setup_go() {
    command -v go >/dev/null || { echo "go (apt-get install golang-go)"; return 1; }
    cat >"$dir/main.go" <<'EOF'
package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	f := os.NewFile(3, "listener")
	ln, err := net.FileListener(f)
	if err != nil {
		panic(err)
	}
	f.Close()
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "pid=%d\n", os.Getpid())
	})}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	go srv.Serve(ln)
	if addr := os.Getenv("NOTIFY_SOCKET"); addr != "" {
		if c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: addr, Net: "unixgram"}); err == nil {
			c.Write([]byte("READY=1"))
			c.Close()
		}
	}
	<-ctx.Done()
	srv.Shutdown(context.Background())
}
EOF
    (cd "$dir" && GOCACHE="$dir/gocache" GO111MODULE=off go build -o app main.go) >&2 || { echo "go build failed"; return 1; }
    CMD=("$dir/app") READY=notify STOP=TERM VERSION=$(go version | awk '{print $3}')
}

write_wsgi() {
    cat >"$dir/app.py" <<'EOF'
import os

def app(environ, start_response):
    body = ('pid=%d\n' % os.getpid()).encode()
    start_response('200 OK', [('Content-Type', 'text/plain'), ('Content-Length', str(len(body)))])
    return [body]
EOF
}

setup_gunicorn() {
    local gunicorn
    gunicorn=$(command -v gunicorn) || { echo "gunicorn (apt-get install gunicorn)"; return 1; }
    write_wsgi
    # No --bind: gunicorn takes LISTEN_FDS itself. --preload: READY=1 only
    # once the app imported. One gunicorn worker per forkmaster worker.
    CMD=("$gunicorn" --chdir "$dir" --workers 1 --preload --graceful-timeout 20)
    if "$gunicorn" --help 2>/dev/null | grep -q -- --no-control-socket; then
        CMD+=(--no-control-socket)
    fi
    CMD+=(app:app)
    READY=notify STOP=TERM VERSION="gunicorn $("$gunicorn" --version 2>&1 | grep -o '[0-9][0-9.]*' | head -1)"
}

setup_uvicorn() {
    local python
    for python in "$(command -v python3)" /usr/bin/python3; do
        "$python" -c 'import uvicorn' 2>/dev/null && break
        python=""
    done
    [[ -n $python ]] || { echo "uvicorn (apt-get install python3-uvicorn)"; return 1; }
    cat >"$dir/asgi.py" <<'EOF'
import os

async def app(scope, receive, send):
    if scope['type'] != 'http':
        return
    body = ('pid=%d\n' % os.getpid()).encode()
    await send({'type': 'http.response.start', 'status': 200,
                'headers': [(b'content-type', b'text/plain'), (b'content-length', str(len(body)).encode())]})
    await send({'type': 'http.response.body', 'body': body})
EOF
    CMD=("$python" -m uvicorn --fd 3 --app-dir "$dir" --log-level warning --lifespan off asgi:app)
    READY=delay:1s STOP=TERM
    VERSION="uvicorn $("$python" -c 'import uvicorn; print(uvicorn.__version__)')"
}

setup_puma() {
    local puma
    puma=$(command -v puma) || { echo "puma (apt-get install puma)"; return 1; }
    cat >"$dir/config.ru" <<'EOF'
run ->(env) { [200, { 'content-type' => 'text/plain' }, ["pid=#{Process.pid}\n"]] }
EOF
    # -b must name the inherited listener exactly, or puma closes it (and
    # unlinks a unix socket's file) and binds its own.
    CMD=("$puma" --dir "$dir" -w 0 -t 4:4 -b "tcp://127.0.0.1:$port" --quiet "$dir/config.ru")
    READY=delay:2s STOP=TERM VERSION="puma $("$puma" --version 2>&1 | grep -o '[0-9][0-9.]*' | head -1)"
}

setup_node() {
    local node
    node=$(command -v node) || { echo "node (apt-get install nodejs)"; return 1; }
    cat >"$dir/app.js" <<'EOF'
'use strict'
const http = require('http')
const server = http.createServer((req, res) => res.end(`pid=${process.pid}\n`))
server.listen({ fd: 3 })
process.on('SIGTERM', () => {
  server.close(() => process.exit(0))
  server.closeIdleConnections()
})
process.on('SIGUSR1', () => {})
EOF
    CMD=("$node" "$dir/app.js") READY=delay:1s STOP=TERM VERSION="node $("$node" --version)"
}

write_psgi() {
    cat >"$dir/app.psgi" <<'EOF'
sub { [200, ['Content-Type' => 'text/plain'], ["pid=$$\n"]] }
EOF
}

setup_starman() {
    local plackup
    plackup=$(command -v plackup) || { echo "plackup (apt-get install starman)"; return 1; }
    perl -MStarman -MNet::Server::SS::PreFork -e1 2>/dev/null ||
        { echo "Starman and Net::Server::SS::PreFork (apt-get install starman libnet-server-ss-prefork-perl)"; return 1; }
    write_psgi
    # SERVER_STARTER_PORT makes Starman take the inherited socket; QUIT is
    # its graceful stop (TERM is immediate).
    CMD=("$plackup" -s Starman --workers 1 -E deployment "$dir/app.psgi")
    READY=delay:2s STOP=QUIT VERSION="Starman $(perl -MStarman -e 'print $Starman::VERSION')"
}

setup_starlet() {
    local plackup
    plackup=$(command -v plackup) || { echo "plackup (apt-get install libplack-perl)"; return 1; }
    perl -MStarlet -e1 2>/dev/null || { echo "Starlet (not packaged in Debian; cpanm Starlet)"; return 1; }
    write_psgi
    CMD=("$plackup" -s Starlet --max-workers 1 -E deployment "$dir/app.psgi")
    READY=delay:2s STOP=TERM VERSION="Starlet $(perl -MStarlet -e 'print $Starlet::VERSION')"
}

setup_python_sdnotify() {
    local python
    for python in /usr/bin/python3 "$(command -v python3)"; do
        "$python" -c 'import sdnotify' 2>/dev/null && break
        python=""
    done
    [[ -n $python ]] || { echo "sdnotify (apt-get install python3-sdnotify)"; return 1; }
    cat >"$dir/app.py" <<'EOF'
import os, signal, socket, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import sdnotify

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"pid={os.getpid()}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass

class Server(ThreadingHTTPServer):
    daemon_threads = False
    def __init__(self, sock):
        super().__init__(sock.getsockname(), Handler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock

sock = socket.socket(fileno=3)
sock.set_inheritable(False)
sock.setblocking(False)
server = Server(sock)
signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
signal.signal(signal.SIGUSR1, lambda *_: None)
sdnotify.SystemdNotifier().notify("READY=1")
server.serve_forever(poll_interval=0.2)
server.server_close()
EOF
    CMD=("$python" "$dir/app.py") READY=notify STOP=TERM
    VERSION="python $("$python" -c 'import sys; print(sys.version.split()[0])') sdnotify"
}

readonly ALL_SERVERS=(go gunicorn uvicorn puma node starman starlet python_sdnotify)

# ---------------------------------------------------------------------------

# Starts nginx in front of 127.0.0.1:$port on 127.0.0.1:$load_port; sets
# NGINX_PID. Uses bench_server's locals.
start_nginx() {
    local nginx upstream="server 127.0.0.1:$port max_fails=0;"
    nginx=$(command -v nginx || echo /usr/sbin/nginx)
    [[ -x $nginx ]] || { say "BENCH_NGINX needs nginx (apt-get install nginx)"; exit 2; }
    [[ $NGINX_MODE == twice ]] && upstream="$upstream $upstream"
    cat >"$dir/nginx.conf" <<EOF
daemon off;
master_process off;
pid $dir/nginx.pid;
error_log $dir/nginx-error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $dir/client_body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    upstream app { $upstream }
    server {
        listen 127.0.0.1:$load_port;
        location / { proxy_pass http://app; }
    }
}
EOF
    "$nginx" -p "$dir" -c "$dir/nginx.conf" -e "$dir/nginx-error.log" </dev/null &
    NGINX_PID=$!
    local i
    for ((i = 0; i < 100; i++)); do
        curl -fsS -o /dev/null "http://127.0.0.1:$load_port/" 2>/dev/null && return 0
        sleep 0.1
    done
    say "nginx does not answer on 127.0.0.1:$load_port (see $dir/nginx-error.log)"
    exit 1
}

# Runs one server through the rounds; appends its line to RESULTS.
bench_server() {
    local name=$1 dir port load_port why pidfile log stop_file upgrades reloads
    dir="$TMP/$name"
    mkdir -p "$dir"
    port=$(free_port)
    load_port=$port
    CMD=() READY="" STOP="" VERSION=""
    if ! why=$("setup_$name"); then
        RESULTS+=("$name: skipped, missing $why")
        return 0
    fi
    # The setup ran in a subshell for $(...): run it again to get CMD etc.
    "setup_$name" >/dev/null
    pidfile="$dir/fm.pid" log="$dir/fm.log" stop_file="$dir/stop"
    say "$name: ${CMD[*]}"
    "$FM" -D -w "$WORKERS" -l "127.0.0.1:$port" -p "$pidfile" --ready "$READY" \
        --stop-signal "$STOP" --graceful-timeout 20s --stdout-path "$log" --stderr-path "$log" \
        -- "${CMD[@]}" || {
        RESULTS+=("$name ($VERSION): did not start (log: $log)")
        STEP_FAILURES=$((STEP_FAILURES + 1))
        return 0
    }
    if [[ -n $NGINX_MODE ]]; then
        load_port=$(free_port)
        start_nginx
    fi
    upgrades=$(run_steps upgrade)
    reloads=$(run_steps reload)
    if [[ -n $NGINX_PID ]]; then
        kill "$NGINX_PID" 2>/dev/null || true
        wait "$NGINX_PID" 2>/dev/null || true
        NGINX_PID=""
    fi
    "$FM" stop -p "$pidfile" --wait --timeout 60s >&2 || true
    [[ -f $dir/step-failures ]] && STEP_FAILURES=$((STEP_FAILURES + $(wc -l <"$dir/step-failures")))
    RESULTS+=("$name ($VERSION)${NGINX_MODE:+ behind nginx ($NGINX_MODE)}: $ROUNDS upgrades $upgrades; $ROUNDS reloads $reloads")
}

# Under a fresh bounded load, ROUNDS times `forkmaster $1 --wait`; prints
# the load's `failed=F total=T`. Uses bench_server's locals.
run_steps() {
    local step=$1 code i
    rm -f "$stop_file"
    python3 "$REPO/bench/real_load.py" "$load_port" "$stop_file" "$THREADS" "$LOAD_MAX_SECS" \
        >"$dir/$step.out" 2>"$dir/$step.err" &
    LOAD_PID=$!
    sleep "$PAUSE"
    for ((i = 0; i < ROUNDS; i++)); do
        code=0
        "$FM" "$step" -p "$pidfile" --wait --timeout 60s >&2 || code=$?
        if ((code != 0)); then
            say "$name: $step failed (exit $code)"
            echo 1 >>"$dir/step-failures"
        fi
        sleep "$PAUSE"
    done
    touch "$stop_file"
    wait "$LOAD_PID" || true
    LOAD_PID=""
    sed "s/^/#   $name $step: /" "$dir/$step.err" >&2
    cat "$dir/$step.out"
}

main() {
    local servers=("$@") name
    ((${#servers[@]})) || servers=("${ALL_SERVERS[@]}")
    say "building the release binary"
    "${CARGO:-cargo}" build --release --bin forkmaster >&2
    for name in "${servers[@]}"; do
        declare -F "setup_$name" >/dev/null || { say "unknown server $name (one of ${ALL_SERVERS[*]})"; exit 2; }
        bench_server "$name"
    done
    printf '%s\n' "${RESULTS[@]}"
    ((STEP_FAILURES == 0))
}

main "$@"
