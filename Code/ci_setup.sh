#!/bin/sh
# Machine preparation for the browser, Docker and document tests (run as root by Code/test.sh before pytest).
#
# Idempotent: installs Chromium, a Docker engine, debootstrap, LaTeX (texlive + latexmk), redis-server (the
# shared job queue tests), docker-compose (unless `docker compose` works) and Mesa's CPU Vulkan driver + LLVM's OpenMP
# runtime (the Real-ESRGAN ncnn peer) from Debian's archive, starts dockerd if it is not running, and builds local
# stand-ins for `python:3.11-slim` and `redis:7` (compose.yaml's queue) when Docker Hub is not reachable (as here),
# unless those images exist already. Whatever cannot be set up is reported in one line;
# under CI=true that is a failure (exit 1), elsewhere the tests that need it skip with the reason.
#
# Environment: CI_SETUP_LOG (default /tmp/ci_setup.log) gets the long command output.
set -u
LOG=${CI_SETUP_LOG:-/tmp/ci_setup.log}
say() { echo "ci_setup: $*"; }
# a setup step failed: fatal under CI (where every test must run), a warning elsewhere
fail() {
  say "$*"
  if [ "${CI:-}" = "true" ]; then say "CI=true: stopping"; exit 1; fi
}

if [ "$(id -u)" != "0" ]; then
  fail "not root: cannot install Chromium, Docker, LaTeX, redis-server and Vulkan (the tests that need them skip)"
  exit 0
fi

# --- packages ---------------------------------------------------------------------------------------------
need=""
command -v chromium >/dev/null 2>&1 || need="$need chromium chromium-driver"
command -v dockerd >/dev/null 2>&1 || need="$need docker.io"
command -v debootstrap >/dev/null 2>&1 || need="$need debootstrap"
command -v latexmk >/dev/null 2>&1 || need="$need texlive-latex-recommended texlive-latex-extra texlive-fonts-recommended latexmk"
command -v redis-server >/dev/null 2>&1 || need="$need redis-server"
has_compose() { docker compose version >/dev/null 2>&1 || docker-compose version >/dev/null 2>&1; }
has_compose || need="$need docker-compose"
has_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
has_pkg mesa-vulkan-drivers || need="$need mesa-vulkan-drivers"
has_pkg libomp5 || need="$need libomp5"
if [ -n "$need" ]; then
  say "installing$need (apt-get, output in $LOG)"
  if ! (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $need) >>"$LOG" 2>&1; then
    fail "apt-get could not install$need; see $LOG"
  fi
fi
command -v chromium >/dev/null 2>&1 && say "chromium: $(command -v chromium)" || fail "chromium: not available"
command -v latexmk >/dev/null 2>&1 && say "latexmk: $(command -v latexmk)" || fail "latexmk: not available"
command -v redis-server >/dev/null 2>&1 && say "redis-server: $(command -v redis-server)" || fail "redis-server: not available"
has_compose && say "compose: $(docker compose version --short 2>/dev/null || docker-compose version --short 2>/dev/null)" \
  || fail "neither \`docker compose\` nor docker-compose works (the compose test cannot run)"
has_pkg mesa-vulkan-drivers && has_pkg libomp5 && say "vulkan (Mesa llvmpipe) + libomp5: installed" \
  || fail "mesa-vulkan-drivers / libomp5: not available (the Real-ESRGAN peer cannot run)"

# --- docker engine ------------------------------------------------------------------------------------------
if ! command -v dockerd >/dev/null 2>&1; then
  fail "dockerd not available: the Docker tests cannot run"
  exit 0
fi
if ! docker info >/dev/null 2>&1; then
  say "starting dockerd (log /tmp/dockerd.log, pid in /tmp/dockerd.pid)"
  nohup dockerd >/tmp/dockerd.log 2>&1 &
  echo $! >/tmp/dockerd.pid
  i=0
  while ! docker info >/dev/null 2>&1; do
    i=$((i + 1))
    if [ $i -gt 60 ]; then fail "dockerd did not come up in 30 s; see /tmp/dockerd.log"; exit 0; fi
    sleep 0.5
  done
fi
say "docker engine: $(docker version --format '{{.Server.Version}}' 2>/dev/null)"

# --- local/debian:bookworm (the base of the local stand-ins below, imported once from Debian's archive) --------
debian_base() {
  docker image inspect local/debian:bookworm >/dev/null 2>&1 && return 0
  rootfs=$(mktemp -d /tmp/rootfs.XXXXXX)
  if ! command -v debootstrap >/dev/null 2>&1 || ! debootstrap --variant=minbase bookworm "$rootfs" http://deb.debian.org/debian >>"$LOG" 2>&1; then
    rm -rf "$rootfs"
    fail "debootstrap failed; see $LOG"
    return 1
  fi
  tar -C "$rootfs" -c . | docker import - local/debian:bookworm >>"$LOG" 2>&1
  rm -rf "$rootfs"
}

# --- python:3.11-slim (the real one when Docker Hub answers, else a local stand-in) ---------------------------
python_base() {
  if docker image inspect python:3.11-slim >/dev/null 2>&1; then
    say "python:3.11-slim present"
    return 0
  fi
  if timeout 60 docker pull python:3.11-slim >>"$LOG" 2>&1; then
    say "pulled python:3.11-slim from Docker Hub"
    return 0
  fi
  say "Docker Hub unreachable: building a local python:3.11-slim stand-in from Debian bookworm (~2 min, once)"
  debian_base || return 0
  base=$(mktemp -d /tmp/pybase.XXXXXX)
  mkdir -p "$base/ca"
  # the package proxies here intercept TLS with a CA the host trusts; the image must trust it too
  cp /usr/local/share/ca-certificates/*.crt "$base/ca/" 2>/dev/null || true
  cat >"$base/Dockerfile" <<'EOF'
FROM local/debian:bookworm
COPY ca/ /usr/local/share/ca-certificates/
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-pip python3-venv \
    python-is-python3 ca-certificates && rm -rf /var/lib/apt/lists/* && update-ca-certificates
ENV PIP_BREAK_SYSTEM_PACKAGES=1 PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
EOF
  if docker build -t python:3.11-slim "$base" >>"$LOG" 2>&1; then
    say "built the python:3.11-slim stand-in"
  else
    fail "could not build the python:3.11-slim stand-in; see $LOG"
  fi
  rm -rf "$base"
}

# --- redis:7 (compose.yaml's queue; the real one when Docker Hub answers, else Debian's redis-server) ----------
redis_base() {
  if docker image inspect redis:7 >/dev/null 2>&1; then
    say "redis:7 present"
    return 0
  fi
  if timeout 60 docker pull redis:7 >>"$LOG" 2>&1; then
    say "pulled redis:7 from Docker Hub"
    return 0
  fi
  say "Docker Hub unreachable: building a local redis:7 stand-in from Debian bookworm's redis-server (once)"
  debian_base || return 0
  base=$(mktemp -d /tmp/redisbase.XXXXXX)
  # like the official image (which builds Redis with protected mode off): reachable from the other containers,
  # also when compose.yaml's `command` (redis-server --save "" ...) replaces the default command; redis-cli (in
  # redis-tools) for compose.yaml's healthcheck
  cat >"$base/entrypoint.sh" <<'EOF'
#!/bin/sh
if [ "${1:-}" = "redis-server" ]; then
  case " $* " in *" --protected-mode "*) ;; *) set -- "$@" --protected-mode no ;; esac
  case " $* " in *" --bind "*) ;; *) set -- "$@" --bind 0.0.0.0 ;; esac
fi
exec "$@"
EOF
  cat >"$base/Dockerfile" <<'EOF'
FROM local/debian:bookworm
RUN apt-get update && apt-get install -y --no-install-recommends redis-server redis-tools \
    && rm -rf /var/lib/apt/lists/* && mkdir -p /data
COPY entrypoint.sh /usr/local/bin/redis-entrypoint.sh
RUN chmod 755 /usr/local/bin/redis-entrypoint.sh
WORKDIR /data
EXPOSE 6379
ENTRYPOINT ["/usr/local/bin/redis-entrypoint.sh"]
CMD ["redis-server", "--protected-mode", "no", "--bind", "0.0.0.0"]
EOF
  if docker build -t redis:7 "$base" >>"$LOG" 2>&1; then
    say "built the redis:7 stand-in"
  else
    fail "could not build the redis:7 stand-in; see $LOG"
  fi
  rm -rf "$base"
}

python_base
redis_base
exit 0
