#!/usr/bin/env bash
# Benchmark: instructions per proxied request, counted by callgrind: the
# `dropless serve` proxy against nginx and HAProxy, in user space.
#
# CPU time per request on this shared 2-CPU machine moves by ±7-15 % from
# one round to the next, more than most single changes to the proxy are
# worth. Instructions counted under valgrind's callgrind do not: two runs
# of the same binary agree within about 1 %. They are user-space
# instructions only (the kernel's share, the same system calls for every
# proxy, is not counted) and say nothing of cache misses; they tell
# whether a change made the proxy do less work, and where it does it
# (`callgrind_annotate` on the files this script keeps).
#
# For each protocol (PROTO, default "h2c h2 plain close tls": HTTP/2
# without TLS, HTTP/2 over TLS 1.3 by ALPN, HTTP/1.1 keep-alive, HTTP/1.1
# with a new connection per request, HTTP/1.1 keep-alive over TLS 1.3):
# one nginx backend answering
# `return 200 "ok";`, each proxy started under callgrind in front of it,
# 2 000 requests to warm it, its counters zeroed, N (default 20 000)
# requests by h2load (`-c50 -m10`, or `--h1 -m1` for HTTP/1.1, with
# `Connection: close` for close), its counters dumped. Prints instructions
# per request for each, and dropless's ratio to the best peer. PROXIES
# (default "dropless nginx haproxy") picks the proxies, e.g. `PROXIES=dropless`
# to compare two builds of dropless. VALGRIND_ARGS adds callgrind options,
# e.g. `--cache-sim=yes` to count simulated cache misses too
# (`callgrind_annotate` on the kept files shows them).
#
# FIELDS (default `same`): nginx and HAProxy add what dropless adds to
# each request, X-Forwarded-For, -Proto and -Host and an X-Request-Id made
# of a prefix and a counter that the response carries too (bench/lib.sh's
# haproxy_fields and nginx_fields), as in bench/proxy_vs_peers.sh; `FIELDS=none` leaves them at their defaults
# (they add nothing; the figures before session 18).
#
# Read large copies with care: valgrind counts a `rep movs`/`rep stos`
# once per byte or word moved, so a memset of 8 KiB shows as ~8 000
# instructions though the CPU does it in a few hundred cycles.
#
#   bench/proxy_instructions.sh                 # builds dropless --release
#   PROTO=h2c N=50000 bench/proxy_instructions.sh
#   DROPLESS=/path/to/dropless bench/proxy_instructions.sh   # a given build
#   PROXIES=dropless PROTO=tls DROPLESS=/path/to/dropless bench/proxy_instructions.sh
#
# Installs what is missing: valgrind, nginx, haproxy, nghttp2-client,
# openssl.
# Takes about 1-2 minutes per proxy and protocol. Files: target/bench-callgrind.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

N=${N:-20000}
FIELDS=${FIELDS:-same}
case $FIELDS in same|none) ;; *) echo "FIELDS: unknown value '$FIELDS'; use same or none" >&2; exit 2 ;; esac
# The prefix of the peers' request ids, fixed: the same count every run.
ID_PREFIX=8a8945f21f3f0361
PROTO=${PROTO:-h2c h2 plain close tls}
PROXIES=${PROXIES:-dropless nginx haproxy}
for p in $PROXIES; do
  case $p in dropless|nginx|haproxy) ;; *) echo "PROXIES: unknown proxy '$p'; use dropless, nginx, haproxy" >&2; exit 2 ;; esac
done
for p in $PROTO; do
  case $p in h2c|h2|plain|close|tls) ;; *) echo "PROTO: unknown protocol '$p'; use h2c, h2, plain, close, tls" >&2; exit 2 ;; esac
done
# is_tls PROTO: whether the protocol runs over TLS.
is_tls() { [ "$1" = h2 ] || [ "$1" = tls ]; }
need nginx haproxy h2load openssl
command -v valgrind >/dev/null || { log "installing valgrind"; apt_install valgrind; }
dropless_binary

work=$(mktemp -d)
out=${CARGO_TARGET_DIR:-target}/bench-callgrind
mkdir -p "$out"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

self_signed "$work/tls"
backend=$(free_port)
mkdir -p "$work/backend"
nginx_ok_conf "$work/backend" "$backend"
"$NGINX" -c "$work/backend/nginx.conf" -p "$work/backend" & pids+=($!)
wait_http "http://127.0.0.1:$backend/"

# command_of PROXY PROTO PORT: sets CMD to the proxy's command line, in
# front of the backend, listening on PORT.
command_of() {
  local proxy=$1 proto=$2 port=$3
  case "$proxy" in
    dropless)
      CMD=("$DROPLESS" serve --proxy-threads 2 --listen "127.0.0.1:$port" --state-dir "$work/state-$port"
        --control "$work/control-$port.sock" --health-path "" --target "127.0.0.1:$backend")
      if is_tls "$proto"; then
        CMD+=(--tls-cert "$work/tls/cert.pem" --tls-key "$work/tls/key.pem")
      fi
      ;;
    haproxy)
      local bind="  bind 127.0.0.1:$port"
      [ "$proto" = h2c ] && bind="$bind proto h2"
      is_tls "$proto" && bind="$bind ssl crt $work/tls/haproxy.pem alpn h2,http/1.1"
      [ "$FIELDS" = same ] && bind="$bind
$(haproxy_fields "$ID_PREFIX")"
      haproxy_config "$port" "" "$backend" \
        | to=$bind awk -v from="  bind 127.0.0.1:$port" '$0 == from { print ENVIRON["to"]; next } { print }' \
        >"$work/haproxy-$port.cfg"
      CMD=("$HAPROXY" -f "$work/haproxy-$port.cfg" -db) ;;
    nginx)
      local http2=""
      [ "$proto" = h2c ] && http2=" http2"
      [ "$proto" = h2 ] && http2=" ssl http2"
      [ "$proto" = tls ] && http2=" ssl"
      mkdir -p "$work/nginx-$port"
      local fields="" id_map=""
      if [ "$FIELDS" = same ]; then
        fields=$(nginx_fields)
        id_map=$(nginx_fields_map "$ID_PREFIX")
      fi
      cat >"$work/nginx-$port/nginx.conf" <<EOF
master_process off;
daemon off;
worker_processes 1;
pid $work/nginx-$port/nginx.pid;
error_log $work/nginx-$port/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  ssl_certificate $work/tls/cert.pem;
  ssl_certificate_key $work/tls/key.pem;
  ssl_protocols TLSv1.3;
  upstream back { server 127.0.0.1:$backend; keepalive 64; }
  $id_map
  server {
    listen 127.0.0.1:$port$http2;
    location / { proxy_pass http://back; proxy_http_version 1.1; proxy_set_header Connection "";
      $fields }
  }
}
EOF
      CMD=("$NGINX" -c "$work/nginx-$port/nginx.conf" -p "$work/nginx-$port") ;;
  esac
}

# measure PROXY PROTO: prints instructions per request.
measure() {
  local proxy=$1 proto=$2 port file flags vp total url
  port=$(free_port)
  url="http://127.0.0.1:$port/"
  is_tls "$proto" && url="https://127.0.0.1:$port/"
  file="$out/$proxy-$proto.out"
  rm -f "$file"*
  flags=(-c50 -m10)
  [ "$proto" = plain ] || [ "$proto" = tls ] && flags=(-c50 --h1 -m1)
  [ "$proto" = close ] && flags=(-c50 --h1 -m1 -H 'Connection: close')
  command_of "$proxy" "$proto" "$port"
  # shellcheck disable=SC2086
  valgrind --tool=callgrind ${VALGRIND_ARGS:-} --callgrind-out-file="$file" "${CMD[@]}" >"$out/$proxy-$proto.log" 2>&1 &
  vp=$!
  pids+=("$vp")
  for _ in $(seq 600); do
    curl -sk -o /dev/null "$url" --http2-prior-knowledge 2>/dev/null && break
    curl -sk -o /dev/null "$url" 2>/dev/null && break
    sleep 0.1
  done
  h2load "${flags[@]}" -n 2000 "$url" >/dev/null
  callgrind_control -z "$vp" >/dev/null
  local ok
  ok=$(h2load "${flags[@]}" -n "$N" "$url" | grep -oP '\d+(?= succeeded)')
  callgrind_control -d "$vp" >/dev/null
  kill "$vp"; wait "$vp" 2>/dev/null || true
  [ "$ok" = "$N" ] || { log "$proxy $proto: $ok of $N requests succeeded"; exit 1; }
  total=$(callgrind_annotate "$(ls "$file".* | sort -V | head -1)" 2>/dev/null \
    | grep -m1 'PROGRAM TOTALS' | awk '{gsub(",", "", $1); print $1}')
  echo $((total / N))
}

printf '| protocol | dropless | nginx | HAProxy | dropless / best peer |\n| --- | ---: | ---: | ---: | ---: |\n'
for proto in $PROTO; do
  declare -A ir=([dropless]=- [nginx]=- [haproxy]=-)
  for proxy in $PROXIES; do
    log "$proto: $proxy under callgrind, $N requests"
    measure "$proxy" "$proto" >"$work/ir"
    ir[$proxy]=$(cat "$work/ir")
  done
  ratio=-
  if [ "${ir[dropless]}" != - ] && [ "${ir[nginx]}" != - ] && [ "${ir[haproxy]}" != - ]; then
    best=$(( ir[nginx] < ir[haproxy] ? ir[nginx] : ir[haproxy] ))
    ratio=$(awk -v a="${ir[dropless]}" -v b="$best" 'BEGIN { printf "%.2f×", a / b }')
  fi
  case "$proto" in
    h2) label="h2 over TLS" ;;
    plain) label="plain HTTP/1.1 keep-alive" ;;
    close) label="plain HTTP/1.1 \`Connection: close\`" ;;
    tls) label="HTTPS HTTP/1.1 keep-alive" ;;
    *) label=$proto ;;
  esac
  printf '| %s | %s | %s | %s | %s |\n' "$label" "${ir[dropless]}" "${ir[nginx]}" "${ir[haproxy]}" "$ratio"
done
log "callgrind files in $out (callgrind_annotate FILE)"
