#!/usr/bin/env bash
# Overhead of dropless-lifecycle: the same axum handler behind plain
# axum::serve and behind Lifecycle::serve, driven by wrk on loopback.
# Alternating rounds; prints the median requests/s of each and the ratio
# lifecycle/axum (target >= 0.97). It also prints the server's CPU time per
# request (user+system from /proc), which is steadier than throughput on a
# shared, noisy machine.
#
# Usage: bench/lifecycle_overhead.sh [ROUNDS] [SECONDS] [CONNECTIONS]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
SECONDS_PER_RUN=${2:-10}
CONNECTIONS=${3:-50}

. bench/lib.sh
need wrk
log "building the example (release)"
cargo build --release -q -p dropless-lifecycle --example overhead
BIN=target/release/examples/overhead

CLK_TCK=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

run_one() { # mode -> "requests/s cpu-us-per-request"
  local mode=$1 out pid addr report rps requests t0 t1
  out=$(mktemp)
  "$BIN" "$mode" >"$out" 2>/dev/null &
  pid=$!
  for _ in $(seq 100); do grep -q listening "$out" && break; sleep 0.05; done
  addr=$(sed -n 's/^listening on //p' "$out")
  [ -n "$addr" ] || { echo "server $mode did not start" >&2; kill "$pid"; exit 1; }
  t0=$(cpu_ticks "$pid")
  report=$(wrk -t2 -c"$CONNECTIONS" -d"${SECONDS_PER_RUN}s" "$addr/")
  t1=$(cpu_ticks "$pid")
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
  rm -f "$out"
  rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$report")
  requests=$(awk '/requests in/ {print $1}' <<<"$report")
  awk -v r="$rps" -v n="$requests" -v d="$((t1 - t0))" -v hz="$CLK_TCK" \
    'BEGIN {printf "%s %.2f\n", r, d / hz * 1e6 / n}'
}

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

axum=(); lifecycle=(); axum_cpu=(); lifecycle_cpu=()
for round in $(seq "$ROUNDS"); do
  # Alternate which goes first, so drift on a noisy machine hits both.
  if (( round % 2 )); then order=(axum lifecycle); else order=(lifecycle axum); fi
  for mode in "${order[@]}"; do
    read -r rps cpu < <(run_one "$mode")
    printf 'round %d  %-9s %12.0f req/s  %6.2f us CPU/request\n' "$round" "$mode" "$rps" "$cpu"
    if [ "$mode" = axum ]; then axum+=("$rps"); axum_cpu+=("$cpu"); else lifecycle+=("$rps"); lifecycle_cpu+=("$cpu"); fi
  done
done
m_axum=$(printf '%s\n' "${axum[@]}" | median)
m_life=$(printf '%s\n' "${lifecycle[@]}" | median)
c_axum=$(printf '%s\n' "${axum_cpu[@]}" | median)
c_life=$(printf '%s\n' "${lifecycle_cpu[@]}" | median)
ratio=$(awk -v a="$m_life" -v b="$m_axum" 'BEGIN {printf "%.3f", a/b}')
cpu_ratio=$(awk -v a="$c_axum" -v b="$c_life" 'BEGIN {printf "%.3f", a/b}')
echo
printf 'median axum::serve        %12.0f req/s  %6.2f us CPU/request\n' "$m_axum" "$c_axum"
printf 'median dropless-lifecycle %12.0f req/s  %6.2f us CPU/request\n' "$m_life" "$c_life"
printf 'ratio lifecycle/axum      %12s (throughput, target >= 0.97)\n' "$ratio"
printf 'ratio lifecycle/axum      %12s (requests per CPU second)\n' "$cpu_ratio"
