#!/usr/bin/env bash
# Benchmark: `dropless load` against its peers wrk and oha.
#
# nginx answers `return 200 "ok";` on 127.0.0.1 with one worker. wrk, oha and
# `dropless load --vus 50` each run DURATION seconds with 50 keep-alive
# connections, alternating, ROUNDS rounds; the script prints the median
# requests/s of each and the ratios dropless/wrk and dropless/oha. Then it
# measures the open model's accuracy at 20 000 req/s (achieved/target and
# dropped iterations).
#
# Usage: bench/load_vs_peers.sh            (ROUNDS=3 DURATION=10 by default)
#        ROUNDS=5 DURATION=20 DROPLESS_FLAGS="--threads 2" bench/load_vs_peers.sh
# Installs what it needs: wrk and nginx (apt), oha (cargo install, ~4 min).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
CONNECTIONS=50
OPEN_RATE=${OPEN_RATE:-20000}
# Extra flags for `dropless load` in the closed-model rounds (e.g. --threads 2).
DROPLESS_FLAGS=${DROPLESS_FLAGS:-}

. bench/lib.sh
need wrk nginx oha

log "building dropless (release)"
cargo build --release -q -p dropless
DROPLESS=${CARGO_TARGET_DIR:-target}/release/dropless

# Every tool and the server get the same priority over anything else
# running on the machine (as root), so that a background build adds less noise.
nice=""
[ "$(id -u)" = 0 ] && nice="nice -n -10"

work=$(mktemp -d)
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
nginx_ok_conf "$work" "$port"
$nice "$NGINX" -c "$work/nginx.conf" -p "$work" &
nginx_pid=$!
cleanup() { kill "$nginx_pid" 2>/dev/null || true; wait "$nginx_pid" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
url="http://127.0.0.1:$port/"
for _ in $(seq 50); do
  curl -sf "$url" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -sf "$url" >/dev/null || { echo "nginx did not start" >&2; exit 1; }

run_wrk() { $nice wrk -t2 -c$CONNECTIONS -d"${DURATION}s" "$url" | awk '/^Requests\/sec/ {print $2}'; }
run_oha() { $nice oha --no-tui -c $CONNECTIONS -z "${DURATION}s" "$url" | awk '/Requests\/sec/ {print $2}'; }
run_dropless() {
  # shellcheck disable=SC2086 # DROPLESS_FLAGS is a list of flags
  $nice "$DROPLESS" load "$url" --vus $CONNECTIONS -d "${DURATION}s" $DROPLESS_FLAGS -q --json "$work/closed.json" >/dev/null
  python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(r["rate"]["achieved_per_s"]); assert r["requests"]["failed"] == 0, r["failures"]' "$work/closed.json"
}

declare -a wrk_rps oha_rps dropless_rps
for round in $(seq "$ROUNDS"); do
  wrk_rps+=("$(run_wrk)")
  oha_rps+=("$(run_oha)")
  dropless_rps+=("$(run_dropless)")
  log "round $round/$ROUNDS: wrk ${wrk_rps[-1]}  oha ${oha_rps[-1]}  dropless ${dropless_rps[-1]} req/s"
done

log "open model: $OPEN_RATE req/s for ${DURATION}s"
$nice "$DROPLESS" load "$url" --rate "$OPEN_RATE" -d "${DURATION}s" -q --json "$work/open.json" >/dev/null

python3 - "$work/open.json" "${wrk_rps[*]}" "${oha_rps[*]}" "${dropless_rps[*]}" "$ROUNDS" "$DURATION" <<'EOF'
import json, statistics, sys
open_report = json.load(open(sys.argv[1]))
wrk, oha, dropless = ([float(x) for x in arg.split()] for arg in sys.argv[2:5])
rounds, duration = sys.argv[5], sys.argv[6]
med = {name: statistics.median(v) for name, v in (("wrk", wrk), ("oha", oha), ("dropless", dropless))}
print(f"closed model: nginx 1 worker, 50 keep-alive connections, {rounds} rounds x {duration}s, median requests/s")
for name in ("wrk", "oha", "dropless"):
    runs = " ".join(f"{x:.0f}" for x in {"wrk": wrk, "oha": oha, "dropless": dropless}[name])
    print(f"  {name:<9} {med[name]:>10.0f}   (rounds: {runs})")
print(f"  ratio dropless/wrk {med['dropless'] / med['wrk']:.2f}   dropless/oha {med['dropless'] / med['oha']:.2f}")
rate = open_report["rate"]
print(f"open model: target {rate['target_per_s']:.0f} req/s, achieved {rate['achieved_per_s']:.1f} req/s "
      f"(achieved/target {rate['achieved_per_s'] / rate['target_per_s']:.4f}), "
      f"{open_report['requests']['total']} sent, {open_report['requests']['failed']} failed, "
      f"dropped_iterations {open_report['dropped_iterations']}, "
      f"ttlb p99 {open_report['latency_ms']['ttlb']['p99']:.2f} ms")
EOF
