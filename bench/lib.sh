#!/usr/bin/env bash
# Shared by bench/upgrade.sh, bench/scale.sh and bench/preload.sh (sourced, not run): process
# bookkeeping that finds every master a benchmark started (also later
# generations, through pid files), bounded waits on conditions, time helpers,
# wrk installation and its output parsing. Uses the caller's globals
# (MASTERS, WRK_PID, ...).

say() { printf '# %s\n' "$*" >&2; }

# Median, min and max of the numbers on stdin (one a line), each printed
# with the printf format $1; "- - -" for none.
stats() {
    local fmt=$1
    sort -g | awk -v f="$fmt" '
        { v[NR] = $1 }
        END {
            if (NR == 0) { print "-", "-", "-"; exit }
            m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
            printf f " " f " " f "\n", m, v[1], v[NR]
        }'
}

# Whether process group $1 is empty.
group_gone() { ! kill -0 -- "-$1" 2>/dev/null; }

# Whether $1 is a live forkmaster master of ours. Checking the executable
# (not just `kill -0`) guards against a recycled pid, and is false for a
# zombie (no exe link), which is gone for our purposes.
is_our_master() {
    local exe
    exe=$(readlink "/proc/$1/exe" 2>/dev/null) || return 1
    [[ $exe == "$FM_EXE" ]]
}

remember_master() {
    local pid
    for pid in "${MASTER_PIDS[@]}"; do
        [[ $pid == "$1" ]] && return 0
    done
    MASTER_PIDS+=("$1")
}

# Every master pid we know of: started here, reported by an upgrade, or named
# by a pid file or .oldbin in the temp dir (an upgrade the script did not see
# finish may have started one).
known_masters() {
    local file pid
    for file in "$TMP"/*.pid "$TMP"/*.pid.oldbin; do
        [[ -f $file ]] || continue
        pid=$(tr -dc '0-9' 2>/dev/null <"$file") || continue
        [[ -n $pid ]] && remember_master "$pid"
    done
    printf '%s\n' "${MASTER_PIDS[@]}"
}

live_masters() {
    local pid
    while read -r pid; do
        [[ -n $pid ]] && is_our_master "$pid" && echo "$pid"
    done < <(known_masters)
    return 0
}

no_live_masters() { [[ -z $(live_masters) ]]; }

wrk_gone() { [[ -z $WRK_PID ]] || ! kill -0 "$WRK_PID" 2>/dev/null; }

# Polls `"$@"` every POLL_S until it succeeds; fails after $1 seconds.
wait_until() {
    local timeout_s=$1; shift
    local deadline=$(( $(now_us) + timeout_s * 1000000 ))
    until "$@"; do
        (( $(now_us) < deadline )) || return 1
        sleep "$POLL_S"
    done
}

# Microseconds since the epoch, as an integer (EPOCHREALTIME has 6 decimals).
now_us() { local t=$EPOCHREALTIME; echo "${t/./}"; }

us_to_secs() { printf '%d.%06d' $(( $1 / 1000000 )) $(( $1 % 1000000 )); }

app_ready_or_dead() { app_ready || ! is_our_master "$1"; }

# Installs wrk with apt-get if missing; fails (status 1) if it cannot.
ensure_wrk() {
    command -v wrk >/dev/null 2>&1 && return 0
    local sudo=() log="$TMP/apt.log"
    if [[ $EUID -ne 0 ]]; then
        sudo -n true 2>/dev/null || { say "wrk is missing and apt-get needs root"; return 1; }
        sudo=(sudo -n)
    fi
    command -v apt-get >/dev/null 2>&1 || { say "wrk is missing and there is no apt-get"; return 1; }
    say "installing wrk with apt-get"
    if "${sudo[@]}" apt-get update >"$log" 2>&1 &&
        DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y wrk >>"$log" 2>&1 &&
        command -v wrk >/dev/null 2>&1; then
        return 0
    fi
    say "apt-get could not install wrk: $(tail -n 2 "$log" | tr '\n' ' ')"
    return 1
}

# Whether a client connection to the app's port is established, i.e. wrk is
# connected. Read from /proc (state 01 = ESTABLISHED, remote port = ours).
load_connected() {
    local hex
    printf -v hex '%04X' "$APP_PORT"
    awk -v p=":$hex" '$3 ~ p "$" && $4 == "01" { found = 1; exit } END { exit !found }' /proc/net/tcp
}

# Reads wrk's summary; prints "requests|failed|run time|details". Failures
# are the sum of "Socket errors: connect 1, read 2, write 0, timeout 0" and
# "Non-2xx or 3xx responses: 5" (each line absent when zero).
parse_wrk() {
    awk '
        / requests in / { requests = $1; secs = $4; sub(",$", "", secs) }
        /Socket errors:/ {
            gsub(",", "")
            for (i = 3; i < NF; i += 2) if ($(i + 1) > 0) { err[$i] = $(i + 1); failed += $(i + 1) }
        }
        /Non-2xx or 3xx responses:/ { err["non-2xx"] = $NF; failed += $NF }
        END {
            if (requests == "") exit 1
            d = ""
            split("connect read write timeout non-2xx", order, " ")
            for (k = 1; k <= 5; k++) if (order[k] in err) d = d (d == "" ? "" : ",") order[k] "=" err[order[k]]
            printf "%s|%d|%s|%s\n", requests, failed, secs, (d == "" ? "-" : d)
        }' "$1"
}

# A port below the ephemeral range, so that wrk's own client sockets cannot
# hold it, and not listened on now.
pick_port() {
    local low _ port attempt hex
    read -r low _ </proc/sys/net/ipv4/ip_local_port_range
    (( low > 11000 )) || low=32768
    for attempt in $(seq 1 100); do
        port=$(( 10000 + (RANDOM * 32768 + RANDOM) % (low - 11000) ))
        printf -v hex '%04X' "$port"
        # State 0A is LISTEN, in /proc/net/tcp and tcp6 alike.
        if ! awk -v p=":$hex" '$2 ~ p "$" && $4 == "0A" { found = 1 } END { exit !found }' \
            /proc/net/tcp /proc/net/tcp6 2>/dev/null; then
            echo "$port"
            return 0
        fi
    done
    die "no free port found (attempt $attempt)"
}
