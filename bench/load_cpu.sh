#!/usr/bin/env bash
# Benchmark: CPU that `dropless load` spends per 1 000 requests, open model
# against closed model (issue 17: open ≤ 1.5× closed).
#
# nginx answers `return 200 "ok";` on 127.0.0.1 with one worker. Each round
# runs, for DURATION seconds each and alternating:
#   closed  `dropless load --vus 50`  (the closed model has no rate option:
#           it runs unlimited, as fast as nginx answers)
#   open    `dropless load --rate RATE`  (20 000 req/s by default)
#   k6      constant-arrival-rate at RATE with 50 VUs, only if `k6` is on
#           PATH (the script does not install it)
# and reads each process's user+system CPU seconds (`/usr/bin/time`) and the
# requests it sent (its JSON report, or k6's summary). It prints per tool the
# median over ROUNDS of CPU-seconds per 1 000 requests, the achieved rate,
# and the ratio open/closed. CPU per request is what to compare on a shared
# machine: it moves far less than throughput when other processes compete.
#
# Usage: bench/load_cpu.sh                   (ROUNDS=3 DURATION=10 RATE=20000)
#        DURATION=5 OPEN_FLAGS="--connections 50" bench/load_cpu.sh
#        DROPLESS=/tmp/dropless-before bench/load_cpu.sh   (that binary, no build)
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
RATE=${RATE:-20000}
VUS=50
# Extra flags for the open-model runs (e.g. --threads 1, --connections 50).
OPEN_FLAGS=${OPEN_FLAGS:-}

. bench/lib.sh
need nginx
[ -x /usr/bin/time ] || { log "installing time"; apt_install time; }

dropless_binary

nice=""
[ "$(id -u)" = 0 ] && nice="nice -n -10"

work=$(mktemp -d)
port=$(free_port)
nginx_ok_conf "$work" "$port"
$nice "$NGINX" -c "$work/nginx.conf" -p "$work" &
nginx_pid=$!
cleanup() { kill "$nginx_pid" 2>/dev/null || true; wait "$nginx_pid" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
url="http://127.0.0.1:$port/"
wait_http "$url"

# measure_dropless NAME CMD...: runs CMD under /usr/bin/time; prints
# "cpu_s requests duration_s dropped_iterations failed" (measure_k6 likewise).
measure_dropless() {
  local name=$1; shift
  $nice /usr/bin/time -f "%U %S" -o "$work/$name.time" "$@" -q --json "$work/$name.json" >/dev/null
  python3 - "$work/$name.time" "$work/$name.json" <<'EOF'
import json, sys
user, system = map(float, open(sys.argv[1]).read().split()[-2:])
r = json.load(open(sys.argv[2]))
print(user + system, r["requests"]["total"], r["duration_s"], r["dropped_iterations"], r["requests"]["failed"])
EOF
}

measure_k6() {
  cat >"$work/k6.js" <<EOF
export const options = { scenarios: { open: { executor: 'constant-arrival-rate',
  rate: $RATE, timeUnit: '1s', duration: '${DURATION}s', preAllocatedVUs: $VUS, maxVUs: $VUS } } };
import http from 'k6/http';
export default function () { http.get('$url'); }
EOF
  $nice /usr/bin/time -f "%U %S" -o "$work/k6.time" k6 run -q --summary-export "$work/k6.json" "$work/k6.js" >/dev/null 2>&1
  python3 - "$work/k6.time" "$work/k6.json" "$DURATION" <<'EOF'
import json, sys
user, system = map(float, open(sys.argv[1]).read().split()[-2:])
m = json.load(open(sys.argv[2]))["metrics"]
dropped = m.get("dropped_iterations", {}).get("count", 0)
failed = m.get("http_req_failed", {}).get("passes", 0)
print(user + system, m["http_reqs"]["count"], sys.argv[3], dropped, failed)
EOF
}

tools="closed open"
command -v k6 >/dev/null && tools="$tools k6"
for round in $(seq "$ROUNDS"); do
  for tool in $tools; do
    case $tool in
      closed) line=$(measure_dropless closed "$DROPLESS" load "$url" --vus $VUS -d "${DURATION}s") ;;
      # shellcheck disable=SC2086 # OPEN_FLAGS is a list of flags
      open) line=$(measure_dropless open "$DROPLESS" load "$url" --rate "$RATE" -d "${DURATION}s" $OPEN_FLAGS) ;;
      k6) line=$(measure_k6) ;;
    esac
    echo "$tool $line" >>"$work/results"
    log "round $round/$ROUNDS $tool: cpu_s requests duration_s dropped failed = $line"
  done
done

python3 - "$work/results" "$RATE" "$ROUNDS" "$DURATION" "$(cut -d' ' -f1-3 /proc/loadavg)" <<'EOF'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    tool, cpu, requests, duration, dropped, failed = line.split()
    rows.setdefault(tool, []).append((float(cpu), int(requests), float(duration), int(float(dropped)), int(float(failed))))
rate, rounds, duration, load = sys.argv[2:6]
print(f"CPU per 1 000 requests, nginx 1 worker, {rounds} rounds x {duration}s, load average now {load}")
med = {}
for tool, runs in rows.items():
    per_k = [r[0] / r[1] * 1000 for r in runs]
    med[tool] = statistics.median(per_k)
    rps = statistics.median(r[1] / r[2] for r in runs)
    dropped, failed = sum(r[3] for r in runs), sum(r[4] for r in runs)
    what = {"closed": "--vus 50 (unlimited)", "open": f"--rate {rate}", "k6": f"constant-arrival-rate {rate}"}[tool]
    print(f"  {tool:<7} {what:<28} {med[tool]:.4f} CPU-s/1000 req   (rounds: "
          + " ".join(f"{x:.4f}" for x in per_k) + f")   median {rps:.0f} req/s, dropped {dropped}, failed {failed}")
if "open" in med and "closed" in med:
    print(f"  ratio open/closed {med['open'] / med['closed']:.2f}")
EOF
