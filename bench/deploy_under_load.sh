#!/usr/bin/env bash
# Benchmark: the slowest request while `dropless deploy` swaps versions under
# high load (issue 17, "No stall").
#
# The demo service (`dropless-demo --profile v4`, /sum after WORK_MS (5) ms)
# runs behind `dropless serve` (2 replicas, rolling). `dropless load` (open
# model, no retries) sends `GET /sum?a=1&b=2` for (DEPLOYS + 2) x INTERVAL
# seconds while DEPLOYS (10) deploys run, one every INTERVAL (4) s, each
# waited for (`dropless deploy --env VERSION=vN`). A fresh `serve` per run.
#
# Rows (ROWS, default all, space-separated), each run RUNS (3) times:
#   ka5k     5 000 req/s, keep-alive
#   ka10k   10 000 req/s, keep-alive
#   close2k  2 000 req/s, a new connection per request (--no-keepalive)
#   h2-5k    5 000 req/s, h2c (--http2)
# Per run: requests, ok, failed by class, p99 and max (time to last byte from
# the schedule), requests slower than 100 ms and 900 ms, the kernel's
# accept-queue and SYN-retransmission counters over the run (nstat), and the
# seconds whose slowest request took over 100 ms next to the deploys that
# ran then. Per row: the medians and the worst max.
#
# Usage: bench/deploy_under_load.sh    (ROWS="ka10k close2k" RUNS=1 DEPLOYS=10 INTERVAL=4 WORK_MS=5)
# KEEP=1 keeps the work directory (reports, logs); DROPLESS_BIN and DEMO_BIN
# run given binaries (another commit's) instead of building this one. Needs
# python3, ss and nstat (iproute2, installed if missing). The kernel counters
# are the whole machine's: other programs' drops count too.
set -euo pipefail
cd "$(dirname "$0")/.."

ROWS=${ROWS:-ka5k ka10k close2k h2-5k}
RUNS=${RUNS:-3}
DEPLOYS=${DEPLOYS:-10}
INTERVAL=${INTERVAL:-4}
WORK_MS=${WORK_MS:-5}
DURATION=$(( (DEPLOYS + 2) * INTERVAL ))

. bench/lib.sh
command -v nstat >/dev/null && command -v ss >/dev/null || { log "installing iproute2 (nstat)"; apt_install iproute2; }

for row in $ROWS; do
  case "$row" in ka5k | ka10k | close2k | h2-5k) ;; *)
    echo "unknown row '$row' in ROWS: use ka5k, ka10k, close2k or h2-5k" >&2; exit 2 ;;
  esac
done

if [ -n "${DROPLESS_BIN:-}" ]; then
  # Binaries of another commit, to compare (both must be given).
  DROPLESS=$(realpath "$DROPLESS_BIN")
  DEMO=$(realpath "${DEMO_BIN:?DEMO_BIN must be given with DROPLESS_BIN}")
else
  log "building dropless and dropless-demo (release)"
  cargo build --release -q -p dropless -p dropless-demo
  BIN=${CARGO_TARGET_DIR:-target}/release
  DROPLESS=$(realpath "$BIN/dropless")
  DEMO=$(realpath "$BIN/dropless-demo")
fi
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
# As root, serve (and so the replicas), the load and the deploys run at
# nice -10, as the other benchmarks' processes do, so that builds sharing
# the machine starve them less (NICE=0 to turn it off).
nice=()
if [ "$(id -u)" = 0 ] && [ "${NICE:-1}" != 0 ]; then nice=(nice -n -10); fi

work=$(mktemp -d)
serve_pid=""
load_pid=""
sampler_pid=""
cleanup() {
  for p in $sampler_pid $load_pid $serve_pid; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -n "${KEEP:-}" ] && log "kept $work" || rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

row_flags() { # row -> rate and load flags
  case "$1" in
    ka5k) echo "5000" ;;
    ka10k) echo "10000" ;;
    close2k) echo "2000 --no-keepalive" ;;
    h2-5k) echo "5000 --http2" ;;
  esac
}

# One run: serve, load, the deploys; writes $dir/load.json, deploys.txt
# (seconds since the load started, begin and end of each deploy) and
# nstat.txt.
run_once() {
  local row=$1 dir=$2 rate flags
  read -r rate flags <<<"$(row_flags "$row")"
  mkdir -p "$dir"
  export DROPLESS_CONTROL=$dir/dropless.sock
  RUST_LOG=warn "${nice[@]}" "$DROPLESS" serve --listen 127.0.0.1:0 --state-dir "$dir/state" \
    --replicas 2 -- "$DEMO" --profile v4 --work-ms "$WORK_MS" >"$dir/serve.out" 2>"$dir/serve.log" &
  serve_pid=$!
  local front=""
  for _ in $(seq 200); do
    front=$(sed -n 's|^proxy on http://\([^,]*\),.*|\1|p' "$dir/serve.out")
    [ -n "$front" ] && break
    kill -0 "$serve_pid" 2>/dev/null || { cat "$dir/serve.log" >&2; exit 1; }
    sleep 0.05
  done
  [ -n "$front" ] || { echo "serve printed no address" >&2; exit 1; }
  wait_http "http://$front/sum?a=1&b=2"
  echo "${front##*:} $(basename "$DEMO")" >"$dir/ports.txt"
  ss -ltnp >"$dir/listeners.txt"
  # The accept queues over the run: every 100 ms, each listener's queue
  # (Recv-Q) and backlog (Send-Q), its owner, for the largest seen.
  ( while :; do ss -ltnpH 2>/dev/null; sleep 0.1; done ) >"$dir/queues.txt" &
  sampler_pid=$!
  nstat -n
  local t0; t0=$(date +%s.%N)
  # shellcheck disable=SC2086
  "${nice[@]}" "$DROPLESS" load "http://$front/sum?a=1&b=2" --rate "$rate" $flags -d "${DURATION}s" \
    -q --json "$dir/load.json" >/dev/null 2>"$dir/load.log" &
  load_pid=$!
  sleep "$INTERVAL"
  : >"$dir/deploys.txt"
  for v in $(seq "$DEPLOYS"); do
    local began ended left
    began=$(date +%s.%N)
    "${nice[@]}" "$DROPLESS" deploy --env "VERSION=v$v" >>"$dir/deploy.log" 2>&1 || echo "deploy v$v failed" >&2
    ended=$(date +%s.%N)
    echo "$began $ended" | awk -v t0="$t0" '{ printf "%.2f %.2f\n", $1 - t0, $2 - t0 }' >>"$dir/deploys.txt"
    left=$(awk -v b="$began" -v e="$ended" -v i="$INTERVAL" 'BEGIN { l = i - (e - b); print (l > 0 ? l : 0) }')
    sleep "$left"
  done
  wait "$load_pid" || true
  load_pid=""
  kill "$sampler_pid" 2>/dev/null || true
  wait "$sampler_pid" 2>/dev/null || true
  sampler_pid=""
  nstat -z TcpExtListenOverflows TcpExtListenDrops TcpExtTCPSynRetrans TcpExtTCPTimeouts \
    TcpAttemptFails TcpOutRsts >"$dir/nstat.txt"
  kill -TERM "$serve_pid"
  wait "$serve_pid" 2>/dev/null || true
  serve_pid=""
}

log "rows: $ROWS; $RUNS run(s) each; $DEPLOYS deploys, one every ${INTERVAL}s, load ${DURATION}s; load average: $(cut -d' ' -f1-3 /proc/loadavg)"
for row in $ROWS; do
  for run in $(seq "$RUNS"); do
    log "$row run $run (load average $(cut -d' ' -f1-3 /proc/loadavg))"
    run_once "$row" "$work/$row/$run"
  done
done

python3 - "$work" "$RUNS" "$ROWS" <<'EOF'
import json, os, statistics, sys
work, runs, rows = sys.argv[1], int(sys.argv[2]), sys.argv[3].split()

def nstat(path):
    out = {}
    for line in open(path):
        parts = line.split()
        if len(parts) >= 2 and parts[1].isdigit():
            out[parts[0].replace("TcpExt", "")] = int(parts[1])
    return out

print(f"{'row':<8} {'run':>3} {'requests':>9} {'ok':>9} {'failed':>6} {'p99 ms':>7} {'max ms':>8} "
      f"{'>100ms':>6} {'>900ms':>6}  failures / kernel counters")
summary = []
for row in rows:
    results = []
    for run in range(1, runs + 1):
        d = f"{work}/{row}/{run}"
        r = json.load(open(f"{d}/load.json"))
        q, ttlb = r["requests"], r["latency_ms"]["ttlb"]
        over = r["latency_ms"].get("over_ms", {})
        slow100, slow900 = int(over.get("100", 0)), int(over.get("900", 0))
        classes = ", ".join(f"{k} {v}" for k, v in r["failures"].items() if v) or "none"
        k = nstat(f"{d}/nstat.txt")
        kernel = ", ".join(f"{n} {v}" for n, v in k.items() if v) or "no drops/retransmits"
        front, demo = open(f"{d}/ports.txt").read().split()
        queues = {}
        for line in open(f"{d}/queues.txt"):
            parts = line.split()
            if len(parts) < 6:
                continue
            if parts[3].endswith(f":{front}"):
                who = "proxy"
            elif f'"{demo}"' in parts[5]:
                who = "replica"
            else:
                continue
            depth, backlog = int(parts[1]), int(parts[2])
            queues[who] = max(queues.get(who, (0, backlog)), (depth, backlog))
        kernel += "; largest accept queue: " + ", ".join(
            f"{w} {depth}/{backlog}" for w, (depth, backlog) in sorted(queues.items()))
        print(f"{row:<8} {run:>3} {q['total']:>9} {q['ok']:>9} {q['failed']:>6} {ttlb['p99']:>7.1f} "
              f"{ttlb['max']:>8.1f} {slow100:>6} {slow900:>6}  {classes}; {kernel}")
        deploys = [tuple(map(float, l.split())) for l in open(f"{d}/deploys.txt")]
        for s in r["timeline"]:
            if (s.get("max_ms") or 0) > 100:
                near = [f"v{i + 1} {b:.1f}-{e:.1f}s" for i, (b, e) in enumerate(deploys)
                        if b - 1 <= s["t_s"] + 1 and s["t_s"] <= e + 1]
                print(f"{'':>14} second {s['t_s']}: max {s['max_ms']:.0f} ms, p99 {s['p99_ms']:.1f} ms; "
                      f"deploys then: {', '.join(near) or 'none'}")
        results.append((q["total"], q["failed"], ttlb["p99"], ttlb["max"], slow100, slow900))
    med = lambda i: statistics.median(x[i] for x in results)
    summary.append((row, med(0), med(1), med(2), med(3), max(x[3] for x in results), med(4), med(5)))

print()
print(f"{'row':<8} {'requests':>9} {'failed':>6} {'p99 ms':>7} {'max ms':>8} {'worst max':>9} {'>100ms':>6} {'>900ms':>6}   (medians of {runs} runs)")
for row, total, failed, p99, mx, worst, s100, s900 in summary:
    print(f"{row:<8} {total:>9.0f} {failed:>6.0f} {p99:>7.1f} {mx:>8.1f} {worst:>9.1f} {s100:>6.0f} {s900:>6.0f}")
EOF
