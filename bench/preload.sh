#!/usr/bin/env bash
# Preload benchmark: one heavy app, four ways to fork it, run from the repo root:
#
#     bash bench/preload.sh                     # every mode, 15-20 minutes on 2 cores
#     BENCH_QUICK=1 bash bench/preload.sh       # smoke run
#     bash bench/preload.sh fm-exec-py gunicorn # only these modes
#
# The app (bench/preload/heavy.py and heavy.rb) builds HEAVY_MB MiB (default
# 64) of small objects and burns BOOT_MS ms of CPU (default 300) at load
# time. Modes, each with WORKERS (16) workers on 127.0.0.1:
#
#   fm-exec-py     forkmaster, exec mode: each worker runs python3 heavy.py
#   fm-preload-py  forkmaster --preload: heavy.py loaded once, workers forked
#   gunicorn       gunicorn --preload -c gunicorn.conf.py heavy:app
#   fm-exec-rb     forkmaster, exec mode: each worker runs ruby heavy.rb
#   fm-preload-rb  forkmaster --preload with the Ruby helper
#   unicorn        unicorn -c unicorn.conf.rb heavy.ru (preload_app true)
#
# Per mode, BENCH_RUNS times (default 3; figures are medians):
# 1. Start: from the server's launch until all WORKERS workers are about to
#    serve (each appends its pid to a file: heavy.* itself under forkmaster,
#    gunicorn's post_worker_init and unicorn's after_fork hooks otherwise).
# 2. Memory: the sum of Pss (/proc/PID/smaps_rollup) over the server's whole
#    process tree (master, preloader, workers) 1 s after all are ready.
# 3. Upgrade, BENCH_UPGRADES times a run (default 2): USR2 until the new
#    generation is all ready and the old master is gone. forkmaster:
#    `forkmaster upgrade --wait`. gunicorn and unicorn leave the old master
#    to the operator, so the script does what one would: waits for the new
#    master's WORKERS workers, then stops the old master (gunicorn TERM,
#    unicorn QUIT) and waits until it is gone.
# 4. Zero downtime, in the modes of BENCH_LOAD_MODES (default: both
#    --preload modes, or none when this forkmaster has no --preload): under
#    a bounded load (bench/real_load.py, 4 threads, a fresh connection per
#    request), BENCH_LOAD_ACTIONS (20) upgrades, then under a fresh load as
#    many reloads (HUP, `forkmaster reload --wait`); failed requests counted.
#
# The --preload modes need a forkmaster with --preload and the helper of the
# language (contrib/preload/python, contrib/preload/ruby); without them they
# are reported as not available. gunicorn and unicorn are installed with
# apt-get when missing (as root); modes whose server is missing are skipped.
#
# Everything runs in a temp dir (removed on exit unless BENCH_KEEP=1); every
# process started is stopped on exit. Exits 1 if a request failed under load
# or an upgrade or reload failed. CARGO names the cargo command for the
# release build (default: cargo).
set -Eeuo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
trap 'printf "bench/preload.sh: line %s: %s failed\n" "$LINENO" "$BASH_COMMAND" >&2' ERR

# EPOCHREALTIME and awk must use '.' as the decimal point.
export LC_ALL=C

readonly HOST=127.0.0.1
readonly ALL_MODES=(fm-exec-py fm-preload-py gunicorn fm-exec-rb fm-preload-rb unicorn)
if [[ ${BENCH_QUICK:-0} == 1 ]]; then
    RUNS=${BENCH_RUNS:-1}
    UPGRADES=${BENCH_UPGRADES:-1}
    LOAD_ACTIONS=${BENCH_LOAD_ACTIONS:-3}
else
    RUNS=${BENCH_RUNS:-3}
    UPGRADES=${BENCH_UPGRADES:-2}
    LOAD_ACTIONS=${BENCH_LOAD_ACTIONS:-20}
fi
readonly RUNS UPGRADES LOAD_ACTIONS
readonly WORKERS=${BENCH_WORKERS:-16}
export HEAVY_MB=${HEAVY_MB:-64}
export BOOT_MS=${BOOT_MS:-300}
readonly LOAD_THREADS=4
readonly LOAD_MAX_SECS=1200
# Bounds for every poll below; generous, as 16 heavy boots on 2 cores are slow.
readonly READY_TIMEOUT_S=120
readonly POLL_S=0.05

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$(pwd)
readonly REPO
readonly APPS="$REPO/bench/preload"
readonly FM="${FORKMASTER_BENCH_BIN:-$REPO/target/release/forkmaster}"
FM_EXE=""
HAS_PRELOAD=no

TMP=$(mktemp -d "${TMPDIR:-/tmp}/forkmaster-preload.XXXXXX")
readonly TMP
MASTER_PIDS=()    # forkmaster masters (lib.sh), stopped on exit
GROUPS_STARTED=() # every server's process group (started with setsid)
WRK_PID=""        # lib.sh's name for the load generator (bench/real_load.py)
SRV_STARTED=""    # the server process this script started (its child)
NEW_CHILD=""
CHECKS_FAILED=()

die() { printf 'bench/preload.sh: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- processes

# Running and not a zombie (a zombie answers kill -0).
alive() {
    local state
    state=$(awk '{ sub(/.*\) /, ""); print $1 }' "/proc/$1/stat" 2>/dev/null) || return 1
    [[ -n $state && $state != Z ]]
}

gone() { ! alive "$1"; }

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM ERR
    if [[ -n $WRK_PID ]]; then
        kill -TERM "$WRK_PID" 2>/dev/null
        wait "$WRK_PID" 2>/dev/null
    fi
    local pids pgid
    pids=$(live_masters)
    if [[ -n $pids ]]; then
        # shellcheck disable=SC2086  # one pid per word
        kill -TERM $pids 2>/dev/null
        wait_until 10 no_live_masters
    fi
    for pgid in "${GROUPS_STARTED[@]}"; do
        kill -KILL -- "-$pgid" 2>/dev/null
    done
    # Workers of forkmaster lead groups of their own: the ready files name
    # them (checked to still be the app: a pid may have been reused).
    local pid
    while read -r pid; do
        grep -qs heavy "/proc/$pid/cmdline" && kill -KILL "$pid" 2>/dev/null
    done < <(cat "$TMP"/*.ready 2>/dev/null)
    if [[ ${BENCH_KEEP:-0} == 1 ]]; then
        say "kept $TMP"
    else
        rm -rf "$TMP"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Children of $1, one pid a line (ps: processes may vanish while it reads).
children_of() {
    ps -e -o pid=,ppid= | awk -v p="$1" '$2 == p { print $1 }'
}

# $1 and all its descendants.
tree_of() {
    ps -e -o pid=,ppid= | awk -v root="$1" '
        { parent[$1] = $2; pids[NR] = $1 }
        END {
            inside[root] = 1; print root
            do {
                added = 0
                for (i in pids) { p = pids[i]; if (!(p in inside) && (parent[p] in inside)) { inside[p] = 1; print p; added = 1 } }
            } while (added)
        }'
}

# Sum of Pss in kB over the process tree of $1.
tree_pss_kb() {
    local pid total=0 kb
    for pid in $(tree_of "$1"); do
        kb=$(awk '$1 == "Pss:" { print $2 }' "/proc/$pid/smaps_rollup" 2>/dev/null) || continue
        total=$(( total + ${kb:-0} ))
    done
    echo "$total"
}

# How many pids in the ready file $2 are live children of master $1.
ready_count() {
    local master=$1 file=$2 pid n=0
    [[ -f $file ]] || { echo 0; return 0; }
    while read -r pid; do
        alive "$pid" && [[ $(awk '{ sub(/.*\) /, ""); print $2 }' "/proc/$pid/stat" 2>/dev/null) == "$master" ]] &&
            n=$(( n + 1 ))
    done < <(sort -u "$file")
    echo "$n"
}

all_ready() { (( $(ready_count "$1" "$2") >= WORKERS )); }

all_ready_or_gone() { all_ready "$1" "$2" || gone "$1"; }

# ---------------------------------------------------------------- servers

# Whether mode $1 can run here; prints why not.
mode_missing() {
    case $1 in
        fm-exec-py) command -v python3 >/dev/null || echo "python3" ;;
        fm-exec-rb) command -v ruby >/dev/null || echo "ruby" ;;
        fm-preload-py)
            [[ $HAS_PRELOAD == yes ]] || { echo "a forkmaster with --preload"; return 0; }
            [[ -f $REPO/contrib/preload/python/forkmaster_preload.py ]] || echo "contrib/preload/python" ;;
        fm-preload-rb)
            [[ $HAS_PRELOAD == yes ]] || { echo "a forkmaster with --preload"; return 0; }
            command -v ruby >/dev/null || echo "ruby" ;;
        gunicorn) command -v gunicorn >/dev/null || echo "gunicorn (apt-get install gunicorn)" ;;
        unicorn) command -v unicorn >/dev/null || echo "unicorn (apt-get install unicorn)" ;;
        *) die "unknown mode $1 (modes: ${ALL_MODES[*]})" ;;
    esac
}

# Installs gunicorn and unicorn with apt-get when missing and we are root.
ensure_servers() {
    local missing=()
    command -v gunicorn >/dev/null || missing+=(gunicorn)
    command -v unicorn >/dev/null || missing+=(unicorn)
    (( ${#missing[@]} )) || return 0
    [[ $EUID -eq 0 ]] && command -v apt-get >/dev/null || return 0
    say "installing ${missing[*]} with apt-get"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"; } \
        >"$TMP/apt.log" 2>&1 || say "apt-get failed: $(tail -n 2 "$TMP/apt.log" | tr '\n' ' ')"
}

# Starts mode $1 (name $2 for its files) in a process group of its own; sets
# SRV_PID (the master), SRV_PIDFILE, SRV_READY, SRV_LOG, SRV_PORT, SRV_T0.
start_server() {
    local mode=$1 name=$2 cmd=()
    SRV_PORT=$(pick_port)
    SRV_PIDFILE="$TMP/$name.pid" SRV_READY="$TMP/$name.ready" SRV_LOG="$TMP/$name.log"
    rm -f "$SRV_PIDFILE" "$SRV_READY"
    local fm=("$FM" --listen "$HOST:$SRV_PORT" --workers "$WORKERS" --pid "$SRV_PIDFILE"
        --ready notify --ready-timeout 5m --graceful-timeout 60s)
    case $mode in
        fm-exec-py) cmd=("${fm[@]}" -- python3 "$APPS/heavy.py") ;;
        fm-preload-py) cmd=("${fm[@]}" --preload -- python3 "$APPS/heavy.py") ;;
        fm-exec-rb) cmd=("${fm[@]}" -- ruby "$APPS/heavy.rb") ;;
        fm-preload-rb) cmd=("${fm[@]}" --preload -- ruby "$APPS/heavy.rb") ;;
        gunicorn)
            # gunicorn's own pid file (.gpid): lib.sh reads *.pid as forkmaster's.
            SRV_PIDFILE="$TMP/$name.gpid"
            cmd=(gunicorn --preload -c "$APPS/gunicorn.conf.py" --chdir "$APPS" -w "$WORKERS"
                -b "$HOST:$SRV_PORT" --pid "$SRV_PIDFILE" --graceful-timeout 60 heavy:app) ;;
        unicorn)
            SRV_PIDFILE="$TMP/$name.upid"
            cmd=(env HEAVY_WORKERS="$WORKERS" HEAVY_LISTEN="$HOST:$SRV_PORT" HEAVY_PID_FILE="$SRV_PIDFILE"
                unicorn -c "$APPS/unicorn.conf.rb" "$APPS/heavy.ru") ;;
    esac
    SRV_T0=$(now_us)
    # No LISTEN_FDS or NOTIFY_SOCKET of ours may reach a server.
    HEAVY_READY_FILE="$SRV_READY" setsid env -u LISTEN_FDS -u LISTEN_PID -u NOTIFY_SOCKET \
        "${cmd[@]}" >>"$SRV_LOG" 2>&1 </dev/null &
    SRV_PID=$!
    SRV_STARTED=$SRV_PID
    GROUPS_STARTED+=("$SRV_PID")
    [[ $mode == fm-* ]] && remember_master "$SRV_PID"
    # `env` execs the server: the pid is the server's (unicorn: env, then unicorn).
    return 0
}

# Graceful stop of mode $1's current master, then waits until it and every
# worker named in the ready file are gone.
stop_server() {
    local mode=$1 pid
    case $mode in
        fm-*) "$FM" stop -p "$SRV_PIDFILE" --wait --timeout 60s >/dev/null 2>&1 || kill -TERM "$SRV_PID" 2>/dev/null || true ;;
        gunicorn) kill -TERM "$SRV_PID" 2>/dev/null || true ;;
        unicorn) kill -QUIT "$SRV_PID" 2>/dev/null || true ;;
    esac
    wait_until 60 gone "$SRV_PID" || kill -KILL "$SRV_PID" 2>/dev/null || true
    while read -r pid; do
        wait_until 30 gone "$pid" || kill -KILL "$pid" 2>/dev/null || true
    done < <(sort -u "$SRV_READY" 2>/dev/null)
    # Reaps the one we started (a later master is not our child).
    gone "$SRV_STARTED" && { wait "$SRV_STARTED" 2>/dev/null || true; }
    return 0
}

# Whether $1 has a child not in the list $2 (" pid pid "); sets NEW_CHILD.
# gunicorn's and unicorn's USR2 forks the new master off the old one.
new_child() {
    local child
    for child in $(children_of "$1"); do
        [[ $2 == *" $child "* ]] || { NEW_CHILD=$child; return 0; }
    done
    return 1
}

# One upgrade of mode $1; sets UP_MS (USR2 to new all ready and old gone)
# and UP_OK, and moves SRV_PID to the new master.
upgrade_server() {
    local mode=$1 old=$SRV_PID new="" t0 out before re='^upgraded: pid ([0-9]+) -> ([0-9]+),'
    UP_OK=no UP_MS=-
    t0=$(now_us)
    case $mode in
        fm-*)
            out=$("$FM" upgrade -p "$SRV_PIDFILE" --wait --timeout 120s 2>&1) || { say "upgrade failed: $out"; return 0; }
            [[ $out =~ $re ]] || { say "upgrade: unexpected output: $out"; return 0; }
            new=${BASH_REMATCH[2]}
            remember_master "$new"
            ;;
        gunicorn | unicorn)
            before=" $(children_of "$old" | tr '\n' ' ') "
            kill -USR2 "$old"
            wait_until "$READY_TIMEOUT_S" new_child "$old" "$before" || { say "$mode: no new master after USR2"; return 0; }
            new=$NEW_CHILD
            if ! wait_until "$READY_TIMEOUT_S" all_ready_or_gone "$new" "$SRV_READY" || ! all_ready "$new" "$SRV_READY"; then
                say "$mode: new master $new not all ready"
                return 0
            fi
            if [[ $mode == gunicorn ]]; then kill -TERM "$old"; else kill -QUIT "$old"; fi
            wait_until 60 gone "$old" || { say "$mode: old master $old still there"; return 0; }
            ;;
    esac
    UP_MS=$(( ($(now_us) - t0) / 1000 ))
    SRV_PID=$new UP_OK=yes
}

# ---------------------------------------------------------------- numbers

mib() { awk -v k="$1" 'BEGIN { if (k == "-") print "-"; else printf "%.0f", k / 1024 }'; }

# ---------------------------------------------------------------- parts 1-3

ROWS=()           # mode|start m/m/m|pss m/m/m|upgrade m/m/m|upgrades ok/tried

bench_mode() {
    local mode=$1 run i starts="" psses="" ups="" ok=0 tried=0
    for run in $(seq 1 "$RUNS"); do
        say "$mode: run $run of $RUNS"
        start_server "$mode" "$mode-$run"
        if ! wait_until "$READY_TIMEOUT_S" all_ready_or_gone "$SRV_PID" "$SRV_READY" || ! all_ready "$SRV_PID" "$SRV_READY"; then
            CHECKS_FAILED+=("$mode: $WORKERS workers not ready within ${READY_TIMEOUT_S}s (log: $SRV_LOG)")
            stop_server "$mode"
            return 0
        fi
        starts+="$(( ($(now_us) - SRV_T0) / 1000 ))"$'\n'
        sleep 1
        psses+="$(tree_pss_kb "$SRV_PID")"$'\n'
        for i in $(seq 1 "$UPGRADES"); do
            tried=$(( tried + 1 ))
            upgrade_server "$mode"
            if [[ $UP_OK == yes ]]; then
                ok=$(( ok + 1 ))
                ups+="$UP_MS"$'\n'
            else
                CHECKS_FAILED+=("$mode: upgrade $i of run $run failed (log: $SRV_LOG)")
                break
            fi
        done
        stop_server "$mode"
    done
    ROWS+=("$mode|$(printf '%s' "$starts" | stats %d)|$(printf '%s' "$psses" | stats %d)|$(printf '%s' "$ups" | stats %d)|$ok/$tried")
    say "$mode: start ms, Pss kB, upgrade ms (median min max): $(printf '%s' "$starts" | stats %d);" \
        "$(printf '%s' "$psses" | stats %d); $(printf '%s' "$ups" | stats %d); upgrades $ok/$tried"
}

# ---------------------------------------------------------------- part 4

LOAD_ROWS=()      # mode|action|done/tried|failed|total

# Under a fresh bounded load, LOAD_ACTIONS times `forkmaster $2 --wait`.
load_actions() {
    local mode=$1 action=$2 stop_file="$TMP/load-$1-$2.stop" out="$TMP/load-$1-$2.out" i ok=0 tried=0 result
    rm -f "$stop_file"
    python3 "$REPO/bench/real_load.py" "$SRV_PORT" "$stop_file" "$LOAD_THREADS" "$LOAD_MAX_SECS" \
        >"$out" 2>"$out.err" &
    WRK_PID=$!
    wait_until 10 load_connected || true
    for i in $(seq 1 "$LOAD_ACTIONS"); do
        kill -0 "$WRK_PID" 2>/dev/null || break
        tried=$i
        if "$FM" "$action" -p "$SRV_PIDFILE" --wait --timeout 120s >>"$TMP/load-$1-$2.steps" 2>&1; then
            ok=$(( ok + 1 ))
        else
            say "$mode: $action $i failed: $(tail -n 1 "$TMP/load-$1-$2.steps")"
        fi
    done
    touch "$stop_file"
    wait "$WRK_PID" || true
    WRK_PID=""
    result=$(cat "$out")
    sed "s/^/#   $mode $action: /" "$out.err" >&2
    local failed=${result#failed=} total=${result#*total=}
    failed=${failed%% *}
    LOAD_ROWS+=("$mode|$action|$ok/$tried|$failed|$total")
    (( ok == LOAD_ACTIONS )) || CHECKS_FAILED+=("$mode: $(( LOAD_ACTIONS - ok )) of $LOAD_ACTIONS ${action}s failed")
    [[ $failed == 0 ]] || CHECKS_FAILED+=("$mode: $failed requests failed during ${action}s")
}

bench_load() {
    local mode=$1
    say "$mode: $LOAD_ACTIONS upgrades, then $LOAD_ACTIONS reloads, under load"
    start_server "$mode" "$mode-load"
    APP_PORT=$SRV_PORT
    if ! wait_until "$READY_TIMEOUT_S" all_ready_or_gone "$SRV_PID" "$SRV_READY" || ! all_ready "$SRV_PID" "$SRV_READY"; then
        CHECKS_FAILED+=("$mode: not ready for the load part (log: $SRV_LOG)")
        stop_server "$mode"
        return 0
    fi
    load_actions "$mode" upgrade
    # The master now is the last upgrade's; stop_server finds it by pid file.
    SRV_PID=$(tr -dc '0-9' <"$SRV_PIDFILE")
    load_actions "$mode" reload
    stop_server "$mode"
}

# ---------------------------------------------------------------- report

report() {
    local row mode start pss up ok
    echo
    echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), kernel $(uname -r)"
    echo "build:   $(git -C "$REPO" describe --always --dirty 2>/dev/null || echo "?"), $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "app:     HEAVY_MB=$HEAVY_MB BOOT_MS=$BOOT_MS, $WORKERS workers; python $(python3 -c 'import sys; print(sys.version.split()[0])' 2>/dev/null || echo -)," \
        "ruby $(ruby -e 'print RUBY_VERSION' 2>/dev/null || echo -)"
    echo
    echo "start, memory and upgrade per mode (median/min/max of $RUNS runs, $UPGRADES upgrades each)"
    printf '%-15s%-22s%-22s%-26s%s\n' mode "start ms" "total Pss MiB" "upgrade ms" upgrades
    for row in "${ROWS[@]}"; do
        IFS='|' read -r mode start pss up ok <<<"$row"
        read -r -a pss <<<"$pss"
        # shellcheck disable=SC2086  # "median min max" split into words
        printf '%-15s%-22s%-22s%-26s%s\n' "$mode" "$(printf '%s/%s/%s' $start)" \
            "$(mib "${pss[0]}")/$(mib "${pss[1]}")/$(mib "${pss[2]}")" "$(printf '%s/%s/%s' $up)" "$ok"
    done
    for row in "${SKIPPED[@]}"; do echo "$row"; done
    echo "(start: launch -> $WORKERS workers about to serve; total Pss: master + preloader + workers,"
    echo " 1 s after all ready; upgrade: USR2 -> new generation all ready and old master gone)"
    if (( ${#LOAD_ROWS[@]} )); then
        echo
        echo "zero downtime: $LOAD_ACTIONS actions each under bench/real_load.py ($LOAD_THREADS threads, Connection: close)"
        printf '%-15s%-10s%-8s%-8s%s\n' mode action "done" failed requests
        local action failed total
        for row in "${LOAD_ROWS[@]}"; do
            IFS='|' read -r mode action ok failed total <<<"$row"
            printf '%-15s%-10s%-8s%-8s%s\n' "$mode" "$action" "$ok" "$failed" "$total"
        done
    fi
}

SKIPPED=()

main() {
    [[ -f Cargo.toml && -d bench/preload ]] || die "run me from the forkmaster repo root"
    local modes=("$@") mode why load_modes=()
    (( ${#modes[@]} )) || modes=("${ALL_MODES[@]}")
    local cargo=${CARGO:-cargo}
    say "building the release binary"
    "$cargo" build --release --bin forkmaster >&2
    FM_EXE=$(readlink -f "$FM")
    "$FM" --help 2>&1 | grep -q -- '--preload' && HAS_PRELOAD=yes
    ensure_servers
    for mode in "${modes[@]}"; do
        why=$(mode_missing "$mode")
        if [[ -n $why ]]; then
            SKIPPED+=("$(printf '%-15s%s' "$mode" "not available: needs $why")")
            continue
        fi
        bench_mode "$mode"
    done
    if [[ -n ${BENCH_LOAD_MODES+set} ]]; then
        read -r -a load_modes <<<"$BENCH_LOAD_MODES"
    else
        for mode in fm-preload-py fm-preload-rb; do
            [[ -z $(mode_missing "$mode") ]] && load_modes+=("$mode")
        done
    fi
    for mode in "${load_modes[@]}"; do
        [[ $mode == fm-* ]] || die "BENCH_LOAD_MODES takes forkmaster modes only, not $mode"
        why=$(mode_missing "$mode")
        [[ -z $why ]] || { CHECKS_FAILED+=("$mode: load part needs $why"); continue; }
        bench_load "$mode"
    done
    report
    if (( ${#CHECKS_FAILED[@]} )); then
        echo
        printf 'FAILED: %s\n' "${CHECKS_FAILED[@]}"
        return 1
    fi
}

main "$@"
