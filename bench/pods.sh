#!/usr/bin/env bash
# The pod lifecycle harness (bench/pods.py): forkmaster as PID 1 of a pid
# namespace per pod, driven as a kubelet drives it (readiness probes, an
# endpoint list with propagation lag, TERM then SIGKILL at the grace
# deadline), under client load. Root only. Run from the repo root:
#
#     bash bench/pods.sh                          # 20 reloads, 10 replacements
#     bash bench/pods.sh --upgrades 10            # in-place upgrades as PID 1
#     bash bench/pods.sh --reloads 2 --replacements 1 --workers 4
#
# Builds the release binaries first (CARGO names the cargo command, default
# cargo; BENCH_NO_BUILD=1 skips it), then runs bench/pods.py with the
# arguments given (with none: --reloads 20 --replacements 10); see
# `python3 bench/pods.py --help`. Exits as pods.py does: 1 on any failed
# request, operation, lingering zombie or leftover process.
set -Eeuo pipefail
trap 'printf "bench/pods.sh: line %s: %s failed\n" "$LINENO" "$BASH_COMMAND" >&2' ERR

[[ -f Cargo.toml && -f bench/pods.py ]] || { echo "bench/pods.sh: run me from the forkmaster repo root" >&2; exit 2; }
[[ $(id -u) == 0 ]] || { echo "bench/pods.sh: needs root (pid namespaces, nsenter)" >&2; exit 2; }
if [[ ${BENCH_NO_BUILD:-0} != 1 ]]; then
    "${CARGO:-cargo}" build --release --bins >&2
fi
(( $# > 0 )) || set -- --reloads 20 --replacements 10
exec python3 bench/pods.py --bin target/release "$@"
