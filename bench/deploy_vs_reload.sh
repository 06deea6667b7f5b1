#!/usr/bin/env bash
# Benchmark: failures seen by clients while the backend version is swapped
# SWAPS (5) times, by an nginx reload, by an HAProxy reload, and by
# `dropless deploy`.
#
# The backend is the demo service (`dropless-demo --profile v3`: graceful on
# SIGTERM) answering `GET /sum?a=1&b=2` after WORK_MS (5) ms. `dropless load`
# sends RATE (2000) req/s with keep-alive through each proxy while a swap
# runs every INTERVAL (2) seconds. For nginx and HAProxy a swap is done the
# careful way: start the new backend, wait for its /healthz, point the
# config at it, reload, wait a second, SIGTERM the old backend. For dropless
# it is `dropless deploy --env VERSION=vN` (rolling, 2 replicas). The script
# prints each method's requests, failures by class and dropped iterations
# side by side.
#
# Usage: bench/deploy_vs_reload.sh     (RATE=2000 SWAPS=5 INTERVAL=2 WORK_MS=5)
# Installs what it needs: nginx, haproxy (apt).
set -euo pipefail
cd "$(dirname "$0")/.."

RATE=${RATE:-2000}
SWAPS=${SWAPS:-5}
INTERVAL=${INTERVAL:-2}
WORK_MS=${WORK_MS:-5}
DURATION=$(( (SWAPS + 2) * INTERVAL ))

. bench/lib.sh
need nginx haproxy

log "building dropless and dropless-demo (release)"
cargo build --release -q -p dropless -p dropless-demo
BIN=${CARGO_TARGET_DIR:-target}/release
DROPLESS=$BIN/dropless
DEMO=$(realpath "$BIN/dropless-demo")
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

work=$(mktemp -d)
pids=()
cleanup() {
  # Backends start in a subshell: their pids are in backend.pids.
  for p in "${pids[@]}" $(cat "$work/backend.pids" 2>/dev/null); do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -n "${KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT
# Starts demo version $1 on a free port; prints "PID PORT".
start_backend() {
  local port; port=$(free_port)
  "$DEMO" --profile v3 --work-ms "$WORK_MS" --version-label "$1" --port "$port" \
    >>"$work/backend.log" 2>&1 &
  local pid=$!
  echo "$pid" >>"$work/backend.pids"
  wait_http "http://127.0.0.1:$port/healthz"
  echo "$pid $port"
}
start_load() { # url, report file; sets $load_pid (no subshell, so it can be waited for)
  "$DROPLESS" load "$1" --rate "$RATE" -d "${DURATION}s" -q --json "$2" >/dev/null 2>>"$work/load.log" &
  load_pid=$!
}

# Load through $front while SWAPS times: start backend vN, write the config
# with $1 (a function taking the port), reload with the rest of the
# arguments, wait a second, SIGTERM the old backend. $old_pid is the first
# backend; the report goes to $work/$name.json.
swap_under_load() {
  local name=$1 write_conf=$2; shift 2
  start_load "http://127.0.0.1:$front/sum?a=1&b=2" "$work/$name.json"
  sleep "$INTERVAL"
  for v in $(seq "$SWAPS"); do
    read -r new_pid new_port < <(start_backend "v$v")
    "$write_conf" "$new_port"
    "$@"
    sleep 1
    kill -TERM "$old_pid"
    old_pid=$new_pid
    sleep $(( INTERVAL - 1 ))
  done
  wait "$load_pid" || true
  kill -TERM "$old_pid" 2>/dev/null || true
}

# --- nginx -----------------------------------------------------------------
nginx_conf() { # backend port
  cat >"$work/nginx/nginx.conf" <<EOF
worker_processes 2;
daemon off;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  upstream backend { server 127.0.0.1:$1; keepalive 64; }
  server {
    listen 127.0.0.1:$front;
    location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
EOF
}
log "nginx: $SWAPS reloads under $RATE req/s"
mkdir -p "$work/nginx"
front=$(free_port)
read -r old_pid old_port < <(start_backend v0)
nginx_conf "$old_port"
"$NGINX" -c "$work/nginx/nginx.conf" -p "$work/nginx" & pids+=($!)
wait_http "http://127.0.0.1:$front/sum?a=1&b=2"
swap_under_load nginx nginx_conf "$NGINX" -c "$work/nginx/nginx.conf" -p "$work/nginx" -s reload

# --- HAProxy ---------------------------------------------------------------
haproxy_conf() { # backend port
  haproxy_config "$front" "" "$1" >"$work/haproxy.cfg"
}
log "haproxy: $SWAPS reloads under $RATE req/s"
front=$(free_port)
read -r old_pid old_port < <(start_backend v0)
haproxy_conf "$old_port"
"$HAPROXY" -W -db -f "$work/haproxy.cfg" >"$work/haproxy.log" 2>&1 & haproxy_master=$!; pids+=($haproxy_master)
wait_http "http://127.0.0.1:$front/sum?a=1&b=2"
swap_under_load haproxy haproxy_conf kill -USR2 "$haproxy_master"

# --- dropless --------------------------------------------------------------
log "dropless: $SWAPS deploys under $RATE req/s"
front=$(free_port)
export DROPLESS_CONTROL=$work/dropless.sock
RUST_LOG=warn "$DROPLESS" serve --listen "127.0.0.1:$front" --state-dir "$work/dropless" \
  --replicas 2 -- "$DEMO" --profile v3 --work-ms "$WORK_MS" 2>"$work/dropless.log" & pids+=($!)
wait_http "http://127.0.0.1:$front/sum?a=1&b=2"
start_load "http://127.0.0.1:$front/sum?a=1&b=2" "$work/dropless.json"
sleep "$INTERVAL"
for v in $(seq "$SWAPS"); do
  started=$(date +%s)
  "$DROPLESS" deploy --env "VERSION=v$v" >/dev/null
  left=$(( INTERVAL - ($(date +%s) - started) ))
  [ "$left" -gt 0 ] && sleep "$left"
done
wait "$load_pid" || true

python3 - "$work" "$RATE" "$SWAPS" "$WORK_MS" <<'EOF'
import json, sys
work, rate, swaps, work_ms = sys.argv[1:5]
print(f"{swaps} backend swaps under {rate} req/s keep-alive (demo v3, /sum {work_ms} ms)")
print(f"  {'method':<18} {'requests':>9} {'ok':>9} {'failed':>7} {'dropped':>8}  failures by class")
for name, label in (("nginx", "nginx reload"), ("haproxy", "HAProxy reload"), ("dropless", "dropless deploy")):
    r = json.load(open(f"{work}/{name}.json"))
    q = r["requests"]
    classes = ", ".join(f"{k} {v}" for k, v in r["failures"].items() if v) or "none"
    print(f"  {label:<18} {q['total']:>9} {q['ok']:>9} {q['failed']:>7} {r['dropped_iterations']:>8}  {classes}")
EOF
