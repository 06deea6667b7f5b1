# What the benchmark scripts share: logging, installing the peers.
# Source it after cd-ing to the repository root:  . bench/lib.sh

log() { printf '==> %s\n' "$*" >&2; }

sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"

# apt-get install, with one `apt-get update` and a retry when it fails.
apt_install() {
  if ! $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >&2; then
    $sudo apt-get update -q >&2
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >&2
  fi
}

# need TOOL...: installs each missing peer; sets NGINX and HAPROXY.
need() {
  local tool
  for tool in "$@"; do
    case "$tool" in
      wrk) command -v wrk >/dev/null || { log "installing wrk"; apt_install wrk; } ;;
      nginx) [ -x /usr/sbin/nginx ] || command -v nginx >/dev/null || { log "installing nginx"; apt_install nginx; } ;;
      haproxy) [ -x /usr/sbin/haproxy ] || command -v haproxy >/dev/null || { log "installing haproxy"; apt_install haproxy; } ;;
      oha) command -v oha >/dev/null || { log "installing oha (cargo install oha --locked)"; cargo install oha --locked >&2; } ;;
      *) log "unknown tool $tool"; return 1 ;;
    esac
  done
  NGINX=$(command -v nginx || echo /usr/sbin/nginx)
  HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)
}
