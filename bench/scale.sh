#!/usr/bin/env bash
# Scale benchmarks of forkmaster, run from the repo root:
#
#     bash bench/scale.sh                 # full run, about 3.5 minutes on 2 cores
#     BENCH_QUICK=1 bash bench/scale.sh   # smoke run, well under a minute
#     bash bench/scale.sh rollout spawn   # only these parts (names below)
#
# Parts, by name: idle (1 and 2), spawn (3), upgrade (4), load (5), logs
# (6), rollout (7), fleet (8); with no name, all of them.
#
# Each figure is the median of several runs, printed beside a baseline that
# explains it:
#
# 1. Master memory: VmRSS, RssAnon, RssFile and Pss of the idle master with
#    4 and 256 workers (and 1000, taken at all-ready in part 3); baselines:
#    `sleep` and one demo worker, what a minimal process costs here.
# 2. Idle cost: the master's context switches and CPU time over 10 s once
#    every worker is ready, with no timeouts (expected: 0) and with
#    `--timeout 2s --ready notify` (each WATCHDOG=1 ping is a datagram that
#    wakes the master; the pings sent are shown beside the count), and for a
#    master that has been through USR2, HUP, TTIN and TTOU (expected: 0).
# 3. Spawn scale: from start until 16, 256 and 1000 demo workers are ready
#    (`--ready notify`, the master's `event=all-ready` log stamp); baseline:
#    a minimal supervisor in Python (bench/notify_spawner.py: posix_spawn N
#    demos, wait for N READY=1) and the CPU time N demo boots cost / nproc.
# 4. Upgrade time for 4, 64 and 256 workers, USR2 -> "old master gone, all
#    new workers ready", split into phases by the masters' log stamps;
#    baseline: a cold start of the same N workers.
# 5. Zero downtime: 50 USR2 upgrades, then 50 HUP rolling restarts, back to
#    back under saturating wrk load, with keep-alive and `Connection: close`;
#    baseline: a naive stop and start, which must show failures.
# 6. Log throughput through the master (`--stdout-path`): N writers
#    (bench/log_writer.py) writing 100-byte lines as fast as they can;
#    baselines: the same writers appending straight to the file, and writing
#    into one pipe drained by `cat` (forkmaster's design without forkmaster).
#    The files go to /dev/shm when it is a tmpfs with room (BENCH_LOG_DIR
#    overrides), so that disk writeback does not blur the figures.
# 7. Rollout cost: the master's own CPU time (utime + stime of its
#    /proc/PID/stat, before and after) for one whole HUP rolling restart of
#    250, 500 and 1000 workers (`--ready notify`, `--max-surge 50`), from the
#    HUP until `forkmaster reload --wait` says done and every old worker is
#    reaped. Per worker it is flat if the master's work is O(N) per rollout,
#    and grows with N if it is O(N^2).
# 8. Fleet observability: (a) the idle master's context switches and CPU
#    over the idle window with 4 and 256 workers, with recycling and
#    /metrics configured (`--max-worker-memory 1G --max-worker-age 1h
#    --memory-check-interval 2s --health-listen`) beside the same master
#    without them; (b) the time to answer `status --json` and GET /metrics
#    for 1000 workers: the first request after all-ready, one 1.1 s later
#    (CPU read again) and one at once (CPU cached), beside the
#    binary of BENCH_BASELINE_BIN (e.g. a build from before a change) in
#    the same run; (c) requests failed under wrk load across 50 memory
#    recycles (every demo holds 64 MiB over a 32 MiB limit, so each
#    replacement is due again at the next check).
#
# Everything runs in a temp dir (Unix sockets, and 127.0.0.1 for wrk) that
# is removed on exit; every process started here (masters, including the
# ones upgrades start, baseline process groups, wrk) is stopped on exit.
# Exits 1 if a request failed during an upgrade or reload, an upgrade or
# reload failed, the naive baseline saw no failure, or a log line was lost.
#
# BENCH_QUICK=1: fewer runs and smaller counts. BENCH_KEEP=1 keeps the temp
# dir. BENCH_RUNS (every part), BENCH_IDLE_SECS, BENCH_LOAD_ACTIONS and
# BENCH_ROLLOUT_COUNTS override counts; BENCH_LOG_DIR where part 6 writes. CARGO names the cargo
# command that builds the release binaries (default: cargo). BENCH_BASELINE_BIN: a
# forkmaster binary measured beside this tree's in part 8b.
set -Eeuo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# Says which command stopped the script, if one does (set -e alone is silent).
trap 'printf "bench/scale.sh: line %s: %s failed\n" "$LINENO" "$BASH_COMMAND" >&2' ERR

# EPOCHREALTIME and awk must use '.' as the decimal point.
export LC_ALL=C

readonly HOST=127.0.0.1
if [[ ${BENCH_QUICK:-0} == 1 ]]; then
    RUNS=${BENCH_RUNS:-1}
    SLOW_RUNS=${BENCH_RUNS:-1}
    IDLE_SECS=${BENCH_IDLE_SECS:-2}
    SPAWN_COUNTS=(16 128 256)
    UPGRADE_COUNTS=(4 16 64)
    LOAD_ACTIONS=${BENCH_LOAD_ACTIONS:-5}
    LOG_WRITERS=(1 4)
    LOG_TOTAL_LINES=200000
    LOG_RUNS=${BENCH_RUNS:-1}
    ROLLOUT_COUNTS=(250 500 1000)
else
    RUNS=${BENCH_RUNS:-5}          # cheap measurements (spawn, upgrade)
    SLOW_RUNS=${BENCH_RUNS:-3}     # 10 s idle windows, memory baselines
    IDLE_SECS=${BENCH_IDLE_SECS:-10}
    SPAWN_COUNTS=(16 256 1000)
    UPGRADE_COUNTS=(4 64 256)
    LOAD_ACTIONS=${BENCH_LOAD_ACTIONS:-50}
    LOG_WRITERS=(1 4 16)
    LOG_TOTAL_LINES=10000000       # 1 GB per run, split among the writers
    LOG_RUNS=${BENCH_RUNS:-5}      # the flood's figures vary more from run to run
    ROLLOUT_COUNTS=(250 500 1000)
fi
# BENCH_ROLLOUT_COUNTS="1000 2000" overrides part 7's worker counts.
if [[ -n ${BENCH_ROLLOUT_COUNTS:-} ]]; then
    read -r -a ROLLOUT_COUNTS <<<"$BENCH_ROLLOUT_COUNTS"
fi
readonly RUNS SLOW_RUNS IDLE_SECS SPAWN_COUNTS UPGRADE_COUNTS LOAD_ACTIONS LOG_WRITERS LOG_TOTAL_LINES LOG_RUNS ROLLOUT_COUNTS
# Replacements booting at once in part 7: large, so that a rollout of 1000
# takes about a second rather than 1000 boots one after the other.
readonly ROLLOUT_SURGE=50
readonly ROLLOUT_TIMEOUT_S=120
readonly ALL_PARTS=(idle spawn upgrade load logs rollout fleet)
# Part 8: workers of the status/metrics timing, recycles under load.
readonly FLEET_STATUS_WORKERS=1000
readonly FLEET_RECYCLES=${BENCH_FLEET_RECYCLES:-50}
readonly FLEET_LOAD_WORKERS=4
readonly IDLE_WORKERS=(4 256)
readonly WATCHDOG_WORKERS=4
readonly WATCHDOG_TIMEOUT_S=2
readonly LOAD_WORKERS=16
readonly BASELINE_RESTARTS=3
readonly WRK_THREADS=2
readonly WRK_CONNECTIONS=64
readonly WRK_MAX_SECS=120
# Bounds for every poll below; generous, as the machine may be loaded.
readonly READY_TIMEOUT_S=60
readonly POLL_S=0.05

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$(pwd)
readonly REPO
# FORKMASTER_BENCH_BIN: another forkmaster binary to measure (e.g. an older
# build, for a side-by-side comparison); the demo app stays this tree's.
readonly FM="${FORKMASTER_BENCH_BIN:-$REPO/target/release/forkmaster}"
readonly DEMO="$REPO/target/release/forkmaster-demo"
readonly SPAWNER="$REPO/bench/notify_spawner.py"
readonly WRITER="$REPO/bench/log_writer.py"
FM_EXE=""         # $FM with symlinks resolved, as /proc/PID/exe shows it
PYTHON=""         # python3's real interpreter (not a pyenv shim: no shell start-up)
NPROC=$(nproc)
readonly NPROC
TICK_MS=$(( 1000 / $(getconf CLK_TCK) ))
readonly TICK_MS

TMP=$(mktemp -d "${TMPDIR:-/tmp}/forkmaster-scale.XXXXXX")
readonly TMP
MASTER_PIDS=()    # every master pid seen: started here or named by an upgrade
GROUPS_STARTED=() # process groups of baselines (setsid), killed on exit
WRK_PID=""
EXTRA_DIRS=()     # temp dirs outside $TMP, removed on exit

die() { printf 'bench/scale.sh: %s\n' "$*" >&2; exit 1; }

CHECKS_FAILED=()
WARNINGS=()

# ---------------------------------------------------------------- processes


# Stops a baseline's process group (started with setsid: pgid = pid).
stop_group() {
    local pgid=$1
    group_gone "$pgid" && return 0
    kill -TERM -- "-$pgid" 2>/dev/null || true
    wait_until 5 group_gone "$pgid" || kill -KILL -- "-$pgid" 2>/dev/null || true
    wait "$pgid" 2>/dev/null || true
}

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    if ! wrk_gone; then
        kill -INT "$WRK_PID" 2>/dev/null
        wait_until 5 wrk_gone || kill -KILL "$WRK_PID" 2>/dev/null
    fi
    local pgid
    for pgid in "${GROUPS_STARTED[@]}"; do
        stop_group "$pgid"
    done
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
    local dir
    for dir in "${EXTRA_DIRS[@]}"; do rm -rf "$dir"; done
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- numbers

# Milliseconds since midnight UTC of an epoch time in microseconds, as the
# masters' log stamps (`2026-11-23T17:57:26.123Z`, truncated to the ms) are
# compared against it.
us_to_day_ms() { echo $(( ($1 / 1000) % 86400000 )); }

# Reads numbers, one per line; prints their median (or "-" if none).
median() {
    sort -g | awk '
        { v[NR] = $1 }
        END {
            if (NR == 0) { print "-"; exit }
            m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
            print m
        }'
}

# The mean of a "\n"-joined list in variable text $1, formatted with $2
# (finer than the median for counts in clock ticks: it has 1/runs of a tick).
mean() {
    printf '%s' "$1" | awk -v f="$2" '{ s += $1 } END { if (NR == 0) print "-"; else printf f "\n", s / NR }'
}

# The median of a "\n"-joined list in variable text $1, formatted with $2.
med() {
    local m
    m=$(printf '%s' "$1" | median)
    [[ $m == - ]] && { echo -; return 0; }
    # shellcheck disable=SC2059  # the format is ours
    printf "$2" "$m"
}

kib() { awk -v k="$1" 'BEGIN { if (k == "-") print "-"; else if (k >= 1024) printf "%.2f MiB", k / 1024; else printf "%d KiB", k }'; }

# A /proc/PID/status field in kB.
status_kb() { awk -v k="$2:" '$1 == k { print $2; found = 1 } END { exit !found }' "/proc/$1/status"; }

# Pss of PID in kB (smaps_rollup).
pss_kb() { awk '$1 == "Pss:" { print $2; found = 1 } END { exit !found }' "/proc/$1/smaps_rollup"; }

# voluntary+involuntary context switches of PID (main thread = process).
ctx_switches() {
    awk '/^voluntary_ctxt_switches:/ { v = $2 } /^nonvoluntary_ctxt_switches:/ { n = $2 }
         END { print v + n }' "/proc/$1/status"
}

# utime+stime of PID in clock ticks. (The comm field has no spaces here.)
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

# "utime stime" of PID in clock ticks.
user_sys_ticks() { awk '{ print $14, $15 }' "/proc/$1/stat"; }

# ---------------------------------------------------------------- masters

# Starts a master in the background: $1 name (pid file $TMP/$1.pid, log
# $TMP/$1.log, socket $TMP/$1.sock), then forkmaster flags, `--`, the
# command. Sets STARTED_PID and STARTED_US (just before the exec).
start_master() {
    local name=$1; shift
    rm -f "$TMP/$name.pid" "$TMP/$name.log"
    STARTED_US=$(now_us)
    "$FM" --listen "unix:$TMP/$name.sock" --pid "$TMP/$name.pid" "$@" >>"$TMP/$name.log" 2>&1 &
    STARTED_PID=$!
    remember_master "$STARTED_PID"
}

# Whether master $1 has logged all-ready into $2 (or died, to stop polling).
all_ready_or_dead() {
    grep -q "forkmaster\[$1\] event=all-ready" "$2" 2>/dev/null || ! is_our_master "$1"
}

# Waits until master $1 (log $2) logs all-ready; dies naming the log otherwise.
wait_all_ready() {
    wait_until "$READY_TIMEOUT_S" all_ready_or_dead "$1" "$2" ||
        die "master $1 not ready within ${READY_TIMEOUT_S}s (log: $2)"
    is_our_master "$1" || die "master $1 exited during startup: $(grep -v '^demo ' "$2" | tail -n 3)"
}

# Milliseconds since midnight UTC of the first line of master $1 in log $2
# holding event $3 (e.g. "event=all-ready"); fails if there is none.
log_ms() {
    awk -v who="forkmaster[$1]" -v ev="$3" '
        $3 == who && $4 == ev {
            split(substr($1, 12, 12), a, ":")
            printf "%d\n", (a[1] * 3600 + a[2] * 60 + a[3]) * 1000 + 0.5
            found = 1
            exit
        }
        END { exit !found }' "$2"
}

# Milliseconds from $1 to $2 (since midnight), across midnight.
ms_between() { local d=$(( $2 - $1 )); (( d < -43200000 )) && d=$(( d + 86400000 )); echo "$d"; }

# Graceful stop of the master of pid file $1, waiting until it is gone.
stop_master() {
    local pidfile=$1 pid
    pid=$(tr -dc '0-9' 2>/dev/null <"$pidfile" || true)
    [[ -n $pid ]] || return 0
    remember_master "$pid"
    "$FM" stop -p "$pidfile" --wait --timeout 60s >/dev/null 2>&1 || {
        say "graceful stop of $pid failed; TERM"
        kill -TERM "$pid" 2>/dev/null || true
        wait_until 10 no_live_master "$pid" || kill -KILL "$pid" 2>/dev/null || true
    }
    wait "$pid" 2>/dev/null || true
}

no_live_master() { ! is_our_master "$1"; }

# ---------------------------------------------------------------- setup

build() {
    local cargo=${CARGO:-cargo}
    command -v "$cargo" >/dev/null 2>&1 || die "$cargo is required (install Rust with rustup)"
    say "building release binaries"
    "$cargo" build --release --bins >&2
    [[ -x $FM && -x $DEMO ]] || die "missing $FM or $DEMO after the build"
    FM_EXE=$(readlink -f "$FM")
    # Only the spawn baseline and the log writers are Python.
    selected spawn || selected logs || return 0
    command -v python3 >/dev/null 2>&1 || die "python3 is required (the baselines and log writers)"
    PYTHON=$(python3 -c 'import sys; print(sys.executable)')
    [[ -x $PYTHON ]] || die "cannot find python3's interpreter (got '$PYTHON')"
}

# The limits that bound the spawn figures; raises the soft fd limit to the
# hard one. Each demo worker is 3 threads (tasks), twice over during an upgrade.
LIMITS=""
machine_limits() {
    local hard max_workers=0 n tasks pid_max threads_max nproc_limit mem
    hard=$(ulimit -Hn)
    ulimit -n "$hard" 2>/dev/null || true
    pid_max=$(cat /proc/sys/kernel/pid_max)
    threads_max=$(cat /proc/sys/kernel/threads-max)
    nproc_limit=$(ulimit -u)
    mem=$(awk '/^MemAvailable:/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
    for n in "${SPAWN_COUNTS[@]}" "${UPGRADE_COUNTS[@]}"; do (( n > max_workers )) && max_workers=$n; done
    for n in "${ROLLOUT_COUNTS[@]}"; do (( n + ROLLOUT_SURGE > max_workers )) && max_workers=$(( n + ROLLOUT_SURGE )); done
    tasks=$(( max_workers * 3 * 2 + 100 ))
    LIMITS="ulimit -n $(ulimit -n) (hard $hard), ulimit -u $nproc_limit, pid_max $pid_max,"
    LIMITS+=" threads-max $threads_max, MemAvailable $mem, net.unix.max_dgram_qlen"
    LIMITS+=" $(cat /proc/sys/net/unix/max_dgram_qlen)"
    if (( tasks > pid_max )) || { [[ $nproc_limit != unlimited ]] && (( tasks > nproc_limit )); }; then
        WARNINGS+=("up to $tasks tasks needed, over pid_max or ulimit -u: spawn figures may fail")
    fi
}

# ---------------------------------------------------------------- parts 1 & 2

MEM_ROWS=()       # label|VmRSS|RssAnon|RssFile|Pss (kB medians)
IDLE_ROWS=()      # label|ctx median|ctx max|cpu ms median|cpu ms max|pings expected
ANON_4="" ANON_256=""
RSS_4="" RSS_256=""

bench_idle() {
    local run n name pid line
    local -A ctx=() cpu=() rss=() anon=() file=() pss=()
    local names=()
    for n in "${IDLE_WORKERS[@]}"; do names+=("idle-$n"); done
    names+=("watchdog-$WATCHDOG_WORKERS" churn-4)
    for run in $(seq 1 "$SLOW_RUNS"); do
        say "idle: run $run/$SLOW_RUNS, ${IDLE_SECS}s window, masters: ${names[*]}"
        local -A pids=()
        for n in "${IDLE_WORKERS[@]}"; do
            start_master "idle-$n" --workers "$n" --ready notify -- "$DEMO"
            pids[idle-$n]=$STARTED_PID
        done
        start_master "watchdog-$WATCHDOG_WORKERS" --workers "$WATCHDOG_WORKERS" --ready notify \
            --timeout "${WATCHDOG_TIMEOUT_S}s" -- "$DEMO"
        pids[watchdog-$WATCHDOG_WORKERS]=$STARTED_PID
        start_master churn-4 --workers 4 --ready notify -- "$DEMO"
        pids[churn-4]=$STARTED_PID
        for name in "${names[@]}"; do
            wait_all_ready "${pids[$name]}" "$TMP/$name.log"
        done
        # A master that has been through an upgrade, a reload and TTIN+TTOU
        # must be as idle as a fresh one: no leftover timers.
        upgrade_once "$TMP/churn-4.pid"
        [[ $UP_RC -eq 0 ]] || die "churn-4: upgrade failed (exit $UP_RC): $UP_OUT"
        pids[churn-4]=$UP_NEW
        "$FM" reload -p "$TMP/churn-4.pid" --wait --timeout 60s >/dev/null ||
            die "churn-4: reload failed (log: $TMP/churn-4.log)"
        kill -TTIN "$UP_NEW"
        wait_until 10 churn_workers 5 || die "churn-4: TTIN did not add a worker"
        kill -TTOU "$UP_NEW"
        wait_until 10 churn_workers 4 || die "churn-4: TTOU did not remove a worker"
        # Let the last READY=1 datagrams and log lines settle.
        sleep 0.5
        local -A c_start=() t_start=()
        for name in "${names[@]}"; do
            c_start[$name]=$(ctx_switches "${pids[$name]}")
            t_start[$name]=$(cpu_ticks "${pids[$name]}")
        done
        sleep "$IDLE_SECS"
        for name in "${names[@]}"; do
            pid=${pids[$name]}
            ctx[$name]+="$(( $(ctx_switches "$pid") - c_start[$name] ))"$'\n'
            cpu[$name]+="$(( ( $(cpu_ticks "$pid") - t_start[$name] ) * TICK_MS ))"$'\n'
            rss[$name]+="$(status_kb "$pid" VmRSS)"$'\n'
            anon[$name]+="$(status_kb "$pid" RssAnon)"$'\n'
            file[$name]+="$(status_kb "$pid" RssFile)"$'\n'
            pss[$name]+="$(pss_kb "$pid")"$'\n'
        done
        for name in "${names[@]}"; do stop_master "$TMP/$name.pid"; done
    done
    for n in "${IDLE_WORKERS[@]}"; do
        name="idle-$n"
        MEM_ROWS+=("master, $n workers|$(med "${rss[$name]}" %d)|$(med "${anon[$name]}" %d)|$(med "${file[$name]}" %d)|$(med "${pss[$name]}" %d)")
        line="master, $n workers, no timeouts|$(printf '%s' "${ctx[$name]}" | stats %d | tr ' ' '|')"
        IDLE_ROWS+=("$line|$(printf '%s' "${cpu[$name]}" | stats %d | tr ' ' '|')|-")
    done
    ANON_4=$(med "${anon[idle-4]}" %d) ANON_256=$(med "${anon[idle-256]}" %d)
    RSS_4=$(med "${rss[idle-4]}" %d) RSS_256=$(med "${rss[idle-256]}" %d)
    IDLE_ROWS+=("master, 4 workers, after USR2+HUP+TTIN+TTOU|$(printf '%s' "${ctx[churn-4]}" | stats %d | tr ' ' '|')|$(printf '%s' "${cpu[churn-4]}" | stats %d | tr ' ' '|')|-")
    name="watchdog-$WATCHDOG_WORKERS"
    # The demo pings every third of WATCHDOG_USEC.
    local pings=$(( WATCHDOG_WORKERS * IDLE_SECS * 3 / WATCHDOG_TIMEOUT_S ))
    line="master, $WATCHDOG_WORKERS workers, --timeout ${WATCHDOG_TIMEOUT_S}s|$(printf '%s' "${ctx[$name]}" | stats %d | tr ' ' '|')"
    IDLE_ROWS+=("$line|$(printf '%s' "${cpu[$name]}" | stats %d | tr ' ' '|')|$pings")
}

# Baselines for memory: a `sleep` and one demo worker (of a fresh master).
bench_memory_baselines() {
    local run pid worker srss="" sanon="" sfile="" spss="" drss="" danon="" dfile="" dpss=""
    for run in $(seq 1 "$SLOW_RUNS"); do
        setsid sleep 600 &
        pid=$!
        GROUPS_STARTED+=("$pid")
        # /proc/PID/exe names sleep once setsid has exec'd it.
        wait_until 5 sleep_execd "$pid" || die "sleep did not start"
        srss+="$(status_kb "$pid" VmRSS)"$'\n'
        sanon+="$(status_kb "$pid" RssAnon)"$'\n'
        sfile+="$(status_kb "$pid" RssFile)"$'\n'
        spss+="$(pss_kb "$pid")"$'\n'
        stop_group "$pid"
    done
    MEM_ROWS+=("baseline: sleep 600|$(med "$srss" %d)|$(med "$sanon" %d)|$(med "$sfile" %d)|$(med "$spss" %d)")
    for run in $(seq 1 "$SLOW_RUNS"); do
        start_master demo-rss --workers 1 --ready notify -- "$DEMO"
        pid=$STARTED_PID
        wait_all_ready "$pid" "$TMP/demo-rss.log"
        worker=$(awk '/event=ready boot_ms/ { for (i = 1; i <= NF; i++) if ($i ~ /^pid=/) { print substr($i, 5); exit } }' "$TMP/demo-rss.log")
        drss+="$(status_kb "$worker" VmRSS)"$'\n'
        danon+="$(status_kb "$worker" RssAnon)"$'\n'
        dfile+="$(status_kb "$worker" RssFile)"$'\n'
        dpss+="$(pss_kb "$worker")"$'\n'
        stop_master "$TMP/demo-rss.pid"
    done
    MEM_ROWS+=("baseline: one forkmaster-demo worker|$(med "$drss" %d)|$(med "$danon" %d)|$(med "$dfile" %d)|$(med "$dpss" %d)")
}

# Whether the churn-4 master has exactly $1 workers, all ready, and no other
# child (the one TTOU stopped has exited).
churn_workers() {
    local out pid
    out=$("$FM" status -p "$TMP/churn-4.pid" 2>/dev/null) || return 1
    [[ $out == *"workers=$1/$1 ready"* ]] || return 1
    pid=$(tr -dc '0-9' <"$TMP/churn-4.pid")
    (( $(wc -w <"/proc/$pid/task/$pid/children") == $1 ))
}

sleep_execd() { [[ $(readlink "/proc/$1/exe" 2>/dev/null) == */sleep ]]; }

# ---------------------------------------------------------------- part 3

SPAWN_ROWS=()
RSS_1000_ROW=""

bench_spawn() {
    local n run pid log t0 ready start last_spawn out total loop base_total base_loop kids
    local top=0
    for n in "${SPAWN_COUNTS[@]}"; do (( n > top )) && top=$n; done
    for n in "${SPAWN_COUNTS[@]}"; do
        total="" loop="" base_total="" base_loop="" kids=""
        local top_rss="" top_anon="" top_file="" top_pss=""
        say "spawn: $n workers, $RUNS runs (forkmaster, then the minimal supervisor)"
        for run in $(seq 1 "$RUNS"); do
            start_master "spawn-$n" --workers "$n" --ready notify -- "$DEMO"
            pid=$STARTED_PID t0=$STARTED_US log="$TMP/spawn-$n.log"
            wait_all_ready "$pid" "$log"
            if (( n == top )); then
                top_rss+="$(status_kb "$pid" VmRSS)"$'\n'
                top_anon+="$(status_kb "$pid" RssAnon)"$'\n'
                top_file+="$(status_kb "$pid" RssFile)"$'\n'
                top_pss+="$(pss_kb "$pid")"$'\n'
            fi
            ready=$(log_ms "$pid" "$log" event=all-ready)
            start=$(log_ms "$pid" "$log" event=start)
            last_spawn=$(awk -v who="forkmaster[$pid]" '$3 == who && / event=spawn / { t = $1 }
                END { split(substr(t, 12, 12), a, ":"); printf "%d\n", (a[1] * 3600 + a[2] * 60 + a[3]) * 1000 + 0.5 }' "$log")
            total+="$(ms_between "$(us_to_day_ms "$t0")" "$ready")"$'\n'
            loop+="$(ms_between "$start" "$last_spawn")"$'\n'
            stop_master "$TMP/spawn-$n.pid"

            # Baseline: posix_spawn N demos, wait for N READY=1.
            setsid "$PYTHON" "$SPAWNER" "$n" "$DEMO" "$TMP/spawner.sock" "$TMP/spawner-$n.log" \
                >"$TMP/spawner.out" 2>&1 &
            pid=$!
            GROUPS_STARTED+=("$pid")
            wait "$pid" || die "notify_spawner.py failed: $(cat "$TMP/spawner.out")"
            out=$(cat "$TMP/spawner.out")
            [[ $out =~ start=([0-9.]+)\ spawned=([0-9.]+)\ ready=([0-9.]+)\ self_cpu=([0-9.]+)\ children_cpu=([0-9.]+) ]] ||
                die "notify_spawner.py said: $out"
            base_total+="$(awk -v t="${BASH_REMATCH[1]}" -v r="${BASH_REMATCH[3]}" 'BEGIN { printf "%d\n", (r - t) * 1000 + 0.5 }')"$'\n'
            base_loop+="$(awk -v t="${BASH_REMATCH[1]}" -v s="${BASH_REMATCH[2]}" 'BEGIN { printf "%d\n", (s - t) * 1000 + 0.5 }')"$'\n'
            kids+="$(awk -v c="${BASH_REMATCH[5]}" -v p="$NPROC" 'BEGIN { printf "%d\n", c * 1000 / p + 0.5 }')"$'\n'
        done
        SPAWN_ROWS+=("$n|$(printf '%s' "$total" | stats %d)|$(med "$loop" %d)|$(printf '%s' "$base_total" | stats %d)|$(med "$base_loop" %d)|$(med "$kids" %d)")
        if (( n == top )); then
            RSS_1000_ROW="master, $n workers (at all-ready)|$(med "$top_rss" %d)|$(med "$top_anon" %d)|$(med "$top_file" %d)|$(med "$top_pss" %d)"
        fi
    done
}

# ---------------------------------------------------------------- part 4

UPGRADE_ROWS=()

# `forkmaster upgrade --wait` on pid file $1. Sets UP_RC, UP_OUT,
# UP_WALL_US, UP_OLD, UP_NEW, UP_READY.
upgrade_once() {
    local t0 re='^upgraded: pid ([0-9]+) -> ([0-9]+), ([0-9]+) workers ready in ([0-9.]+)s$'
    UP_RC=0 UP_OLD="" UP_NEW="" UP_READY=""
    t0=$(now_us)
    UP_OUT=$("$FM" upgrade -p "$1" --wait --timeout 60s 2>&1) || UP_RC=$?
    UP_WALL_US=$(( $(now_us) - t0 ))
    if [[ $UP_RC -eq 0 && $UP_OUT =~ $re ]]; then
        UP_OLD=${BASH_REMATCH[1]} UP_NEW=${BASH_REMATCH[2]} UP_READY=${BASH_REMATCH[3]}
        remember_master "$UP_NEW"
    elif [[ $UP_RC -eq 0 ]]; then
        UP_RC=99
        UP_OUT="unexpected output: $UP_OUT"
    fi
    return 0
}

bench_upgrade() {
    local n run pid log cold usr2 nstart nready oexit end
    for n in "${UPGRADE_COUNTS[@]}"; do
        local c_cold="" c_total="" c_exec="" c_boot="" c_tail="" c_over="" c_wall=""
        say "upgrade: $n workers, $RUNS runs (cold start, upgrade --wait, stop)"
        for run in $(seq 1 "$RUNS"); do
            start_master "upgrade-$n" --workers "$n" --ready notify -- "$DEMO"
            pid=$STARTED_PID log="$TMP/upgrade-$n.log"
            wait_all_ready "$pid" "$log"
            cold=$(ms_between "$(log_ms "$pid" "$log" event=start)" "$(log_ms "$pid" "$log" event=all-ready)")
            upgrade_once "$TMP/upgrade-$n.pid"
            [[ $UP_RC -eq 0 && $UP_READY == "$n" ]] ||
                die "upgrade of $n workers failed (exit $UP_RC): $UP_OUT (log: $log)"
            usr2=$(log_ms "$UP_OLD" "$log" event=upgrade-start)
            nstart=$(log_ms "$UP_NEW" "$log" event=start)
            nready=$(log_ms "$UP_NEW" "$log" event=all-ready)
            oexit=$(log_ms "$UP_OLD" "$log" event=exit)
            end=$(( nready > oexit ? nready : oexit ))
            c_cold+="$cold"$'\n'
            c_total+="$(ms_between "$usr2" "$end")"$'\n'
            c_exec+="$(ms_between "$usr2" "$nstart")"$'\n'
            c_boot+="$(ms_between "$nstart" "$nready")"$'\n'
            c_tail+="$(ms_between "$nready" "$end")"$'\n'
            c_over+="$(( $(ms_between "$usr2" "$end") - cold ))"$'\n'
            c_wall+="$(( UP_WALL_US / 1000 ))"$'\n'
            stop_master "$TMP/upgrade-$n.pid"
            # Wait before the next run: the old master removed its pid file.
            wait "$pid" 2>/dev/null || true
        done
        UPGRADE_ROWS+=("$n|$(printf '%s' "$c_total" | stats %d)|$(med "$c_exec" %d)|$(med "$c_boot" %d)|$(med "$c_tail" %d)|$(med "$c_cold" %d)|$(med "$c_over" %d)|$(med "$c_wall" %d)")
    done
}

# ---------------------------------------------------------------- part 5

LOAD_ROWS=()
LOAD_NOTES=()
APP_PIDFILE="$TMP/load.pid"
APP_PORT=""
APP_LOG=""

app_ready() {
    local out
    out=$("$FM" status -p "$APP_PIDFILE" 2>/dev/null) || return 1
    [[ $out == *"phase=running workers=$LOAD_WORKERS/$LOAD_WORKERS ready"* ]]
}

# Starts the load master on 127.0.0.1 (port $1 if given, else a free one).
start_app() {
    local fixed_port=${1:-} attempt pid
    for attempt in 1 2 3 4 5; do
        APP_PORT=${fixed_port:-$(pick_port)}
        APP_LOG="$TMP/load-$APP_PORT.log"
        "$FM" --listen "$HOST:$APP_PORT" --workers "$LOAD_WORKERS" --pid "$APP_PIDFILE" \
            --ready notify --graceful-timeout 10s -- "$DEMO" >>"$APP_LOG" 2>&1 &
        pid=$!
        remember_master "$pid"
        if wait_until "$READY_TIMEOUT_S" app_ready_or_dead "$pid" && app_ready; then
            return 0
        fi
        is_our_master "$pid" && die "master pid $pid not ready in ${READY_TIMEOUT_S}s (log: $APP_LOG)"
        wait "$pid" 2>/dev/null || true
        [[ -z $fixed_port ]] || die "master could not start on port $APP_PORT: $(tail -n 3 "$APP_LOG")"
    done
    die "master failed to start 5 times; last log: $APP_LOG"
}

app_master() { tr -dc '0-9' 2>/dev/null <"$APP_PIDFILE" || true; }

do_upgrades() {
    local i
    ACTIONS_TRIED=0 ACTIONS_OK=0 ACTION_TIMES=""
    for i in $(seq 1 "$1"); do
        wrk_gone && break
        ACTIONS_TRIED=$i
        upgrade_once "$APP_PIDFILE"
        ACTION_TIMES+="$(us_to_secs "$UP_WALL_US")"$'\n'
        if [[ $UP_RC -eq 0 && $UP_READY == "$LOAD_WORKERS" ]]; then
            ACTIONS_OK=$(( ACTIONS_OK + 1 ))
        else
            say "  upgrade $i failed (exit $UP_RC): $UP_OUT"
            app_ready || break
        fi
    done
}

do_reloads() {
    local i t0 rc out re="^reloaded: pid [0-9]+ generation ([0-9]+), $LOAD_WORKERS workers ready in [0-9.]+s$"
    local pid anon0 anon1
    ACTIONS_TRIED=0 ACTIONS_OK=0 ACTION_TIMES=""
    pid=$(app_master)
    anon0=$(status_kb "$pid" RssAnon)
    for i in $(seq 1 "$1"); do
        wrk_gone && break
        ACTIONS_TRIED=$i
        rc=0
        t0=$(now_us)
        out=$("$FM" reload -p "$APP_PIDFILE" --wait --timeout 60s 2>&1) || rc=$?
        ACTION_TIMES+="$(us_to_secs $(( $(now_us) - t0 )))"$'\n'
        if [[ $rc -eq 0 && $out =~ $re ]]; then
            ACTIONS_OK=$(( ACTIONS_OK + 1 ))
        else
            say "  reload $i failed (exit $rc): $out"
            app_ready || break
        fi
    done
    anon1=$(status_kb "$pid" RssAnon 2>/dev/null || echo "?")
    LOAD_NOTES+=("master RssAnon across $ACTIONS_TRIED reloads ($2): $anon0 KiB -> $anon1 KiB")
}

do_stop_starts() {
    local i t0
    ACTIONS_TRIED=0 ACTIONS_OK=0 ACTION_TIMES=""
    for i in $(seq 1 "$1"); do
        wrk_gone && break
        ACTIONS_TRIED=$i
        t0=$(now_us)
        stop_master "$APP_PIDFILE"
        start_app "$APP_PORT"
        ACTION_TIMES+="$(us_to_secs $(( $(now_us) - t0 )))"$'\n'
        ACTIONS_OK=$(( ACTIONS_OK + 1 ))
    done
}

# $1 label, $2 action, $3 count, then extra wrk arguments.
load_scenario() {
    local label=$1 action=$2 count=$3
    shift 3
    local out="$TMP/wrk-${#LOAD_ROWS[@]}.txt" result rc=0 covered=yes
    start_app
    say "$label: wrk -t$WRK_THREADS -c$WRK_CONNECTIONS${*:+ ${*@Q}} on $HOST:$APP_PORT, $LOAD_WORKERS workers"
    wrk -t"$WRK_THREADS" -c"$WRK_CONNECTIONS" -d"${WRK_MAX_SECS}s" "$@" "http://$HOST:$APP_PORT/" >"$out" 2>&1 &
    WRK_PID=$!
    wait_until 10 load_connected || die "wrk did not connect within 10s: $(cat "$out")"
    "$action" "$count" "$label"
    wrk_gone && covered=no
    kill -INT "$WRK_PID" 2>/dev/null || true
    wait_until 15 wrk_gone || { kill -KILL "$WRK_PID" 2>/dev/null || true; }
    wait "$WRK_PID" 2>/dev/null || rc=$?
    WRK_PID=""
    result=$(parse_wrk "$out") || die "$label: cannot read wrk's summary (exit $rc): $(cat "$out")"
    say "  $ACTIONS_OK/$count done; requests|failed|wrk ran|details: $result"
    [[ $covered == yes ]] || WARNINGS+=("$label: wrk's ${WRK_MAX_SECS}s ran out during action $ACTIONS_TRIED of $count")
    LOAD_ROWS+=("$label|$ACTIONS_OK|$ACTIONS_TRIED|$count|$result|$(printf '%s' "$ACTION_TIMES" | stats %.3f)")
    stop_master "$APP_PIDFILE"
}

bench_load() {
    load_scenario "$LOAD_ACTIONS upgrades, keep-alive" do_upgrades "$LOAD_ACTIONS"
    load_scenario "$LOAD_ACTIONS upgrades, Connection: close" do_upgrades "$LOAD_ACTIONS" -H 'Connection: close'
    load_scenario "$LOAD_ACTIONS reloads, keep-alive" do_reloads "$LOAD_ACTIONS"
    load_scenario "$LOAD_ACTIONS reloads, Connection: close" do_reloads "$LOAD_ACTIONS" -H 'Connection: close'
    load_scenario "naive stop+start (baseline)" do_stop_starts "$BASELINE_RESTARTS"
}

check_load() {
    local row label ok tried failed details
    for row in "${LOAD_ROWS[@]}"; do
        IFS='|' read -r label ok tried _ _ failed _ details _ <<<"$row"
        if [[ $label == *baseline* ]]; then
            (( failed > 0 )) || CHECKS_FAILED+=("$label: no failed request, so the harness cannot see failures")
        else
            (( failed == 0 )) || CHECKS_FAILED+=("$label: $failed failed requests ($details)")
            (( ok == tried )) || CHECKS_FAILED+=("$label: $(( tried - ok )) of $tried failed")
        fi
    done
}

# ---------------------------------------------------------------- part 6

LOG_ROWS=()

# Whether file $1 holds at least $2 bytes.
file_has() { [[ -f $1 ]] && (( $(stat -c %s "$1") >= $2 )); }

# The file's mtime in ms since midnight UTC: when its last byte landed.
mtime_day_ms() { stat -c %.3Y "$1" | awk '{ printf "%d\n", ($1 * 1000) % 86400000 + 0.5 }'; }

# Lines of $1 that are not one writer's 100-byte line; the line count.
# (A line is `w<writer> ` padded with x to 99 characters; writers 0-99.)
check_lines() {
    local bad
    bad=$(grep -cvxE 'w[0-9] x{96}|w[0-9]{2} x{95}' "$1" || true)
    echo "$bad $(wc -l <"$1")"
}

# The log files go to a tmpfs if there is one with room (/dev/shm): the
# figures are then forkmaster's and the pipes', not the disk's writeback.
# BENCH_LOG_DIR overrides.
LOG_DIR=""
LOG_FS=""
pick_log_dir() {
    local need_kb=$(( LOG_TOTAL_LINES * 100 * 2 / 1024 ))
    if [[ -n ${BENCH_LOG_DIR:-} ]]; then
        LOG_DIR=$(mktemp -d "$BENCH_LOG_DIR/forkmaster-scale.XXXXXX")
    elif [[ $(stat -f -c %T /dev/shm 2>/dev/null) == tmpfs ]] &&
        (( $(df -Pk /dev/shm | awk 'NR == 2 { print $4 }') > need_kb )); then
        LOG_DIR=$(mktemp -d /dev/shm/forkmaster-scale.XXXXXX)
    else
        LOG_DIR=$TMP
    fi
    [[ $LOG_DIR == "$TMP" ]] || EXTRA_DIRS+=("$LOG_DIR")
    LOG_FS=$(stat -f -c %T "$LOG_DIR")
}

bench_logs() {
    local n run lines bytes out t0 pid ms cpu bad total pgid
    for n in "${LOG_WRITERS[@]}"; do
        lines=$(( LOG_TOTAL_LINES / n ))
        bytes=$(( lines * n * 100 ))
        local -A secs=() drain=() verdict=()
        say "logs: $n writer(s) x $lines lines of 100 bytes into $LOG_DIR, $LOG_RUNS runs (forkmaster, direct, pipe+cat)"
        for run in $(seq 1 "$LOG_RUNS"); do
            # Through forkmaster: workers' stdout is a pipe the master drains.
            out="$LOG_DIR/logs-fm.out"
            rm -f "$out"
            LOG_LINES=$lines start_master logs --workers "$n" --ready delay:0 --stdout-path "$out" \
                -- "$PYTHON" "$WRITER"
            pid=$STARTED_PID t0=$STARTED_US
            wait_until 120 file_has "$out" "$bytes" || die "forkmaster: $out has $(stat -c %s "$out") of $bytes bytes after 120s"
            ms=$(ms_between "$(us_to_day_ms "$t0")" "$(mtime_day_ms "$out")")
            secs[fm]+="$ms"$'\n'
            drain[fm]+="$(( $(cpu_ticks "$pid") * TICK_MS ))"$'\n'
            stop_master "$TMP/logs.pid"
            if (( run == 1 )); then
                read -r bad total < <(check_lines "$out")
                verdict[fm]="$total lines, $bad bad"
                (( bad == 0 && total == lines * n )) || CHECKS_FAILED+=("logs through forkmaster, $n writers: $total of $(( lines * n )) lines, $bad garbled")
            fi
            rm -f "$out"

            # Direct: each writer appends to the file itself.
            out="$LOG_DIR/logs-direct.out"
            rm -f "$out"
            t0=$(now_us)
            # shellcheck disable=SC2016  # expanded by the inner bash
            setsid env LOG_LINES="$lines" LINGER=0 N="$n" PY="$PYTHON" WRITER_PY="$WRITER" OUT="$out" bash -c '
                for ((i = 0; i < N; i++)); do WRITER=$i "$PY" "$WRITER_PY" >>"$OUT" & done
                wait' &
            pgid=$!
            GROUPS_STARTED+=("$pgid")
            wait "$pgid" || die "direct writers failed"
            file_has "$out" "$bytes" || die "direct writers wrote $(stat -c %s "$out") of $bytes bytes"
            secs[direct]+="$(ms_between "$(us_to_day_ms "$t0")" "$(mtime_day_ms "$out")")"$'\n'
            drain[direct]+="-"$'\n'
            if (( run == 1 )); then
                read -r bad total < <(check_lines "$out")
                verdict[direct]="$total lines, $bad bad"
            fi
            rm -f "$out"

            # One pipe drained by cat: forkmaster's design without forkmaster.
            out="$LOG_DIR/logs-cat.out"
            rm -f "$out"
            t0=$(now_us)
            # shellcheck disable=SC2016  # expanded by the inner bash
            setsid env LOG_LINES="$lines" LINGER=0 N="$n" PY="$PYTHON" WRITER_PY="$WRITER" OUT="$out" CPU="$TMP/cat.cpu" bash -c '
                for ((i = 0; i < N; i++)); do WRITER=$i "$PY" "$WRITER_PY" & done |
                    /usr/bin/env time -f "%U %S" -o "$CPU" cat >>"$OUT"' &
            pgid=$!
            GROUPS_STARTED+=("$pgid")
            wait "$pgid" || die "pipe+cat writers failed"
            file_has "$out" "$bytes" || die "pipe+cat wrote $(stat -c %s "$out") of $bytes bytes"
            secs[cat]+="$(ms_between "$(us_to_day_ms "$t0")" "$(mtime_day_ms "$out")")"$'\n'
            drain[cat]+="$(awk '{ printf "%d\n", ($1 + $2) * 1000 + 0.5 }' "$TMP/cat.cpu")"$'\n'
            if (( run == 1 )); then
                read -r bad total < <(check_lines "$out")
                verdict[cat]="$total lines, $bad bad"
            fi
            rm -f "$out"
        done
        local kind label m range
        for kind in fm direct cat; do
            case $kind in
                fm) label="forkmaster --stdout-path" ;;
                direct) label="baseline: direct O_APPEND" ;;
                cat) label="baseline: one pipe -> cat" ;;
            esac
            m=$(printf '%s' "${secs[$kind]}" | median)
            range=$(printf '%s' "${secs[$kind]}" | stats %d | awk '{ print $2 "-" $3 }')
            LOG_ROWS+=("$n|$label|$(awk -v b="$bytes" -v ms="$m" 'BEGIN { printf "%.0f", b / 1e6 / (ms / 1000) }')|$(awk -v l="$(( lines * n ))" -v ms="$m" 'BEGIN { printf "%.2f", l / 1e6 / (ms / 1000) }')|$m ($range)|$(printf '%s' "${drain[$kind]}" | { grep -v '^-$' || true; } | median)|${verdict[$kind]}")
        done
    done
}

# ---------------------------------------------------------------- part 7

ROLLOUT_ROWS=()

# Whether master $1 has exactly $2 children: after a rollout, every old
# worker has exited and been reaped, so the master's CPU time covers it all.
has_children() { (( $(wc -w <"/proc/$1/task/$1/children") == $2 )); }

# Nanoseconds master $1 has run on a CPU (the scheduler's own count, finer
# than the clock ticks of utime + stime); "-" without /proc/PID/schedstat.
run_ns() { awk '{ print $1; found = 1 } END { exit !found }' "/proc/$1/schedstat" 2>/dev/null || echo -; }

# Milliseconds since midnight UTC of the last line of master $1 in log $2
# holding event $3: with several rollouts in one log, the latest one.
last_log_ms() {
    awk -v who="forkmaster[$1]" -v ev="$3" '
        $3 == who && $4 == ev { t = $1 }
        END {
            if (t == "") exit 1
            split(substr(t, 12, 12), a, ":")
            printf "%d\n", (a[1] * 3600 + a[2] * 60 + a[3]) * 1000 + 0.5
        }' "$2"
}

# One master per N, rolled $RUNS times back to back; each rollout is timed
# and its CPU counted from just before the HUP to its last old worker reaped.
bench_rollout() {
    local n run pid log pidfile t0 user0 sys0 user1 sys1 ns0 ns1 out rc hup done_ms
    for n in "${ROLLOUT_COUNTS[@]}"; do
        local c_wall="" c_log="" c_cpu="" c_user="" c_sys="" c_run=""
        say "rollout: $n workers, --max-surge $ROLLOUT_SURGE, $RUNS HUP rolling restarts (reload --wait)"
        start_master "rollout-$n" --workers "$n" --ready notify --max-surge "$ROLLOUT_SURGE" -- "$DEMO"
        pid=$STARTED_PID log="$TMP/rollout-$n.log" pidfile="$TMP/rollout-$n.pid"
        wait_all_ready "$pid" "$log"
        for run in $(seq 1 "$RUNS"); do
            wait_until "$READY_TIMEOUT_S" has_children "$pid" "$n" ||
                die "master $pid does not have $n workers before rollout $run (log: $log)"
            read -r user0 sys0 < <(user_sys_ticks "$pid")
            ns0=$(run_ns "$pid")
            t0=$(now_us)
            rc=0
            out=$("$FM" reload -p "$pidfile" --wait --timeout "${ROLLOUT_TIMEOUT_S}s" 2>&1) || rc=$?
            c_wall+="$(( ($(now_us) - t0) / 1000 ))"$'\n'
            [[ $rc -eq 0 ]] || die "rollout $run of $n workers failed (exit $rc): $out (log: $log)"
            wait_until "$READY_TIMEOUT_S" has_children "$pid" "$n" ||
                die "old workers of rollout $run not reaped within ${READY_TIMEOUT_S}s (log: $log)"
            read -r user1 sys1 < <(user_sys_ticks "$pid")
            c_cpu+="$(( (user1 + sys1 - user0 - sys0) * TICK_MS ))"$'\n'
            c_user+="$(( (user1 - user0) * TICK_MS ))"$'\n'
            c_sys+="$(( (sys1 - sys0) * TICK_MS ))"$'\n'
            ns1=$(run_ns "$pid")
            [[ $ns0 == - || $ns1 == - ]] || c_run+="$(( (ns1 - ns0) / 1000 ))"$'\n'
            hup=$(last_log_ms "$pid" "$log" event=reload-start) || die "no event=reload-start in $log"
            done_ms=$(last_log_ms "$pid" "$log" event=reload-done) || die "no event=reload-done in $log"
            c_log+="$(ms_between "$hup" "$done_ms")"$'\n'
        done
        stop_master "$pidfile"
        local cpu user run_us
        cpu=$(med "$c_cpu" %d) user=$(mean "$c_user" %.1f) run_us=$(med "$c_run" %d)
        ROLLOUT_ROWS+=("$n|$(printf '%s' "$c_wall" | stats %d)|$(med "$c_log" %d)|$(printf '%s' "$c_cpu" | stats %d)|$user|$(mean "$c_sys" %.1f)|$(awk -v u="$user" -v n="$n" 'BEGIN { printf "%.1f", u * 1000 / n }')|$(awk -v c="$cpu" -v n="$n" 'BEGIN { printf "%d", c * 1000 / n + 0.5 }')|$(awk -v u="$run_us" -v n="$n" 'BEGIN { if (u == "-") print "-"; else printf "%d", u / n + 0.5 }')")
    done
}

# ---------------------------------------------------------------- part 8

FLEET_IDLE_ROWS=()   # label|ctx med|min|max|cpu med|min|max
FLEET_TIME_ROWS=()   # binary|request|status ms m/m/m|metrics ms m/m/m
FLEET_LOAD_ROWS=()   # label|done|tried|requests|failed|secs|details

# (a) Idle cost with recycling and /metrics configured, beside without.
bench_fleet_idle() {
    local run n name pid port
    local -A ctx=() cpu=()
    local names=()
    for n in "${IDLE_WORKERS[@]}"; do names+=("plain-$n" "recycling-$n"); done
    for run in $(seq 1 "$SLOW_RUNS"); do
        say "fleet idle: run $run/$SLOW_RUNS, ${IDLE_SECS}s window, masters: ${names[*]}"
        local -A pids=()
        for n in "${IDLE_WORKERS[@]}"; do
            start_master "plain-$n" --workers "$n" --ready notify -- "$DEMO"
            pids[plain-$n]=$STARTED_PID
            port=$(pick_port)
            start_master "recycling-$n" --workers "$n" --ready notify --max-worker-memory 1G \
                --max-worker-age 1h --memory-check-interval 2s --health-listen "$HOST:$port" -- "$DEMO"
            pids[recycling-$n]=$STARTED_PID
        done
        for name in "${names[@]}"; do wait_all_ready "${pids[$name]}" "$TMP/$name.log"; done
        sleep 0.5
        local -A c0=() t0=()
        for name in "${names[@]}"; do
            c0[$name]=$(ctx_switches "${pids[$name]}")
            t0[$name]=$(cpu_ticks "${pids[$name]}")
        done
        sleep "$IDLE_SECS"
        for name in "${names[@]}"; do
            pid=${pids[$name]}
            ctx[$name]+="$(( $(ctx_switches "$pid") - c0[$name] ))"$'\n'
            cpu[$name]+="$(( ( $(cpu_ticks "$pid") - t0[$name] ) * TICK_MS ))"$'\n'
        done
        for name in "${names[@]}"; do stop_master "$TMP/$name.pid"; done
    done
    for name in "${names[@]}"; do
        FLEET_IDLE_ROWS+=("$name|$(printf '%s' "${ctx[$name]}" | stats %d | tr ' ' '|')|$(printf '%s' "${cpu[$name]}" | stats %d | tr ' ' '|')")
    done
}

# Milliseconds `$@` takes to run (output discarded), or "x" if it failed.
time_ms() {
    local t0 rc=0
    t0=$(now_us)
    "$@" >/dev/null 2>&1 || rc=$?
    (( rc == 0 )) || { echo x; return 0; }
    awk -v d="$(( $(now_us) - t0 ))" 'BEGIN { printf "%.1f\n", d / 1000 }'
}

# (b) Status and /metrics of 1000 workers, for binary $1 labelled $2.
bench_fleet_times_of() {
    local bin=$1 label=$2 run port pid log pidfile
    local first_s="" first_m="" later_s="" later_m="" cached_s="" cached_m=""
    for run in $(seq 1 "$SLOW_RUNS"); do
        port=$(pick_port)
        pidfile="$TMP/times.pid" log="$TMP/times-$label.log"
        rm -f "$pidfile"
        # setsid: its own process group, stopped on exit whichever binary it is.
        setsid "$bin" --listen "unix:$TMP/times.sock" --pid "$pidfile" --workers "$FLEET_STATUS_WORKERS" \
            --ready notify --health-listen "$HOST:$port" -- "$DEMO" >>"$log" 2>&1 &
        pid=$!
        GROUPS_STARTED+=("$pid")
        wait_until "$READY_TIMEOUT_S" all_logged_or_gone "$pid" "$log" || die "$label: not ready (log: $log)"
        # Let the READY=1 datagrams and the log settle.
        sleep 1
        first_s+="$(time_ms "$bin" status -p "$pidfile" --json)"$'\n'
        sleep 1.1
        first_m+="$(time_ms curl -sf "http://$HOST:$port/metrics")"$'\n'
        sleep 1.1
        later_s+="$(time_ms "$bin" status -p "$pidfile" --json)"$'\n'
        sleep 1.1
        later_m+="$(time_ms curl -sf "http://$HOST:$port/metrics")"$'\n'
        cached_s+="$(time_ms "$bin" status -p "$pidfile" --json)"$'\n'
        cached_m+="$(time_ms curl -sf "http://$HOST:$port/metrics")"$'\n'
        "$bin" stop -p "$pidfile" --wait --timeout 60s >/dev/null 2>&1 || kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    FLEET_TIME_ROWS+=("$label|first|$(printf '%s' "$first_s" | stats %.1f)|$(printf '%s' "$first_m" | stats %.1f)")
    FLEET_TIME_ROWS+=("$label|1.1s later|$(printf '%s' "$later_s" | stats %.1f)|$(printf '%s' "$later_m" | stats %.1f)")
    FLEET_TIME_ROWS+=("$label|at once|$(printf '%s' "$cached_s" | stats %.1f)|$(printf '%s' "$cached_m" | stats %.1f)")
}

bench_fleet_times() {
    say "fleet: status and /metrics of $FLEET_STATUS_WORKERS workers, $SLOW_RUNS runs"
    if [[ -n ${BENCH_BASELINE_BIN:-} ]]; then
        [[ -x $BENCH_BASELINE_BIN ]] || die "BENCH_BASELINE_BIN=$BENCH_BASELINE_BIN is not executable"
        bench_fleet_times_of "$BENCH_BASELINE_BIN" baseline
    fi
    bench_fleet_times_of "$FM" "this tree"
}

# Whether master $1 (of any binary) logged all-ready into $2, or is gone.
all_logged_or_gone() {
    grep -q "forkmaster\[$1\] event=all-ready" "$2" 2>/dev/null || ! kill -0 "$1" 2>/dev/null
}

# Recycles done so far, by /metrics' counter.
recycles_done() {
    "$FM" metrics -p "$TMP/fleet-load.pid" 2>/dev/null |
        awk '/^forkmaster_worker_recycles_total\{reason="memory"\}/ { print $2; found = 1 } END { if (!found) print 0 }'
}

fleet_recycled() { (( $(recycles_done) >= $1 )); }

# $1 label, $2 a header for wrk (or ""), then master flags: wrk load while
# the master recycles until FLEET_RECYCLES are done.
fleet_load_scenario() {
    local label=$1 header=$2 out="$TMP/wrk-fleet-${#FLEET_LOAD_ROWS[@]}.txt" rc=0 result t0 done_n
    local wrk_args=()
    [[ -z $header ]] || wrk_args=(-H "$header")
    shift 2
    APP_PORT=$(pick_port)
    start_master fleet-load --listen "$HOST:$APP_PORT" --workers "$FLEET_LOAD_WORKERS" --ready notify \
        --graceful-timeout 10s "$@" -- "$DEMO"
    wait_all_ready "$STARTED_PID" "$TMP/fleet-load.log"
    say "$label: wrk -t$WRK_THREADS -c$WRK_CONNECTIONS on $HOST:$APP_PORT"
    wrk -t"$WRK_THREADS" -c"$WRK_CONNECTIONS" -d"${WRK_MAX_SECS}s" "${wrk_args[@]}" \
        "http://$HOST:$APP_PORT/" >"$out" 2>&1 &
    WRK_PID=$!
    wait_until 10 load_connected || die "wrk did not connect within 10s: $(cat "$out")"
    t0=$(now_us)
    wait_until "$WRK_MAX_SECS" fleet_recycled "$FLEET_RECYCLES" || say "  only $(recycles_done) recycles"
    done_n=$(recycles_done)
    kill -INT "$WRK_PID" 2>/dev/null || true
    wait_until 15 wrk_gone || { kill -KILL "$WRK_PID" 2>/dev/null || true; }
    wait "$WRK_PID" 2>/dev/null || rc=$?
    WRK_PID=""
    result=$(parse_wrk "$out") || die "$label: cannot read wrk's summary (exit $rc): $(cat "$out")"
    say "  $done_n/$FLEET_RECYCLES in $(us_to_secs $(( $(now_us) - t0 )))s; requests|failed|wrk ran|details: $result"
    FLEET_LOAD_ROWS+=("$label|$done_n|$FLEET_RECYCLES|$result")
    stop_master "$TMP/fleet-load.pid"
}

bench_fleet_load() {
    local flags=(--max-worker-memory 32M --memory-check-interval 100ms --max-surge 2 --env DEMO_ALLOC_MB=64)
    fleet_load_scenario "$FLEET_RECYCLES memory recycles, keep-alive" "" "${flags[@]}"
    fleet_load_scenario "$FLEET_RECYCLES memory recycles, Connection: close" "Connection: close" "${flags[@]}"
}

check_fleet() {
    local row label n tried failed details
    for row in "${FLEET_LOAD_ROWS[@]}"; do
        IFS='|' read -r label n tried _ failed _ details <<<"$row"
        (( n >= tried )) || CHECKS_FAILED+=("$label: only $n of $tried")
        (( failed == 0 )) || CHECKS_FAILED+=("$label: $failed failed requests ($details)")
    done
}

bench_fleet() {
    bench_fleet_idle
    bench_fleet_times
    if ensure_wrk; then
        bench_fleet_load
        check_fleet
    else
        echo "wrk is not available: skipping the recycles under load" >&2
    fi
}

# ---------------------------------------------------------------- report

report_machine() {
    echo
    echo "machine: $NPROC cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), kernel $(uname -r)"
    echo "limits:  $LIMITS"
    echo "build:   $(git -C "$REPO" describe --always --dirty 2>/dev/null || echo "?"), $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "load:    $LOAD_AT_START (1/5/15-minute load averages when the run began: other work blurs the figures)"
}

report_memory() {
    local row label rss anon file pss
    echo
    echo "1. master memory, idle with all workers ready (median of $SLOW_RUNS)"
    printf '%-40s%-12s%-12s%-12s%s\n' process VmRSS RssAnon RssFile Pss
    for row in "${MEM_ROWS[@]}" ${RSS_1000_ROW:+"$RSS_1000_ROW"}; do
        IFS='|' read -r label rss anon file pss <<<"$row"
        printf '%-40s%-12s%-12s%-12s%s\n' "$label" "$(kib "$rss")" "$(kib "$anon")" "$(kib "$file")" "$(kib "$pss")"
    done
    if [[ -n $ANON_4 && -n $ANON_256 ]]; then
        printf 'per extra worker, 4 -> 256: %d bytes of RssAnon, %d bytes of VmRSS\n' \
            $(( (ANON_256 - ANON_4) * 1024 / (256 - 4) )) $(( (RSS_256 - RSS_4) * 1024 / (256 - 4) ))
    fi
    echo "(RssFile: pages of the forkmaster binary and libc mapped from the page cache,"
    echo " shared with every process mapping them; RssAnon: the master's own heap and stack)"
}

report_idle() {
    local row label cmed cmax tmed tmax pings
    echo
    echo "2. idle cost over ${IDLE_SECS}s, from 0.5s after all-ready (median of $SLOW_RUNS, max)"
    printf '%-46s%-18s%-14s%s\n' master "context switches" "CPU ms" "watchdog pings sent"
    for row in "${IDLE_ROWS[@]}"; do
        IFS='|' read -r label cmed _ cmax tmed _ tmax pings <<<"$row"
        printf '%-46s%-18s%-14s%s\n' "$label" "$cmed (max $cmax)" "$tmed (max $tmax)" "$pings"
    done
    echo "(the masters are measured side by side in the same window; context switches: voluntary"
    echo " + involuntary, /proc/PID/status, i.e. wake-ups; CPU: utime + stime in ${TICK_MS} ms ticks;"
    echo " pings: WATCHDOG=1 datagrams, one per worker every timeout/3 (the demo's rate), each"
    echo " a reason to wake; fewer wakes than pings means several were read in one pass)"
}

report_spawn() {
    local row n t bl bt bb kc
    echo
    echo "3. spawn scale: start -> all N workers ready, --ready notify (ms, median of $RUNS)"
    printf '%-9s%-24s%-12s%-26s%-12s%s\n' workers "forkmaster med/min/max" "spawn loop" \
        "minimal sup. med/min/max" "spawn loop" "demo boots CPU / $NPROC"
    for row in "${SPAWN_ROWS[@]}"; do
        IFS='|' read -r n t bl bt bb kc <<<"$row"
        # shellcheck disable=SC2086  # "median min max" split into words
        printf '%-9s%-24s%-12s%-26s%-12s%s\n' "$n" "$(printf '%s/%s/%s' $t)" "$bl" "$(printf '%s/%s/%s' $bt)" "$bb" "$kc"
    done
    echo "(forkmaster: from its exec to the all-ready log stamp; spawn loop: its event=start to"
    echo " its last event=spawn. minimal sup.: bench/notify_spawner.py, posix_spawn N demos then"
    echo " wait for N READY=1, from its main(). demo boots CPU: the N demos' CPU time divided by"
    echo " the cores, the least any supervisor could take on this machine)"
}

report_upgrade() {
    local row n t ex bo ta co ov wa
    echo
    echo "4. upgrade, USR2 -> old master gone and all new workers ready (ms, median of $RUNS)"
    printf '%-9s%-20s%-7s%-11s%-10s%-12s%-10s%s\n' workers "total med/min/max" exec "new ready" "old gone" \
        "cold start" overhead "upgrade --wait"
    for row in "${UPGRADE_ROWS[@]}"; do
        IFS='|' read -r n t ex bo ta co ov wa <<<"$row"
        # shellcheck disable=SC2086
        printf '%-9s%-20s%-7s%-11s%-10s%-12s%-10s%s\n' "$n" "$(printf '%s/%s/%s' $t)" "$ex" "$bo" "+$ta" "$co" "$ov" "$wa"
    done
    echo "(from the masters' log stamps: exec = old upgrade-start -> new master's start; new ready ="
    echo " new start -> new all-ready; old gone = then until the old master's exit; cold start = a"
    echo " fresh master's start -> all-ready for the same N, the app's boot at that scale; overhead"
    echo " = total - cold start; upgrade --wait = the client's wall time, polling every 50 ms)"
}

report_load() {
    local row label ok tried count requests failed secs details times
    echo
    if [[ ${#LOAD_ROWS[@]} -eq 0 ]]; then
        echo "5. zero downtime under wrk load: skipped (wrk not available)"
    else
        echo "5. zero downtime under wrk load ($LOAD_WORKERS workers, wrk -t$WRK_THREADS -c$WRK_CONNECTIONS, $HOST)"
        printf '%-34s%-8s%-10s%-8s%-10s%-20s%s\n' scenario "done" requests failed "wrk ran" "each: med/max (s)" details
        for row in "${LOAD_ROWS[@]}"; do
            IFS='|' read -r label ok tried count requests failed secs details times <<<"$row"
            read -r -a times <<<"$times"
            printf '%-34s%-8s%-10s%-8s%-10s%-20s%s\n' "$label" "$ok/$count" "$requests" "$failed" "$secs" \
                "${times[0]} / ${times[2]}" "$details"
        done
        echo "(failed: wrk's socket errors plus non-2xx; each: wall time of one upgrade --wait,"
        echo " reload --wait, or stop --wait + start, under load)"
        for row in "${LOAD_NOTES[@]}"; do echo "$row"; done
    fi
}

report_throughput() {
    local row n label mbs mls ms cpu verdict
    echo
    echo "6. log throughput: N writers x 100-byte lines (${LOG_TOTAL_LINES} lines in all) into one file"
    echo "   in $LOG_DIR ($LOG_FS), median of $LOG_RUNS"
    printf '%-9s%-28s%-7s%-10s%-17s%-16s%s\n' writers path "MB/s" "Mlines/s" "ms (min-max)" "drainer CPU ms" "first run"
    for row in "${LOG_ROWS[@]}"; do
        IFS='|' read -r n label mbs mls ms cpu verdict <<<"$row"
        printf '%-9s%-28s%-7s%-10s%-17s%-16s%s\n' "$n" "$label" "$mbs" "$mls" "$ms" "$cpu" "$verdict"
    done
    echo "(ms: from start (forkmaster's exec, or the writers' shell) to the file's last write"
    echo " (its mtime), python start-up included; drainer CPU: the master's utime+stime since"
    echo " its start, or cat's; bad: lines that are not one writer's whole line)"
}

report_rollout() {
    local row n wall logms cpu user sys user_per per run_per fmt='%-9s%-20s%-14s%-22s%-9s%-9s%-16s%-15s%s\n'
    echo
    echo "7. rollout cost: one HUP rolling restart of N workers, --max-surge $ROLLOUT_SURGE (median of $RUNS)"
    # shellcheck disable=SC2059  # the format is ours
    printf "$fmt" workers "wall ms med/min/max" "HUP->done ms" "master CPU ms m/m/m" "user ms" "sys ms" \
        "user us/worker" "CPU us/worker" "on-CPU us/worker"
    for row in "${ROLLOUT_ROWS[@]}"; do
        IFS='|' read -r n wall logms cpu user sys user_per per run_per <<<"$row"
        # shellcheck disable=SC2086,SC2059  # "median min max" split into words; our format
        printf "$fmt" "$n" "$(printf '%s/%s/%s' $wall)" "$logms" "$(printf '%s/%s/%s' $cpu)" "$user" "$sys" \
            "$user_per" "$per" "$run_per"
    done
    echo "(wall: HUP until \`forkmaster reload --wait\` returned (it polls every 50 ms); HUP->done:"
    echo " the master's reload-start to reload-done log stamps; master CPU: its utime + stime over"
    echo " the rollout, up to the last old worker reaped, in ${TICK_MS} ms ticks; user, sys: the two"
    echo " parts, mean of the runs (finer than one tick); on-CPU: the same span from"
    echo " /proc/PID/schedstat (ns). A flat us/worker column is O(N) work per rollout; one that"
    echo " grows in proportion to N is O(N^2). sys is mostly fork and waitpid in the kernel;"
    echo " user is the master's own code)"
}

report_fleet() {
    local row label cmed cmin cmax tmed tmin tmax bin req st me n tried requests failed secs details
    echo
    echo "8a. idle cost over ${IDLE_SECS}s with recycling and /metrics configured (median of $SLOW_RUNS, min-max)"
    printf '%-20s%-22s%s\n' master "context switches" "CPU ms"
    for row in "${FLEET_IDLE_ROWS[@]}"; do
        IFS='|' read -r label cmed cmin cmax tmed tmin tmax <<<"$row"
        printf '%-20s%-22s%s\n' "$label" "$cmed ($cmin-$cmax)" "$tmed ($tmin-$tmax)"
    done
    echo "(recycling-N: --max-worker-memory 1G --max-worker-age 1h --memory-check-interval 2s"
    echo " --health-listen; plain-N: none of them; measured side by side in the same window)"
    echo
    echo "8b. status --json and GET /metrics of $FLEET_STATUS_WORKERS workers (ms, median/min/max of $SLOW_RUNS)"
    printf '%-12s%-13s%-24s%s\n' binary request "status --json" "GET /metrics"
    for row in "${FLEET_TIME_ROWS[@]}"; do
        IFS='|' read -r bin req st me <<<"$row"
        # shellcheck disable=SC2086  # "median min max" split into words
        printf '%-12s%-13s%-24s%s\n' "$bin" "$req" "$(printf '%s/%s/%s' $st)" "$(printf '%s/%s/%s' $me)"
    done
    echo "(wall time of the client command, its start included; first: 1 s after all-ready;"
    echo " 1.1s later: CPU read again, smaps_rollup within its budget; at once: within a second,"
    echo " CPU from the figures kept, smaps_rollup only of workers with no reading yet)"
    if [[ ${#FLEET_LOAD_ROWS[@]} -gt 0 ]]; then
        echo
        echo "8c. recycles under wrk load ($FLEET_LOAD_WORKERS workers, wrk -t$WRK_THREADS -c$WRK_CONNECTIONS, $HOST)"
        printf '%-40s%-8s%-10s%-8s%-10s%s\n' scenario "done" requests failed "wrk ran" details
        for row in "${FLEET_LOAD_ROWS[@]}"; do
            IFS='|' read -r label n tried requests failed secs details <<<"$row"
            printf '%-40s%-8s%-10s%-8s%-10s%s\n' "$label" "$n/$tried" "$requests" "$failed" "$secs" "$details"
        done
        echo "(--max-surge 2; every demo holds 64 MiB, over the 32 MiB --max-worker-memory: each"
        echo " replacement is due again at the next check, every 100 ms; done: recycles counted by"
        echo " forkmaster_worker_recycles_total when wrk was stopped)"
    fi
}

report_logs() {
    local lines
    lines=$(cat "$TMP"/*.log 2>/dev/null | grep -E '^[^ ]+ (WARN|ERROR) ' || true)
    if [[ -n $lines ]]; then
        echo
        echo "master logs: $(printf '%s\n' "$lines" | wc -l) warning/error lines, first 10:"
        printf '%s\n' "$lines" | head -n 10
    fi
}

PARTS=()          # the parts to run, by name (all of ALL_PARTS by default)
LOAD_AT_START=""  # /proc/loadavg when the run began

# Whether part $1 was asked for.
selected() {
    local part
    for part in "${PARTS[@]}"; do [[ $part == "$1" ]] && return 0; done
    return 1
}

# Reads the part names from the command line; dies on an unknown one.
select_parts() {
    local arg part known
    (( $# > 0 )) || { PARTS=("${ALL_PARTS[@]}"); return 0; }
    for arg in "$@"; do
        known=no
        for part in "${ALL_PARTS[@]}"; do [[ $arg == "$part" ]] && known=yes; done
        [[ $known == yes ]] || die "unknown part '$arg' (parts: ${ALL_PARTS[*]})"
        PARTS+=("$arg")
    done
}

main() {
    [[ -f Cargo.toml && -f src/bin/forkmaster-demo/main.rs ]] || die "run me from the forkmaster repo root"
    select_parts "$@"
    LOAD_AT_START=$(cut -d' ' -f1-3 /proc/loadavg)
    local t0
    t0=$(now_us)
    build
    machine_limits
    say "$LIMITS"
    if selected idle; then
        bench_idle
        bench_memory_baselines
    fi
    if selected spawn; then bench_spawn; fi
    if selected upgrade; then bench_upgrade; fi
    if selected load; then
        if ensure_wrk; then
            bench_load
            check_load
        else
            echo "wrk is not available: skipping the zero-downtime part" >&2
        fi
    fi
    if selected logs; then
        pick_log_dir
        bench_logs
    fi
    if selected rollout; then bench_rollout; fi
    if selected fleet; then bench_fleet; fi
    report_machine
    if selected idle || selected spawn; then report_memory; fi
    if selected idle; then report_idle; fi
    if selected spawn; then report_spawn; fi
    if selected upgrade; then report_upgrade; fi
    if selected load; then report_load; fi
    if selected logs; then report_throughput; fi
    if selected rollout; then report_rollout; fi
    if selected fleet; then report_fleet; fi
    report_logs
    echo
    echo "took $(( ($(now_us) - t0) / 1000000 ))s${BENCH_QUICK:+ (BENCH_QUICK=$BENCH_QUICK)}, parts: ${PARTS[*]}"
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
