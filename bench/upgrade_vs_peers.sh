#!/usr/bin/env bash
# Benchmark: failures seen by clients while the *proxy itself* is upgraded
# or restarted UPGRADES (5) times, the backend staying the same:
#
#   dropless upgrade           `dropless upgrade` (new serve adopts the replicas)
#   dropless restart           SIGTERM to serve, then serve started again (the
#                              kamal-proxy situation: the replicas restart too)
#   nginx binary upgrade       USR2 to the master, then QUIT to the old master
#   nginx reload               HUP to the master
#   nginx restart              QUIT, then nginx started again
#   HAProxy reload             USR2 to the master (-W), listeners passed with
#                              `expose-fd listeners` on the master's socket
#   HAProxy restart            USR1 (soft stop), then haproxy started again
#
# The backend is the demo service (`dropless demo-service --profile v3`,
# graceful on SIGTERM) answering `GET /sum?a=1&b=2` after WORK_MS (5) ms;
# dropless runs 2 replicas of it, nginx and HAProxy proxy to 2 instances.
# `dropless load` sends RATE (500) req/s (LOAD_FLAGS added, e.g.
# --no-keepalive) for (UPGRADES + 2) * INTERVAL (2) s while
# an upgrade or restart runs every INTERVAL s. The script prints each
# method's requests, failures by class and dropped iterations side by side;
# record them in docs/benchmarks.md. Target: dropless upgrade 0 failed.
#
# Usage: bench/upgrade_vs_peers.sh   (RATE=500 UPGRADES=5 INTERVAL=2 WORK_MS=5 LOAD_FLAGS=)
# Installs what it needs: nginx, haproxy (apt).
set -euo pipefail
cd "$(dirname "$0")/.."

RATE=${RATE:-500}
UPGRADES=${UPGRADES:-5}
INTERVAL=${INTERVAL:-2}
WORK_MS=${WORK_MS:-5}
LOAD_FLAGS=${LOAD_FLAGS:-}
DURATION=$(( (UPGRADES + 2) * INTERVAL ))

. bench/lib.sh
need nginx haproxy

log "building dropless (release)"
cargo build --release -q -p dropless
DROPLESS=$(realpath "${CARGO_TARGET_DIR:-target}/release/dropless")
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

work=$(mktemp -d)
cleanup() {
  for f in "$work"/*.pids; do
    [ -e "$f" ] || continue
    for p in $(cat "$f"); do kill "$p" 2>/dev/null || true; done
  done
  wait 2>/dev/null || true
  [ -n "${KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT

# Starts a demo backend on a free port; prints its port.
start_backend() {
  local port; port=$(free_port)
  "$DROPLESS" demo-service --profile v3 --work-ms "$WORK_MS" --port "$port" \
    >>"$work/backend.log" 2>&1 &
  echo $! >>"$work/backend.pids"
  wait_http "http://127.0.0.1:$port/healthz"
  echo "$port"
}
# Load against $front; the report goes to $work/$1.json; sets $load_pid.
start_load() {
  # shellcheck disable=SC2086
  "$DROPLESS" load "http://127.0.0.1:$front/sum?a=1&b=2" --rate "$RATE" -d "${DURATION}s" \
    $LOAD_FLAGS -q --json "$work/$1.json" >/dev/null 2>>"$work/load.log" &
  load_pid=$!
}
# Runs "$@" UPGRADES times under load, every INTERVAL s; report $work/$name.json.
under_load() {
  local name=$1; shift
  start_load "$name"
  sleep "$INTERVAL"
  for _ in $(seq "$UPGRADES"); do
    local started; started=$(date +%s)
    "$@"
    local left=$(( INTERVAL - ($(date +%s) - started) ))
    [ "$left" -gt 0 ] && sleep "$left"
  done
  wait "$load_pid" || true
}
# Waits up to 10 s until process $1 is gone.
wait_gone() { for _ in $(seq 200); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.05; done; }

b1=$(start_backend); b2=$(start_backend)

# --- dropless ----------------------------------------------------------------
front=$(free_port)
export DROPLESS_CONTROL=$work/dropless.sock
dropless_start() {
  RUST_LOG=warn "$DROPLESS" serve --listen "127.0.0.1:$front" --state-dir "$work/dropless" \
    --replicas 2 -- "$DROPLESS" demo-service --profile v3 --work-ms "$WORK_MS" \
    >/dev/null 2>>"$work/dropless.log" &
  echo $! >>"$work/dropless.pids"
  wait_http "http://127.0.0.1:$front/sum?a=1&b=2"
}
dropless_pid() { "$DROPLESS" status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["runtime"]["pid"])'; }
dropless_restart() {
  local pid; pid=$(dropless_pid)
  kill -TERM "$pid"; wait_gone "$pid"
  dropless_start
}
log "dropless: $UPGRADES upgrades under $RATE req/s"
dropless_start
under_load dropless-upgrade "$DROPLESS" upgrade
dropless_pid >>"$work/dropless.pids"
log "dropless: $UPGRADES restarts under $RATE req/s"
under_load dropless-restart dropless_restart
kill -TERM "$(dropless_pid)"; sleep 1

# --- nginx -------------------------------------------------------------------
front=$(free_port)
mkdir -p "$work/nginx"
cat >"$work/nginx/nginx.conf" <<EOF
worker_processes 2;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  upstream backend { server 127.0.0.1:$b1; server 127.0.0.1:$b2; keepalive 64; }
  server {
    listen 127.0.0.1:$front;
    location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
EOF
nginx_start() {
  "$NGINX" -c "$work/nginx/nginx.conf" -p "$work/nginx"   # daemonizes; pid in nginx.pid
  wait_http "http://127.0.0.1:$front/sum?a=1&b=2"
  cat "$work/nginx/nginx.pid" >>"$work/nginx.pids"
}
nginx_binary_upgrade() {
  local old; old=$(cat "$work/nginx/nginx.pid")
  kill -USR2 "$old"
  # The old master renames its pid file, then the new one writes its own.
  for _ in $(seq 200); do
    [ -e "$work/nginx/nginx.pid.oldbin" ] && [ -s "$work/nginx/nginx.pid" ] && break
    sleep 0.05
  done
  cat "$work/nginx/nginx.pid" >>"$work/nginx.pids"
  sleep 0.5
  kill -QUIT "$old"; wait_gone "$old"
}
nginx_reload() { kill -HUP "$(cat "$work/nginx/nginx.pid")"; }
nginx_restart() {
  local old; old=$(cat "$work/nginx/nginx.pid")
  kill -QUIT "$old"; wait_gone "$old"
  nginx_start
}
nginx_start
log "nginx: $UPGRADES binary upgrades under $RATE req/s"
under_load nginx-upgrade nginx_binary_upgrade
log "nginx: $UPGRADES reloads under $RATE req/s"
under_load nginx-reload nginx_reload
log "nginx: $UPGRADES restarts under $RATE req/s"
under_load nginx-restart nginx_restart
kill -QUIT "$(cat "$work/nginx/nginx.pid")" 2>/dev/null || true

# --- HAProxy -----------------------------------------------------------------
front=$(free_port)
haproxy_config "$front" "stats socket $work/haproxy.sock mode 600 level admin expose-fd listeners" \
  "$b1" "$b2" >"$work/haproxy.cfg"
haproxy_start() {
  "$HAPROXY" -W -db -f "$work/haproxy.cfg" >>"$work/haproxy.log" 2>&1 &
  haproxy_master=$!
  echo "$haproxy_master" >>"$work/haproxy.pids"
  wait_http "http://127.0.0.1:$front/sum?a=1&b=2"
}
haproxy_reload() { kill -USR2 "$haproxy_master"; }
haproxy_restart() {
  kill -USR1 "$haproxy_master"; wait_gone "$haproxy_master"
  haproxy_start
}
haproxy_start
log "haproxy: $UPGRADES reloads (expose-fd listeners) under $RATE req/s"
under_load haproxy-reload haproxy_reload
log "haproxy: $UPGRADES restarts under $RATE req/s"
under_load haproxy-restart haproxy_restart

python3 - "$work" "$RATE" "$UPGRADES" "$WORK_MS" "$LOAD_FLAGS" <<'EOF'
import json, sys
work, rate, n, work_ms, flags = sys.argv[1:6]
print(f"{n} proxy upgrades or restarts under {rate} req/s {flags or 'keep-alive'} (demo v3, /sum {work_ms} ms)")
print(f"  {'method':<22} {'requests':>9} {'ok':>9} {'failed':>7} {'dropped':>8}  failures by class")
for name, label in (
    ("dropless-upgrade", "dropless upgrade"),
    ("dropless-restart", "dropless restart"),
    ("nginx-upgrade", "nginx USR2 + QUIT"),
    ("nginx-reload", "nginx reload"),
    ("nginx-restart", "nginx restart"),
    ("haproxy-reload", "HAProxy reload (-x)"),
    ("haproxy-restart", "HAProxy restart"),
):
    r = json.load(open(f"{work}/{name}.json"))
    q = r["requests"]
    classes = ", ".join(f"{k} {v}" for k, v in r["failures"].items() if v) or "none"
    print(f"  {label:<22} {q['total']:>9} {q['ok']:>9} {q['failed']:>7} {r['dropped_iterations']:>8}  {classes}")
EOF
