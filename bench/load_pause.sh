#!/usr/bin/env bash
# Benchmark: what a pause of the load generator itself does to its report.
#
# `dropless load --rate RATE` runs for 4 s against one nginx worker
# (`return 200 "ok";` on 127.0.0.1); 2 s in, the generator is stopped
# (SIGSTOP) for PAUSE_MS, as a loaded machine or a VM's steal can stop it,
# then continued. The arrivals due during the pause are sent at once when
# it ends. A generator that opens a connection for each of them floods the
# server's accept queue (511 for nginx): the SYNs dropped are sent again
# after 1 s, and requests fail (eof, reset) that the server never refused.
# The pause must show as latency (about PAUSE_MS), never as failures or 1 s
# requests. Each round prints the failures by class, p99 and slowest
# request (time to last byte, from the schedule), and the kernel's
# ListenOverflows and TCPSynRetrans counters over the run.
#
# Usage: bench/load_pause.sh                        (ROUNDS=3 RATE=20000 PAUSE_MS=200)
#        LOAD_FLAGS="--max-connecting 100000" bench/load_pause.sh   (no connect cap)
#        DROPLESS=/tmp/dropless-before bench/load_pause.sh         (that binary, no build)
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
RATE=${RATE:-20000}
PAUSE_MS=${PAUSE_MS:-200}
LOAD_FLAGS=${LOAD_FLAGS:-}

. bench/lib.sh
need nginx
command -v nstat >/dev/null || { log "installing iproute2 (nstat)"; apt_install iproute2; }

dropless_binary

work=$(mktemp -d)
port=$(free_port)
nginx_ok_conf "$work" "$port"
"$NGINX" -c "$work/nginx.conf" -p "$work" &
nginx_pid=$!
load_pid=""
cleanup() {
  # A generator left stopped by an interrupt is continued, then ended.
  if [ -n "$load_pid" ]; then kill -CONT "$load_pid" 2>/dev/null || true; kill "$load_pid" 2>/dev/null || true; fi
  kill "$nginx_pid" 2>/dev/null || true
  wait "$nginx_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
url="http://127.0.0.1:$port/"
wait_http "$url"

pause=$(python3 -c "print($PAUSE_MS / 1000)")
for round in $(seq "$ROUNDS"); do
  nstat -n >/dev/null
  # shellcheck disable=SC2086 # LOAD_FLAGS is a list of flags
  "$DROPLESS" load "$url" --rate "$RATE" -d 4s -q --json "$work/r.json" $LOAD_FLAGS >/dev/null 2>&1 &
  load_pid=$!
  sleep 2
  kill -STOP "$load_pid"
  sleep "$pause"
  kill -CONT "$load_pid"
  wait "$load_pid" || true
  load_pid=""
  counters=$(nstat -z TcpExtListenOverflows TcpExtTCPSynRetrans | awk '/^Tcp/ {printf "%s=%s ", substr($1, 7), $2}')
  python3 - "$work/r.json" "$round" "$counters" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
q, l = r["requests"], r["latency_ms"]["ttlb"]
failed = {k: v for k, v in r["failures"].items() if v}
print(f"round {sys.argv[2]}: {q['ok']} ok, {q['failed']} failed {failed or ''}, "
      f"dropped {r['dropped_iterations']}, p99 {l['p99']:.0f} ms, slowest {l['max']:.0f} ms, {sys.argv[3]}")
EOF
done
