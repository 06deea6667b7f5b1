#!/usr/bin/env bash
# Benchmark: the `dropless serve` proxy against nginx and HAProxy.
#
# One backend, nginx answering `return 200 "ok";` (one worker), behind three
# proxies on 127.0.0.1, each with 2 worker threads/processes: dropless serve
# (--target, TCP probe, --proxy-threads 2), nginx (proxy_pass to an upstream with keepalive 64)
# and HAProxy (http-reuse always). wrk runs DURATION seconds with 50
# keep-alive connections through each (after a 2 s warm-up of each), in an
# order that rotates every round, ROUNDS rounds; the script
# prints the median requests/s, p99 and CPU time per request (user + system
# of the proxy's processes) of each, and the ratios.
# Then it opens IDLE (10 000, or fewer when the open-file limit does not
# allow them) keep-alive client connections to dropless, each after one
# request, and prints the RSS of `dropless serve`. dropless keeps
# `proxy.max_connections` to half of the descriptors left after its reserve
# for probes and replica starts (each client may hold an upstream socket
# too): with this machine's hard limit of 20 000, that is 9 808.
#
# Usage: bench/proxy_vs_peers.sh            (ROUNDS=3 DURATION=10 IDLE=10000)
# Installs what it needs: wrk, nginx, haproxy (apt).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
CONNECTIONS=50

. bench/lib.sh
need wrk nginx haproxy

log "building dropless (release)"
cargo build --release -q -p dropless
DROPLESS=${CARGO_TARGET_DIR:-target}/release/dropless

nice=""
[ "$(id -u)" = 0 ] && nice="nice -n -10"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
# What dropless accepts under this limit (256 kept, 2 x 64 control slots,
# half of the rest), less a margin; at most 10 000.
fits=$(( ($(ulimit -n) - 256 - 128) / 2 - 100 ))
IDLE=${IDLE:-$(( fits < 10000 ? fits : 10000 ))}

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -n "${KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT

backend=$(free_port); p_dropless=$(free_port); p_nginx=$(free_port); p_haproxy=$(free_port)

mkdir -p "$work/backend" "$work/nginx"
cat >"$work/backend/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $work/backend/nginx.pid;
error_log $work/backend/error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  keepalive_requests 100000000;
  server { listen 127.0.0.1:$backend; location / { return 200 "ok"; } }
}
EOF
cat >"$work/nginx/nginx.conf" <<EOF
worker_processes 2;
daemon off;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  keepalive_requests 100000000;
  upstream backend { server 127.0.0.1:$backend; keepalive 64; }
  server {
    listen 127.0.0.1:$p_nginx;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
    }
  }
}
EOF
cat >"$work/haproxy.cfg" <<EOF
global
  nbthread 2
  maxconn 8000
defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
  option forwardfor
  http-reuse always
frontend front
  bind 127.0.0.1:$p_haproxy
  default_backend back
backend back
  server b1 127.0.0.1:$backend
EOF

$nice "$NGINX" -c "$work/backend/nginx.conf" -p "$work/backend" & pids+=($!)
wait_http "http://127.0.0.1:$backend/"
$nice "$NGINX" -c "$work/nginx/nginx.conf" -p "$work/nginx" & nginx_pid=$!; pids+=($nginx_pid)
$nice "$HAPROXY" -f "$work/haproxy.cfg" -db >"$work/haproxy.log" 2>&1 & haproxy_pid=$!; pids+=($haproxy_pid)
RUST_LOG=warn $nice "$DROPLESS" serve --proxy-threads 2 --listen "127.0.0.1:$p_dropless" \
  --state-dir "$work/dropless" --control "$work/dropless.sock" --health-path "" \
  --target "127.0.0.1:$backend" 2>"$work/dropless.log" & dropless_pid=$!; pids+=($dropless_pid)
for p in $p_nginx $p_haproxy $p_dropless; do wait_http "http://127.0.0.1:$p/"; done

# wrk prints "Requests/sec: N" and, with --latency, "99% Xms|us|s".
run_wrk() {
  $nice wrk -t2 -c$CONNECTIONS -d"${DURATION}s" --latency "http://127.0.0.1:$1/" | awk '
    /requests in/ { n = $1 }
    /^Requests\/sec/ { rps = $2 }
    $1 == "99%" { v = $2; u = v; sub(/[0-9.]+/, "", u); sub(/[a-z]+$/, "", v);
                  if (u == "us") v /= 1000; else if (u == "s") v *= 1000; p99 = v }
    END { printf "%s %s %s\n", rps, p99, n }'
}
# CPU time (user + system, clock ticks) of a process and its children
# (nginx's workers); throughput on a shared 2-CPU machine is noisy, CPU time
# per request much less so.
cpu_ticks() {
  local total=0 p
  for p in "$1" $(pgrep -P "$1"); do
    total=$(( total + $(awk '{print $14 + $15}' "/proc/$p/stat") ))
  done
  echo "$total"
}

# Warm-up: every proxy fills its upstream pool and faults in its memory
# before the first measured round.
for name in dropless nginx haproxy; do
  port_var="p_$name"
  wrk -t2 -c$CONNECTIONS -d2s "http://127.0.0.1:${!port_var}/" >/dev/null
done

results="$work/results.txt"
order=(dropless nginx haproxy)
for round in $(seq "$ROUNDS"); do
  # The order rotates each round, so that no proxy always runs first (after
  # the idle gap) or last.
  for i in 0 1 2; do
    name=${order[$(( (i + round - 1) % 3 ))]}
    port_var="p_$name" pid_var="${name}_pid"
    before=$(cpu_ticks "${!pid_var}")
    read -r rps p99 n < <(run_wrk "${!port_var}")
    ticks=$(( $(cpu_ticks "${!pid_var}") - before ))
    us=$(python3 -c "import os; print(f'{$ticks / os.sysconf(\"SC_CLK_TCK\") * 1e6 / $n:.1f}')")
    echo "$name $rps $p99 $us" >>"$results"
    log "round $round/$ROUNDS: $name $rps req/s, p99 $p99 ms, $us us CPU/request"
  done
done

log "memory: $IDLE idle keep-alive connections to dropless"
rss_before=$(awk '/VmRSS/ {print $2}' /proc/$dropless_pid/status)
python3 - "$p_dropless" "$IDLE" "/proc/$dropless_pid/status" >"$work/idle.txt" <<'EOF'
import socket, sys
port, n, status = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
conns = []
req = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(req)
    data = b""
    while b"\r\n\r\nok" not in data:
        chunk = s.recv(4096)
        if not chunk:
            raise SystemExit(f"connection {i} closed")
        data += chunk
    conns.append(s)
rss = next(int(l.split()[1]) for l in open(status) if l.startswith("VmRSS"))
print(len(conns), rss)
EOF
read -r held rss_idle <"$work/idle.txt"

python3 - "$results" "$ROUNDS" "$DURATION" "$rss_before" "$held" "$rss_idle" <<'EOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
rounds, duration, rss_before, held, rss_idle = sys.argv[2:7]
med = {}
for name in ("dropless", "nginx", "haproxy"):
    rps = [float(r[1]) for r in rows if r[0] == name]
    p99 = [float(r[2]) for r in rows if r[0] == name]
    cpu = [float(r[3]) for r in rows if r[0] == name]
    med[name] = (statistics.median(rps), statistics.median(p99), rps, statistics.median(cpu))
print(f"wrk -t2 -c50, {rounds} rounds x {duration}s, backend nginx return 200 (1 worker), proxies 2 threads each")
print(f"  {'proxy':<9} {'median req/s':>13} {'median p99 ms':>14} {'CPU us/req':>11}   rounds")
for name, (rps, p99, all_rps, cpu) in med.items():
    print(f"  {name:<9} {rps:>13.0f} {p99:>14.2f} {cpu:>11.1f}   {' '.join(f'{x:.0f}' for x in all_rps)}")
d, n, h = med["dropless"], med["nginx"], med["haproxy"]
print(f"  CPU per request: dropless/nginx {d[3] / n[3]:.2f}x, dropless/haproxy {d[3] / h[3]:.2f}x")
print(f"  dropless/nginx throughput {d[0] / n[0]:.2f}x, p99 {d[1] / n[1]:.2f}x; "
      f"dropless/haproxy throughput {d[0] / h[0]:.2f}x, p99 {d[1] / h[1]:.2f}x")
print(f"memory: dropless serve RSS {int(rss_before) / 1024:.1f} MB idle, "
      f"{int(rss_idle) / 1024:.1f} MB holding {held} idle keep-alive client connections")
EOF
