#!/usr/bin/env bash
# Benchmark of forkmaster's zero-downtime upgrade (USR2), run from the repo root:
#
#     bash bench/upgrade.sh
#
# 1. Upgrade overhead: with the demo app ready at once (`--ready notify`),
#    times `forkmaster upgrade --wait` for 4, 16 and 64 workers, 5 runs each.
#    That is forkmaster's own cost from USR2 to "old master gone, all new
#    workers ready"; the app itself adds nothing.
# 2. Zero downtime: 20 upgrades back to back under a saturating `wrk` load,
#    with keep-alive and with `Connection: close`, counting failed requests;
#    then a naive stop+start under the same load, as a baseline proving that
#    the harness does see failures.
#
# Everything runs on 127.0.0.1 in a temp dir that is removed on exit, and
# every process started here (masters, including those started by upgrades,
# and wrk) is stopped on exit. Exits 1 if a request failed during upgrades,
# an upgrade failed, or the baseline saw no failure (the harness is blind).
# Set BENCH_KEEP=1 to keep the temp dir (master logs) for inspection, and
# BENCH_RUNS / BENCH_LOAD_UPGRADES to change the counts (defaults 5 / 20).
# CARGO names the cargo command that builds the release binaries (default: cargo).
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# EPOCHREALTIME and awk must use '.' as the decimal point.
export LC_ALL=C

readonly HOST=127.0.0.1
readonly WORKER_COUNTS=(4 16 64)
# BENCH_RUNS and BENCH_LOAD_UPGRADES override the counts, e.g. for a longer soak.
readonly RUNS=${BENCH_RUNS:-5}
readonly LOAD_WORKERS=4
readonly LOAD_UPGRADES=${BENCH_LOAD_UPGRADES:-20}
readonly BASELINE_RESTARTS=3
readonly WRK_THREADS=2
readonly WRK_CONNECTIONS=64
# wrk runs this long at most; it is stopped (INT) as soon as the work is done.
readonly WRK_MAX_SECS=60
# Bounds for every poll below; generous, as the machine may be loaded.
readonly READY_TIMEOUT_S=60
readonly POLL_S=0.05

# The repo root, wherever the script is started from.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$(pwd)
readonly REPO
readonly FM="$REPO/target/release/forkmaster"
readonly DEMO="$REPO/target/release/forkmaster-demo"
FM_EXE=""         # $FM with symlinks resolved, as /proc/PID/exe shows it (set by build)

TMP=$(mktemp -d "${TMPDIR:-/tmp}/forkmaster-bench.XXXXXX")
readonly TMP
MASTER_PIDS=()    # every master pid seen: started here or named by an upgrade
WRK_PID=""        # the running wrk, if any

# Set by start_app for the app in use.
APP_PIDFILE=""
APP_PORT=""
APP_LOG=""
APP_WORKERS=0

die() { printf 'bench/upgrade.sh: %s\n' "$*" >&2; exit 1; }

SLOW_STOPS=()     # durations of graceful stops that took over 1s

# ---------------------------------------------------------------- processes

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    if ! wrk_gone; then
        kill -INT "$WRK_PID" 2>/dev/null
        wait_until 5 wrk_gone || kill -KILL "$WRK_PID" 2>/dev/null
    fi
    # TERM is the master's quick stop; its workers die with it (they are
    # started with PDEATHSIG), so the masters are all there is to stop.
    local pids
    pids=$(live_masters)
    if [[ -n $pids ]]; then
        say "stopping leftover masters: $(echo "$pids" | tr '\n' ' ')"
        # shellcheck disable=SC2086  # one pid per word
        kill -TERM $pids 2>/dev/null
        if ! wait_until 10 no_live_masters; then
            # shellcheck disable=SC2046
            kill -KILL $(live_masters) 2>/dev/null
        fi
    fi
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

# ---------------------------------------------------------------- numbers

# ---------------------------------------------------------------- the app

# Whether the app's master answers and has all its workers ready. (The output
# is captured before matching: `| grep -q` could kill the producer with
# SIGPIPE, which pipefail would count as a failure.)
app_ready() {
    local out
    out=$("$FM" status -p "$APP_PIDFILE" 2>/dev/null) || return 1
    [[ $out == *"phase=running workers=$APP_WORKERS/$APP_WORKERS ready"* ]]
}

# Starts a master with $1 workers of the demo app on 127.0.0.1 (port $2 if
# given, else a free one, retried if another process takes it first) and
# waits until all workers are ready.
start_app() {
    local workers=$1 fixed_port=${2:-} attempt pid
    APP_WORKERS=$workers
    APP_PIDFILE="$TMP/app.pid"
    for attempt in 1 2 3 4 5; do
        APP_PORT=${fixed_port:-$(pick_port)}
        APP_LOG="$TMP/master-$workers-$APP_PORT.log"
        "$FM" --listen "$HOST:$APP_PORT" --workers "$workers" --pid "$APP_PIDFILE" \
            --ready notify --graceful-timeout 10s -- "$DEMO" >>"$APP_LOG" 2>&1 &
        pid=$!
        remember_master "$pid"
        if wait_until "$READY_TIMEOUT_S" app_ready_or_dead "$pid" && app_ready; then
            return 0
        fi
        is_our_master "$pid" && die "master pid $pid not ready in ${READY_TIMEOUT_S}s (log: $APP_LOG)"
        wait "$pid" 2>/dev/null || true
        [[ -z $fixed_port ]] || die "master could not start on port $APP_PORT: $(tail -n 3 "$APP_LOG")"
        say "master did not start on port $APP_PORT, trying another: $(tail -n 1 "$APP_LOG")"
    done
    die "master failed to start 5 times; last log: $APP_LOG"
}

# Graceful stop of whichever master the pid file names now. A slow stop is
# reported: the demo app has nothing to finish, so it means a worker did not
# exit on TERM and was killed at --graceful-timeout.
stop_app() {
    local pid t0 took kills
    pid=$(tr -dc '0-9' 2>/dev/null <"$APP_PIDFILE" || true)
    [[ -n $pid ]] && remember_master "$pid"
    kills=$(grep -c 'event=kill' "$APP_LOG" || true)
    t0=$(now_us)
    "$FM" stop -p "$APP_PIDFILE" --wait --timeout 30s >/dev/null
    took=$(( $(now_us) - t0 ))
    if (( took > 1000000 )); then
        kills=$(( $(grep -c 'event=kill' "$APP_LOG" || true) - kills ))
        say "  slow stop: $(us_to_secs "$took")s, $kills worker(s) killed at --graceful-timeout"
        SLOW_STOPS+=("$(us_to_secs "$took")s")
    fi
    return 0
}

# One `forkmaster upgrade --wait`. Sets UP_RC, UP_OUT, UP_WALL_US and, on
# success, UP_OLD, UP_NEW, UP_READY and UP_SECS (the client's own figure).
upgrade_once() {
    local t0 re='^upgraded: pid ([0-9]+) -> ([0-9]+), ([0-9]+) workers ready in ([0-9.]+)s$'
    UP_RC=0
    UP_OLD="" UP_NEW="" UP_READY="" UP_SECS=""
    t0=$(now_us)
    UP_OUT=$("$FM" upgrade -p "$APP_PIDFILE" --wait --timeout 60s 2>&1) || UP_RC=$?
    UP_WALL_US=$(( $(now_us) - t0 ))
    if [[ $UP_RC -eq 0 && $UP_OUT =~ $re ]]; then
        UP_OLD=${BASH_REMATCH[1]} UP_NEW=${BASH_REMATCH[2]}
        UP_READY=${BASH_REMATCH[3]} UP_SECS=${BASH_REMATCH[4]}
        remember_master "$UP_NEW"
    elif [[ $UP_RC -eq 0 ]]; then
        UP_RC=99
        UP_OUT="unexpected output: $UP_OUT"
    fi
    return 0
}

# The upgrade as the master logs tell it (millisecond timestamps): from the
# old master's `upgrade-start` (USR2 handled, new master forked) to the later
# of the old master's `exit` and the new master's first `all-ready`.
# The client's figure is rounded up to its 50 ms poll; this one is not.
log_upgrade_secs() {
    local old=$1 new=$2 log=$3
    awk -v old="forkmaster[$old]" -v new="forkmaster[$new]" '
        function ms(ts, a) { split(substr(ts, 12, 12), a, ":"); return (a[1] * 3600 + a[2] * 60 + a[3]) * 1000 }
        $3 == old && $4 == "event=upgrade-start" && $5 == "role=old" && start == "" { start = ms($1) }
        $3 == old && $4 == "event=exit" { gone = ms($1) }
        $3 == new && $4 == "event=all-ready" && ready == "" { ready = ms($1) }
        END {
            if (start == "" || gone == "" || ready == "") exit 1
            end = gone > ready ? gone : ready
            d = end - start
            if (d < 0) d += 86400000   # midnight in between
            printf "%.3f\n", d / 1000
        }' "$log"
}

# ---------------------------------------------------------------- setup

build() {
    local cargo=${CARGO:-cargo}
    command -v "$cargo" >/dev/null 2>&1 || die "$cargo is required (install Rust with rustup)"
    say "building release binaries"
    "$cargo" build --release --bins >&2
    [[ -x $FM && -x $DEMO ]] || die "missing $FM or $DEMO after the build"
    FM_EXE=$(readlink -f "$FM")
}

# ---------------------------------------------------------------- part 1

OVERHEAD_ROWS=()

bench_overhead() {
    local n run reported wall logs secs
    for n in "${WORKER_COUNTS[@]}"; do
        start_app "$n"
        say "upgrade overhead: $n workers on $HOST:$APP_PORT, $RUNS upgrades"
        reported="" wall="" logs=""
        for run in $(seq 1 "$RUNS"); do
            upgrade_once
            [[ $UP_RC -eq 0 ]] || die "upgrade $run with $n workers failed (exit $UP_RC): $UP_OUT (log: $APP_LOG)"
            [[ $UP_READY == "$n" ]] || die "upgrade $run: $UP_READY workers ready, expected $n: $UP_OUT"
            say "  $UP_OUT (wall $(us_to_secs "$UP_WALL_US")s)"
            reported+="$UP_SECS"$'\n'
            wall+="$(us_to_secs "$UP_WALL_US")"$'\n'
            # The new master writes its all-ready line before the client sees
            # it, and the old one its exit line before exiting: both are in.
            if secs=$(log_upgrade_secs "$UP_OLD" "$UP_NEW" "$APP_LOG"); then
                logs+="$secs"$'\n'
            fi
        done
        OVERHEAD_ROWS+=("$n|$(printf '%s' "$reported" | stats %.3fs)|$(printf '%s' "$wall" | stats %.3fs)|$(printf '%s' "$logs" | stats %.3fs)")
        stop_app
    done
}

# ---------------------------------------------------------------- part 2

LOAD_ROWS=()
CHECKS_FAILED=()
WARNINGS=()

# The actions run under load. Each sets ACTIONS_TRIED, ACTIONS_OK and
# ACTION_TIMES (wall seconds, one per line) and stops early once wrk has
# ended: work done without load proves nothing.
do_upgrades() {
    local i
    ACTIONS_TRIED=0 ACTIONS_OK=0 ACTION_TIMES=""
    for i in $(seq 1 "$1"); do
        wrk_gone && break
        ACTIONS_TRIED=$i
        upgrade_once
        ACTION_TIMES+="$(us_to_secs "$UP_WALL_US")"$'\n'
        if [[ $UP_RC -eq 0 && $UP_READY == "$APP_WORKERS" ]]; then
            ACTIONS_OK=$(( ACTIONS_OK + 1 ))
        else
            say "  upgrade $i failed (exit $UP_RC): $UP_OUT"
            # No master left means nothing more to upgrade.
            app_ready || break
        fi
    done
}

do_stop_starts() {
    local i t0
    ACTIONS_TRIED=0 ACTIONS_OK=0 ACTION_TIMES=""
    for i in $(seq 1 "$1"); do
        wrk_gone && break
        ACTIONS_TRIED=$i
        t0=$(now_us)
        stop_app
        start_app "$APP_WORKERS" "$APP_PORT"
        ACTION_TIMES+="$(us_to_secs $(( $(now_us) - t0 )))"$'\n'
        ACTIONS_OK=$(( ACTIONS_OK + 1 ))
    done
}

# Runs wrk against a fresh app while `$action $count` runs, then stops wrk
# with INT (it prints its summary) and records the counts.
# $1 label, $2 action, $3 count, then extra wrk arguments.
load_scenario() {
    local label=$1 action=$2 count=$3
    shift 3
    local out="$TMP/wrk-${#LOAD_ROWS[@]}.txt" result rc=0 covered=yes note
    start_app "$LOAD_WORKERS"
    say "$label: wrk -t$WRK_THREADS -c$WRK_CONNECTIONS -d${WRK_MAX_SECS}s${*:+ ${*@Q}} on $HOST:$APP_PORT"
    wrk -t"$WRK_THREADS" -c"$WRK_CONNECTIONS" -d"${WRK_MAX_SECS}s" "$@" "http://$HOST:$APP_PORT/" >"$out" 2>&1 &
    WRK_PID=$!
    wait_until 10 load_connected || die "wrk did not connect within 10s: $(cat "$out")"
    "$action" "$count"
    # The load must have lasted through all of the work to prove anything.
    wrk_gone && covered=no
    kill -INT "$WRK_PID" 2>/dev/null || true
    wait_until 15 wrk_gone || { kill -KILL "$WRK_PID" 2>/dev/null || true; }
    wait "$WRK_PID" 2>/dev/null || rc=$?
    WRK_PID=""
    result=$(parse_wrk "$out") || die "$label: cannot read wrk's summary (exit $rc): $(cat "$out")"
    say "  $ACTIONS_OK/$count done; requests|failed|wrk ran|details: $result"
    if [[ $covered == no ]]; then
        note="$label: wrk's ${WRK_MAX_SECS}s ran out during action $ACTIONS_TRIED of $count"
        note+=" (slowest action $(printf '%s' "$ACTION_TIMES" | sort -g | tail -n 1)s)"
        WARNINGS+=("$note")
        say "  $note"
    fi
    LOAD_ROWS+=("$label|$ACTIONS_OK|$ACTIONS_TRIED|$count|$result|$(printf '%s' "$ACTION_TIMES" | stats %.3fs)")
    stop_app
}

bench_load() {
    load_scenario "$LOAD_UPGRADES upgrades, keep-alive" do_upgrades "$LOAD_UPGRADES"
    load_scenario "$LOAD_UPGRADES upgrades, Connection: close" do_upgrades "$LOAD_UPGRADES" \
        -H 'Connection: close'
    load_scenario "naive stop+start (baseline)" do_stop_starts "$BASELINE_RESTARTS"
}

# ---------------------------------------------------------------- report

report() {
    local row n rep wall logs label ok tried count requests failed secs details times
    echo
    echo "upgrade overhead (USR2 -> old master gone, all new workers ready), $RUNS runs each"
    printf '%-9s%-27s%-27s%s\n' "" "upgrade --wait says" "wall time of the command" "master logs (ms stamps)"
    printf '%-9s%-9s%-9s%-9s%-9s%-9s%-9s%-9s%-9s%s\n' workers median min max median min max median min max
    for row in "${OVERHEAD_ROWS[@]}"; do
        IFS='|' read -r n rep wall logs <<<"$row"
        # shellcheck disable=SC2086  # "median min max" split into columns
        printf '%-9s%-9s%-9s%-9s%-9s%-9s%-9s%-9s%-9s%s\n' "$n" $rep $wall $logs
    done
    echo "(upgrade --wait polls every 50 ms, so its figure is rounded up to ~0.05s steps;"
    echo " the logs column runs from the old master's upgrade-start to its exit / new all-ready)"
    echo
    if [[ ${#LOAD_ROWS[@]} -eq 0 ]]; then
        echo "zero downtime under wrk load: skipped (wrk not available)"
        return 0
    fi
    echo "zero downtime under wrk load ($LOAD_WORKERS workers, wrk -t$WRK_THREADS -c$WRK_CONNECTIONS, $HOST)"
    printf '%-33s%-9s%-10s%-8s%-9s%-24s%s\n' scenario "done" requests failed "wrk ran" "each action: med/max" details
    for row in "${LOAD_ROWS[@]}"; do
        IFS='|' read -r label ok tried count requests failed secs details times <<<"$row"
        read -r -a times <<<"$times"
        printf '%-33s%-9s%-10s%-8s%-9s%-24s%s\n' "$label" "$ok/$count" "$requests" "$failed" "$secs" \
            "${times[0]} / ${times[2]}" "$details"
    done
    echo "(requests: responses wrk completed; failed: wrk's socket errors plus non-2xx responses;"
    echo " each action: wall time of one upgrade --wait, or of one stop --wait + start, under load)"
}

# Decides the exit status: failures during upgrades are bugs; none during
# the naive restarts means the harness cannot see failures at all.
check_results() {
    local row label ok tried requests failed details
    for row in "${LOAD_ROWS[@]}"; do
        IFS='|' read -r label ok tried _ requests failed _ details _ <<<"$row"
        if [[ $label == *baseline* ]]; then
            (( failed > 0 )) || CHECKS_FAILED+=("$label: no failed request, so the harness cannot see failures")
        else
            (( failed == 0 )) || CHECKS_FAILED+=("$label: $failed failed requests ($details)")
            (( ok == tried )) || CHECKS_FAILED+=("$label: $(( tried - ok )) of $tried upgrades failed")
        fi
    done
}

# Warnings and errors the masters logged (none are expected).
report_logs() {
    local lines
    lines=$(cat "$TMP"/master-*.log 2>/dev/null | grep -E '^[^ ]+ (WARN|ERROR) ' || true)
    if [[ -n $lines ]]; then
        echo
        echo "master logs: $(printf '%s\n' "$lines" | wc -l) warning/error lines, first 10:"
        printf '%s\n' "$lines" | head -n 10
    fi
}

main() {
    [[ -f Cargo.toml && -f src/bin/forkmaster-demo/main.rs ]] || die "run me from the forkmaster repo root"
    build
    bench_overhead
    if ensure_wrk; then
        bench_load
        check_results
    else
        echo "wrk is not available: skipping the zero-downtime part" >&2
    fi
    report
    report_logs
    if [[ ${#SLOW_STOPS[@]} -gt 0 ]]; then
        echo
        echo "slow graceful stops (a demo worker did not exit on TERM): ${SLOW_STOPS[*]}"
    fi
    if [[ ${#WARNINGS[@]} -gt 0 ]]; then
        echo
        printf 'WARNING: %s\n' "${WARNINGS[@]}"
    fi
    if [[ ${#CHECKS_FAILED[@]} -gt 0 ]]; then
        echo
        printf 'FAILED: %s\n' "${CHECKS_FAILED[@]}"
        return 1
    fi
}

main "$@"
