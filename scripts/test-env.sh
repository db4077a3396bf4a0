#!/usr/bin/env bash
# Idempotent test environment for oz-agent-worker.
#
#   scripts/test-env.sh [up]    install, generate, start and import whatever is missing
#   scripts/test-env.sh status  report what is up; exit non-zero if anything is missing
#   scripts/test-env.sh down    stop the daemons this script started (state is kept)
#   scripts/test-env.sh demo-images [SOCKET]
#                               only the demo task and agent images, in any daemon
#
# Brings up, on a Debian 12 machine as root without systemd:
#   - dockerd (20.10, API 1.41) on unix:///var/run/docker.sock and, with
#     --tlsverify, on tcp://127.0.0.1:2376
#   - podman's Docker-compatible service on unix:///run/podman/podman.sock
#   - a CNCF distribution registry with htpasswd auth on 127.0.0.1:5000
#   - test images (busybox, glibc, musl, agent sidecar) in both engines, and two
#     of them pushed to the registry
#   - an OpenSSH server on 127.0.0.1:2222 (keys generated under $OZ_TEST_ROOT/ssh)
#     whose `docker system dial-stdio` reaches that dockerd, so that
#     DOCKER_HOST=ssh://root@127.0.0.1:2222 works; /root/.ssh/config gets one
#     `Include` line (first) for the client side: port, key, known_hosts
#   - the daemon matrix, each in a container of that dockerd, built from
#     Debian packages, on a socket under $OZ_TEST_ROOT/daemons/NAME:
#     docker26 (Debian 13's Docker 26.1, API 1.45), docker28 (unstable's
#     Docker 28, API 1.51), podman5 (unstable's Podman 5), with the test
#     images loaded; a daemon that cannot come up is fatal only with CI=true
#   - an unprivileged system user, oz-agent-test, that the direct runtime's
#     tests run agents (backend.direct.user) and a non-root worker as
# and writes $OZ_TEST_ROOT/env, a sourceable file of `export VAR=value` lines.
# Every step checks before it acts, so a second `up` changes nothing.
set -euo pipefail

OZ_TEST_ROOT=${OZ_TEST_ROOT:-/var/lib/oz-worker-test}
REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

CERTS=$OZ_TEST_ROOT/certs
SERVER_CERTS=$CERTS/server
OTHER_CA_DIR=$CERTS/other-ca
CA_PRIVATE=$OZ_TEST_ROOT/ca-private
LOGS=$OZ_TEST_ROOT/logs
RUN=$OZ_TEST_ROOT/run
BUILD=$OZ_TEST_ROOT/build
REG_DIR=$OZ_TEST_ROOT/registry
ENV_FILE=$OZ_TEST_ROOT/env

DOCKER_SOCK=/var/run/docker.sock
DOCKER_HOST_URL=unix://$DOCKER_SOCK
TLS_ADDR=127.0.0.1:2376
TLS_HOST_URL=tcp://$TLS_ADDR
PODMAN_SOCK=/run/podman/podman.sock
PODMAN_HOST_URL=unix://$PODMAN_SOCK
REGISTRY=127.0.0.1:5000
REGISTRY_USER=oztest
REGISTRY_PASSWORD_FILE=$REG_DIR/password
CONTAINERS_CONF=/etc/containers/containers.conf
PODMAN_REGISTRIES_CONF=/etc/containers/registries.conf.d/50-oz-test.conf
ULIMITS_LINE='default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]'
SSH_DIR=$OZ_TEST_ROOT/ssh
SSH_ADDR=127.0.0.1
SSH_PORT=2222
SSH_USER=root
SSH_HOST_URL=ssh://$SSH_USER@$SSH_ADDR:$SSH_PORT
# An alias whose known_hosts holds a key that is not the server's (for the
# host key mismatch test).
SSH_WRONG_KEY_ALIAS=oz-test-wrong-hostkey
SSH_CLIENT_CONFIG=$SSH_DIR/client_config
ROOT_SSH_CONFIG=/root/.ssh/config
SSH_INCLUDE_LINE="Include $SSH_CLIENT_CONFIG"

IMG_BUSYBOX=oz-test/busybox:latest
IMG_GLIBC=oz-test/glibc:latest
IMG_MUSL=oz-test/musl:latest
IMG_SIDECAR=oz-test/agent-sidecar:latest
REG_IMG_BUSYBOX=$REGISTRY/oz/busybox:1
REG_IMG_SIDECAR=$REGISTRY/oz/agent-sidecar:1
SIDECAR_ENTRYPOINT=$REPO_DIR/tests/fixtures/agent-sidecar/entrypoint.sh
GLIBC_BINARY=/usr/bin/glibc-true
MUSL_BINARY=/usr/bin/musl-true

# Bump when the way an image is built changes, so `up` rebuilds it.
IMAGE_RECIPE_VERSION=1

# python3: the command runtime's example dispatcher (examples/command-backend)
# is tested; debootstrap: scripts/debian-image.sh (the daemon matrix, the
# container image test); systemd: systemd-analyze for tests/deploy/systemd_unit.rs;
# tinyproxy, stunnel4, microsocks: the outbound proxies tests/worker/proxy.rs
# starts.
PACKAGES=(curl ca-certificates openssl iptables docker.io podman busybox-static musl
  docker-registry apache2-utils openssh-server openssh-client python3 debootstrap systemd
  tinyproxy stunnel4 microsocks)
# Installed if the mirror has them and a C compiler is present (for a musl-linked binary).
OPTIONAL_PACKAGES=(musl-tools)

DOCKERD_TIMEOUT=${OZ_TEST_DOCKERD_TIMEOUT:-60}
SERVICE_TIMEOUT=${OZ_TEST_SERVICE_TIMEOUT:-30}

# ---------------------------------------------------------------------------
# helpers

# Temporary files and dirs removed on exit, whatever happens (the policy-rc.d
# guard, the temporary DOCKER_CONFIG holding registry credentials).
CLEANUP=()
cleanup() {
  local f
  for f in ${CLEANUP[@]+"${CLEANUP[@]}"}; do rm -rf "$f"; done
}
trap cleanup EXIT

log() { printf '[test-env] %s\n' "$*" >&2; }
die() {
  printf '[test-env] ERROR: %s\n' "$*" >&2
  exit 1
}

need_root() {
  [ "$(id -u)" -eq 0 ] || die "must run as root (it installs packages and starts daemons)"
}

pkg_installed() {
  [ "$(dpkg-query -W -f='${db:Status-Abbrev}' "$1" 2>/dev/null || true)" = "ii " ]
}

# ping SOCKET -> 0 if a Docker-compatible API answers OK on /_ping
ping_unix() {
  [ -S "$1" ] || return 1
  [ "$(curl -s --max-time 3 --unix-socket "$1" http://localhost/_ping 2>/dev/null || true)" = OK ]
}

ping_tls() {
  [ -s "$CERTS/ca.pem" ] && [ -s "$CERTS/cert.pem" ] && [ -s "$CERTS/key.pem" ] || return 1
  [ "$(curl -s --max-time 3 --cacert "$CERTS/ca.pem" --cert "$CERTS/cert.pem" \
    --key "$CERTS/key.pem" "https://$TLS_ADDR/_ping" 2>/dev/null || true)" = OK ]
}

registry_code() { # registry_code PATH [curl args...] -> HTTP status
  local path=$1
  shift
  curl -s --max-time 3 -o /dev/null -w '%{http_code}' "$@" "http://$REGISTRY$path" 2>/dev/null || true
}

registry_password() { cat "$REGISTRY_PASSWORD_FILE"; }

# is a pid alive and running the given program?
pid_runs() { # pid_runs PIDFILE NAME
  local pid
  [ -s "$1" ] || return 1
  pid=$(cat "$1")
  alive "$pid" || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$2"
}

# alive PID: running (not gone, not a zombie waiting to be reaped)
alive() {
  [ -r "/proc/$1/stat" ] || return 1
  [ "$(sed -E 's/^.*\) ([A-Za-z]).*$/\1/' "/proc/$1/stat" 2>/dev/null)" != Z ]
}

stop_pidfile() { # stop_pidfile PIDFILE NAME
  local pid
  if pid_runs "$1" "$2"; then
    pid=$(cat "$1")
    log "stopping $2 (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
      alive "$pid" || break
      sleep 0.2
    done
    if alive "$pid"; then
      log "$2 (pid $pid) did not stop in 20 s; sending KILL"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 0.5
    fi
  fi
  rm -f "$1"
}

wait_for() { # wait_for SECONDS LOGFILE WHAT CMD...  (WAIT_PIDFILE: give up early if it dies)
  local timeout=$1 logfile=$2 what=$3
  shift 3
  local deadline=$((SECONDS + timeout))
  while ! "$@"; do
    if [ -n "${WAIT_PIDFILE:-}" ] && [ -s "$WAIT_PIDFILE" ] && ! alive "$(cat "$WAIT_PIDFILE")"; then
      log "$what exited while starting; last lines of $logfile:"
      tail -n 30 "$logfile" >&2 || true
      die "$what failed to start (see $logfile)"
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "$what did not become ready within ${timeout}s; last lines of $logfile:"
      tail -n 30 "$logfile" >&2 || true
      die "$what failed to start (see $logfile)"
    fi
    sleep 0.2
  done
}

start_bg() { # start_bg LOGFILE PIDFILE CMD... (detached from this shell's session)
  local logfile=$1 pidfile=$2
  shift 2
  printf '\n==== %s: %s\n' "$(date -Is)" "$*" >>"$logfile"
  # Daemons run from the state directory, not from the repository: conmon
  # drops files (e.g. `oom`) into its working directory.
  setsid nohup env -C "$OZ_TEST_ROOT" "$@" </dev/null >>"$logfile" 2>&1 &
  echo $! >"$pidfile"
}

# ---------------------------------------------------------------------------
# 1. packages

ensure_packages() {
  local missing=() optional=() p
  for p in "${PACKAGES[@]}"; do
    pkg_installed "$p" || missing+=("$p")
  done
  if command -v gcc >/dev/null 2>&1; then
    for p in "${OPTIONAL_PACKAGES[@]}"; do
      pkg_installed "$p" || optional+=("$p")
    done
  fi
  [ ${#missing[@]} -eq 0 ] && [ ${#optional[@]} -eq 0 ] && return 0

  export DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1
  # Keep maintainer scripts from starting a dockerd/registry of their own
  # (it would hold the socket without the TLS port).
  local policy=/usr/sbin/policy-rc.d created_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    created_policy=1
    CLEANUP+=("$policy")
  fi
  local rc=0 updated=0
  # Update the package lists first only if the mirror's lists do not know a package.
  for p in ${missing[@]+"${missing[@]}"}; do
    if ! apt-cache show --no-all-versions "$p" >/dev/null 2>&1; then
      log "package lists do not know $p; running apt-get update"
      apt-get update -q >&2 || die "apt-get update failed"
      updated=1
      break
    fi
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing: ${missing[*]}"
    if ! apt-get install -y -q "${missing[@]}" >&2; then
      [ $updated -eq 0 ] || die "could not install: ${missing[*]}"
      log "install failed (stale package lists?); running apt-get update and retrying"
      apt-get update -q >&2 && apt-get install -y -q "${missing[@]}" >&2 || rc=1
    fi
  fi
  if [ $rc -eq 0 ]; then
    for p in ${optional[@]+"${optional[@]}"}; do
      if apt-cache show --no-all-versions "$p" >/dev/null 2>&1; then
        log "installing optional: $p"
        apt-get install -y -q "$p" >&2 || log "optional package $p not installed (continuing without it)"
      fi
    done
  fi
  [ $created_policy -eq 1 ] && rm -f "$policy"
  [ $rc -eq 0 ] || die "could not install: ${missing[*]}"
}

# ---------------------------------------------------------------------------
# 2. certificates

certs_valid() {
  local f
  for f in "$CERTS/ca.pem" "$CERTS/cert.pem" "$CERTS/key.pem" "$SERVER_CERTS/server-cert.pem" \
    "$SERVER_CERTS/server-key.pem" "$OTHER_CA_DIR/ca.pem" "$OTHER_CA_DIR/cert.pem" \
    "$OTHER_CA_DIR/key.pem"; do
    [ -s "$f" ] || return 1
  done
  openssl verify -CAfile "$CERTS/ca.pem" "$CERTS/cert.pem" "$SERVER_CERTS/server-cert.pem" \
    >/dev/null 2>&1 || return 1
  openssl verify -CAfile "$OTHER_CA_DIR/ca.pem" "$OTHER_CA_DIR/cert.pem" >/dev/null 2>&1 || return 1
  # still valid for at least a day
  openssl x509 -checkend 86400 -noout -in "$SERVER_CERTS/server-cert.pem" >/dev/null 2>&1
}

# make_ca KEYFILE CERTFILE CN
make_ca() {
  openssl req -x509 -new -newkey rsa:2048 -nodes -sha256 -days 3650 \
    -keyout "$1" -out "$2" -subj "/CN=$3" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -addext "subjectKeyIdentifier=hash" 2>/dev/null
  chmod 600 "$1"
  chmod 644 "$2"
}

# make_leaf CAKEY CACERT KEYFILE CERTFILE CN EXTENSIONS
make_leaf() {
  local tmp
  tmp=$(mktemp -d)
  openssl req -new -newkey rsa:2048 -nodes -sha256 -keyout "$3" -out "$tmp/req.csr" \
    -subj "/CN=$5" 2>/dev/null
  printf '%s\n' "$6" >"$tmp/ext.cnf"
  openssl x509 -req -in "$tmp/req.csr" -CA "$2" -CAkey "$1" -CAcreateserial \
    -CAserial "$tmp/ca.srl" -out "$4" -days 3650 -sha256 -extfile "$tmp/ext.cnf" 2>/dev/null
  rm -rf "$tmp"
  chmod 600 "$3"
  chmod 644 "$4"
}

ensure_certs() {
  if certs_valid; then return 0; fi
  log "generating test certificates in $CERTS"
  mkdir -p "$CERTS" "$SERVER_CERTS" "$OTHER_CA_DIR" "$CA_PRIVATE"
  chmod 755 "$CERTS" "$SERVER_CERTS" "$OTHER_CA_DIR"
  chmod 700 "$CA_PRIVATE"
  rm -f "$CERTS"/{ca,cert,key}.pem "$SERVER_CERTS"/server-{cert,key}.pem \
    "$OTHER_CA_DIR"/{ca,ca-key,cert,key}.pem "$CA_PRIVATE/ca-key.pem"
  local server_ext client_ext
  server_ext='basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,IP:127.0.0.1'
  client_ext='basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth'
  make_ca "$CA_PRIVATE/ca-key.pem" "$CERTS/ca.pem" "oz-worker-test CA"
  make_leaf "$CA_PRIVATE/ca-key.pem" "$CERTS/ca.pem" "$SERVER_CERTS/server-key.pem" \
    "$SERVER_CERTS/server-cert.pem" localhost "$server_ext"
  make_leaf "$CA_PRIVATE/ca-key.pem" "$CERTS/ca.pem" "$CERTS/key.pem" "$CERTS/cert.pem" \
    oz-worker-test-client "$client_ext"
  # An unrelated CA (for "wrong CA" tests), with a client cert of its own so the
  # directory is also a complete DOCKER_CERT_PATH that the daemon must refuse.
  make_ca "$OTHER_CA_DIR/ca-key.pem" "$OTHER_CA_DIR/ca.pem" "oz-worker-test OTHER CA"
  make_leaf "$OTHER_CA_DIR/ca-key.pem" "$OTHER_CA_DIR/ca.pem" "$OTHER_CA_DIR/key.pem" \
    "$OTHER_CA_DIR/cert.pem" oz-worker-test-other-client "$client_ext"
  certs_valid || die "generated certificates do not verify"
}

# ---------------------------------------------------------------------------
# 3. dockerd

dockerd_ours() { pid_runs "$RUN/dockerd.pid" dockerd; }

start_dockerd() {
  log "starting dockerd (unix socket + TLS on $TLS_ADDR)"
  start_bg "$LOGS/dockerd.log" "$RUN/dockerd.pid" dockerd \
    -H "$DOCKER_HOST_URL" -H "$TLS_HOST_URL" --tlsverify \
    --tlscacert "$CERTS/ca.pem" --tlscert "$SERVER_CERTS/server-cert.pem" \
    --tlskey "$SERVER_CERTS/server-key.pem"
  WAIT_PIDFILE=$RUN/dockerd.pid wait_for "$DOCKERD_TIMEOUT" "$LOGS/dockerd.log" dockerd ping_unix "$DOCKER_SOCK"
  WAIT_PIDFILE=$RUN/dockerd.pid wait_for "$DOCKERD_TIMEOUT" "$LOGS/dockerd.log" "dockerd TLS endpoint" ping_tls
  # the pid of the daemon itself (setsid may or may not have forked)
  [ -s /var/run/docker.pid ] && cp /var/run/docker.pid "$RUN/dockerd.pid"
  return 0
}

ensure_dockerd() {
  if ping_unix "$DOCKER_SOCK"; then
    ping_tls && return 0
    if dockerd_ours; then
      log "our dockerd answers on the unix socket but not on TLS $TLS_ADDR (certificates changed?); restarting it"
      stop_pidfile "$RUN/dockerd.pid" dockerd
    else
      local pid
      pid=$(cat /var/run/docker.pid 2>/dev/null || echo '?')
      die "a dockerd (pid $pid) not started by this script is running on $DOCKER_SOCK but does not serve TLS on $TLS_ADDR with the certificates in $CERTS.
  Not touching it. Stop it yourself (kill $pid) and rerun, so that this script can start
  dockerd -H $DOCKER_HOST_URL -H $TLS_HOST_URL --tlsverify ..."
    fi
  elif [ -s /var/run/docker.pid ] && alive "$(cat /var/run/docker.pid)"; then
    die "a dockerd (pid $(cat /var/run/docker.pid)) is running but does not answer on $DOCKER_SOCK; not touching it"
  elif [ -e /var/run/docker.pid ]; then
    # Left by a dockerd that was killed (e.g. with the session that started
    # it): dockerd refuses to start while it exists.
    log "removing the stale /var/run/docker.pid of a dockerd that is gone"
    rm -f /var/run/docker.pid
  fi
  start_dockerd
}

# ---------------------------------------------------------------------------
# 4. podman

# Prints "changed" if it wrote the file.
ensure_containers_conf() {
  mkdir -p /etc/containers
  if [ ! -e "$CONTAINERS_CONF" ]; then
    printf '# Written by oz-agent-worker scripts/test-env.sh: the VM lacks CAP_SYS_RESOURCE,\n# so podman must not raise nofile/nproc above these limits.\n[containers]\n%s\n' \
      "$ULIMITS_LINE" >"$CONTAINERS_CONF"
    echo changed
    return 0
  fi
  if grep -qxF "$ULIMITS_LINE" "$CONTAINERS_CONF"; then return 0; fi
  local tmp
  tmp=$(mktemp)
  if grep -qE '^[[:space:]]*default_ulimits[[:space:]]*=' "$CONTAINERS_CONF"; then
    # replace the existing setting (single-line form)
    sed -E "s|^[[:space:]]*default_ulimits[[:space:]]*=.*$|$ULIMITS_LINE|" "$CONTAINERS_CONF" >"$tmp"
  elif grep -qE '^[[:space:]]*\[containers\][[:space:]]*$' "$CONTAINERS_CONF"; then
    awk -v line="$ULIMITS_LINE" '{ print } /^[[:space:]]*\[containers\][[:space:]]*$/ && !done { print line; done = 1 }' \
      "$CONTAINERS_CONF" >"$tmp"
  else
    { cat "$CONTAINERS_CONF"; printf '\n[containers]\n%s\n' "$ULIMITS_LINE"; } >"$tmp"
  fi
  cp "$CONTAINERS_CONF" "$CONTAINERS_CONF.bak-oz-test"
  cat "$tmp" >"$CONTAINERS_CONF"
  rm -f "$tmp"
  log "updated $CONTAINERS_CONF (backup: $CONTAINERS_CONF.bak-oz-test)"
  echo changed
}

# Lets podman pull from the plain-HTTP test registry.
ensure_podman_registries_conf() {
  local want
  want=$(printf '# Written by oz-agent-worker scripts/test-env.sh: the local test registry speaks plain HTTP.\n[[registry]]\nlocation = "%s"\ninsecure = true\n' "$REGISTRY")
  if [ -f "$PODMAN_REGISTRIES_CONF" ] && [ "$(cat "$PODMAN_REGISTRIES_CONF")" = "$want" ]; then return 0; fi
  mkdir -p "$(dirname "$PODMAN_REGISTRIES_CONF")"
  printf '%s\n' "$want" >"$PODMAN_REGISTRIES_CONF"
  echo changed
}

ensure_podman() {
  local changed
  changed=$(ensure_containers_conf)$(ensure_podman_registries_conf)
  if ping_unix "$PODMAN_SOCK"; then
    [ -z "$changed" ] && return 0
    if pid_runs "$RUN/podman.pid" podman; then
      log "podman configuration changed; restarting our podman service"
      stop_pidfile "$RUN/podman.pid" podman
    else
      log "WARNING: podman configuration changed but the podman service on $PODMAN_SOCK was not started by this script; restart it yourself to apply it"
      return 0
    fi
  fi
  log "starting podman system service on $PODMAN_SOCK"
  mkdir -p "$(dirname "$PODMAN_SOCK")"
  rm -f "$PODMAN_SOCK"
  start_bg "$LOGS/podman.log" "$RUN/podman.pid" podman system service --time=0 "$PODMAN_HOST_URL"
  wait_for "$SERVICE_TIMEOUT" "$LOGS/podman.log" "podman service" ping_unix "$PODMAN_SOCK"
}

# ---------------------------------------------------------------------------
# 5. registry

ensure_registry_files() {
  mkdir -p "$REG_DIR/data"
  chmod 700 "$REG_DIR"
  local changed=
  if [ ! -s "$REGISTRY_PASSWORD_FILE" ]; then
    (umask 077 && openssl rand -hex 16 >"$REGISTRY_PASSWORD_FILE")
    changed=1
  fi
  chmod 600 "$REGISTRY_PASSWORD_FILE"
  if [ ! -s "$REG_DIR/htpasswd" ] ||
    ! htpasswd -vb "$REG_DIR/htpasswd" "$REGISTRY_USER" "$(registry_password)" >/dev/null 2>&1; then
    (umask 077 && htpasswd -Bbn "$REGISTRY_USER" "$(registry_password)" >"$REG_DIR/htpasswd")
    changed=1
  fi
  local want
  want="# Written by oz-agent-worker scripts/test-env.sh
version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: $REG_DIR/data
  delete:
    enabled: true
http:
  addr: $REGISTRY
auth:
  htpasswd:
    realm: oz-test-registry
    path: $REG_DIR/htpasswd"
  if [ ! -f "$REG_DIR/config.yml" ] || [ "$(cat "$REG_DIR/config.yml")" != "$want" ]; then
    printf '%s\n' "$want" >"$REG_DIR/config.yml"
    changed=1
  fi
  echo "$changed"
}

registry_answers() { [ "$(registry_code /v2/)" != 000 ]; }

registry_ok() {
  [ "$(registry_code /v2/)" = 401 ] &&
    [ "$(registry_code /v2/ -u "$REGISTRY_USER:$(registry_password)")" = 200 ]
}

ensure_registry() {
  local changed code
  changed=$(ensure_registry_files)
  code=$(registry_code /v2/)
  if [ "$code" != 000 ]; then
    if [ -z "$changed" ] && registry_ok; then return 0; fi
    if pid_runs "$RUN/registry.pid" docker-registry; then
      log "registry configuration changed; restarting our registry"
      stop_pidfile "$RUN/registry.pid" docker-registry
    else
      die "something not started by this script answers on $REGISTRY (GET /v2/ -> $code) but does not accept $REGISTRY_USER's password / demand auth; not touching it"
    fi
  fi
  log "starting registry on $REGISTRY"
  start_bg "$LOGS/registry.log" "$RUN/registry.pid" docker-registry serve "$REG_DIR/config.yml"
  wait_for "$SERVICE_TIMEOUT" "$LOGS/registry.log" registry registry_answers
  code=$(registry_code /v2/)
  [ "$code" = 401 ] || die "registry: unauthenticated GET /v2/ gave $code, expected 401"
  registry_ok || die "registry: authenticated GET /v2/ failed"
}

# ---------------------------------------------------------------------------
# 6. images

# fingerprint NAME -> a string that changes whenever the image's recipe or inputs change
fingerprint() {
  case $1 in
  sidecar) printf 'v%s-%s' "$IMAGE_RECIPE_VERSION" "$(sha256sum <"$SIDECAR_ENTRYPOINT" | cut -c1-16)" ;;
  musl) printf 'v%s-%s' "$IMAGE_RECIPE_VERSION" "$(command -v musl-gcc >/dev/null 2>&1 && echo bin || echo loader)" ;;
  *) printf 'v%s' "$IMAGE_RECIPE_VERSION" ;;
  esac
}

# image_present SOCKET IMAGE FINGERPRINT
image_present() {
  local json
  json=$(curl -sf --max-time 10 --unix-socket "$1" "http://localhost/images/$2/json" 2>/dev/null) || return 1
  grep -qF "\"oz-test.fingerprint\":\"$3\"" <<<"$json"
}

add_busybox() { # add_busybox ROOTFS
  local root=$1 applet
  mkdir -p "$root/bin" "$root/tmp" "$root/etc" "$root/root"
  chmod 1777 "$root/tmp"
  cp /bin/busybox "$root/bin/busybox"
  for applet in $(/bin/busybox --list); do
    [ "$applet" = busybox ] && continue
    [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$root/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
}

build_rootfs() { # build_rootfs KIND ROOTFS
  local kind=$1 root=$2
  case $kind in
  busybox) add_busybox "$root" ;;
  glibc)
    add_busybox "$root"
    mkdir -p "$root/usr/bin"
    cp /usr/bin/true "$root$GLIBC_BINARY"
    local lib
    for lib in $(ldd /usr/bin/true | grep -oE '/[^ ]+'); do
      mkdir -p "$root$(dirname "$lib")"
      cp -L "$lib" "$root$lib"
    done
    [ -e "$root/lib64/ld-linux-x86-64.so.2" ] || die "glibc image: no /lib64/ld-linux-x86-64.so.2"
    ;;
  musl)
    add_busybox "$root"
    mkdir -p "$root/lib"
    cp -L /lib/ld-musl-x86_64.so.1 "$root/lib/ld-musl-x86_64.so.1"
    if command -v musl-gcc >/dev/null 2>&1; then
      mkdir -p "$root/usr/bin"
      printf 'int main(void){return 0;}\n' >"$BUILD/musl-true.c"
      musl-gcc -O2 -o "$root$MUSL_BINARY" "$BUILD/musl-true.c" ||
        die "musl-gcc failed"
    fi
    ;;
  sidecar)
    cp "$SIDECAR_ENTRYPOINT" "$root/entrypoint.sh"
    chmod 755 "$root/entrypoint.sh"
    ;;
  esac
}

urlencode() { # minimal: what Dockerfile change lines need
  local s=$1
  s=${s//%/%25}; s=${s// /%20}; s=${s//=/%3D}; s=${s//\//%2F}; s=${s//:/%3A}
  s=${s//\"/%22}; s=${s//,/%2C}; s=${s//[/%5B}; s=${s//]/%5D}
  printf '%s' "$s"
}

# import SOCKET IMAGE TARFILE PATHVALUE FINGERPRINT
import_image() {
  local sock=$1 image=$2 tarfile=$3 path=$4 fp=$5
  local repo=${image%:*} tag=${image##*:} q out
  q="fromSrc=-&repo=$repo&tag=$tag&changes=$(urlencode "LABEL oz-test.fingerprint=$fp")"
  [ -n "$path" ] && q="$q&changes=$(urlencode "ENV PATH=$path")"
  out=$(curl -sS --max-time 300 --unix-socket "$sock" -X POST -H 'Content-Type: application/x-tar' \
    --data-binary "@$tarfile" "http://localhost/images/create?$q" 2>&1) ||
    die "importing $image into $sock failed: $out"
  if grep -q '"error' <<<"$out"; then die "importing $image into $sock failed: $out"; fi
  image_present "$sock" "$image" "$fp" || die "imported $image into $sock but it is not there: $out"
}

ensure_image() { # ensure_image KIND IMAGE PATHVALUE [SOCKET...] (default: both engines)
  local kind=$1 image=$2 path=$3 fp sock need=() tarfile root socks
  shift 3
  socks=("$@")
  [ ${#socks[@]} -eq 0 ] && socks=("$DOCKER_SOCK" "$PODMAN_SOCK")
  fp=$(fingerprint "$kind")
  for sock in "${socks[@]}"; do
    image_present "$sock" "$image" "$fp" || need+=("$sock")
  done
  [ ${#need[@]} -eq 0 ] && return 0
  root=$BUILD/$kind
  tarfile=$BUILD/$kind.tar
  rm -rf "$root" "$tarfile"
  mkdir -p "$root"
  build_rootfs "$kind" "$root"
  tar -C "$root" --numeric-owner --owner=0 --group=0 -cf "$tarfile" .
  for sock in "${need[@]}"; do
    [ "$sock" = "$DOCKER_SOCK" ] && REIMPORTED+=("$image")
    log "importing $image into $sock"
    import_image "$sock" "$image" "$tarfile" "$path" "$fp"
  done
  rm -rf "$root" "$tarfile"
}

# Images (re)imported into dockerd by this run: their registry copies are pushed again.
REIMPORTED=()

ensure_images() {
  mkdir -p "$BUILD"
  [ -f "$SIDECAR_ENTRYPOINT" ] || die "missing $SIDECAR_ENTRYPOINT"
  ensure_image busybox "$IMG_BUSYBOX" /bin
  ensure_image glibc "$IMG_GLIBC" /bin:/usr/bin
  ensure_image musl "$IMG_MUSL" /bin
  ensure_image sidecar "$IMG_SIDECAR" ""
}

# registry_has REPO TAG
registry_has() {
  [ "$(registry_code "/v2/$1/manifests/$2" -u "$REGISTRY_USER:$(registry_password)" \
    -H 'Accept: application/vnd.docker.distribution.manifest.v2+json')" = 200 ]
}

ensure_registry_images() {
  local pairs=("$IMG_BUSYBOX=$REG_IMG_BUSYBOX" "$IMG_SIDECAR=$REG_IMG_SIDECAR") pair todo=()
  for pair in "${pairs[@]}"; do
    local ref=${pair#*=}
    local path=${ref#"$REGISTRY"/}
    if ! registry_has "${path%:*}" "${path##*:}" ||
      printf '%s\n' ${REIMPORTED[@]+"${REIMPORTED[@]}"} | grep -qxF "${pair%%=*}"; then
      todo+=("$pair")
    fi
  done
  [ ${#todo[@]} -eq 0 ] && return 0
  local cfg
  cfg=$(mktemp -d)
  CLEANUP+=("$cfg")
  local -a dk=(env -u DOCKER_CONTEXT -u DOCKER_TLS_VERIFY -u DOCKER_CERT_PATH DOCKER_CONFIG="$cfg"
    DOCKER_HOST="$DOCKER_HOST_URL" DOCKER_API_VERSION=1.41 docker)
  registry_password | "${dk[@]}" login -u "$REGISTRY_USER" --password-stdin "$REGISTRY" >/dev/null 2>&1 ||
    die "docker login to $REGISTRY failed"
  for pair in "${todo[@]}"; do
    local src=${pair%%=*} dst=${pair#*=}
    log "pushing $src to $dst"
    "${dk[@]}" tag "$src" "$dst"
    "${dk[@]}" push "$dst" >"$LOGS/push.log" 2>&1 || {
      cat "$LOGS/push.log" >&2
      die "push of $dst failed"
    }
    # untag locally so that tests pulling it really pull
    "${dk[@]}" rmi "$dst" >/dev/null
  done
  "${dk[@]}" logout "$REGISTRY" >/dev/null 2>&1 || true
  rm -rf "$cfg"
}

# ---------------------------------------------------------------------------
# 7. sshd (DOCKER_HOST=ssh://): the remote side runs `docker system dial-stdio`
# (the Docker CLI on root's PATH) against the dockerd above.

# ssh_keypair FILE -> generates FILE and FILE.pub (ed25519) if missing
ssh_keypair() {
  [ -s "$1" ] && [ -s "$1.pub" ] && return 0
  rm -f "$1" "$1.pub"
  ssh-keygen -q -t ed25519 -N '' -C "oz-worker-test $(basename "$1")" -f "$1" >/dev/null
  echo changed
}

# write_if_changed FILE MODE CONTENT -> prints "changed" if it wrote FILE
write_if_changed() {
  if [ -f "$1" ] && [ "$(cat "$1")" = "$3" ] && [ "$(stat -c %a "$1")" = "$2" ]; then return 0; fi
  printf '%s\n' "$3" >"$1.tmp"
  chmod "$2" "$1.tmp"
  mv "$1.tmp" "$1"
  echo changed
}

ensure_ssh_files() {
  local changed=
  mkdir -p "$SSH_DIR"
  chmod 700 "$SSH_DIR"
  changed+=$(ssh_keypair "$SSH_DIR/ssh_host_ed25519_key")
  changed+=$(ssh_keypair "$SSH_DIR/client_ed25519")
  # Only for the known_hosts of the "wrong host key" alias: never served.
  changed+=$(ssh_keypair "$SSH_DIR/other_host_ed25519_key")
  changed+=$(write_if_changed "$SSH_DIR/authorized_keys" 600 "$(cat "$SSH_DIR/client_ed25519.pub")")
  changed+=$(write_if_changed "$SSH_DIR/known_hosts" 644 \
    "[$SSH_ADDR]:$SSH_PORT $(cut -d' ' -f1,2 "$SSH_DIR/ssh_host_ed25519_key.pub")")
  changed+=$(write_if_changed "$SSH_DIR/known_hosts_wrong" 644 \
    "[$SSH_ADDR]:$SSH_PORT $(cut -d' ' -f1,2 "$SSH_DIR/other_host_ed25519_key.pub")")
  # DOCKER_HOST pins the remote side to the test dockerd, whatever root's
  # ~/.docker says (the Docker CLI 28 negotiates down to dockerd 20.10's API
  # 1.41 by itself, so DOCKER_API_VERSION is not needed).
  changed+=$(write_if_changed "$SSH_DIR/sshd_config" 644 "# Written by oz-agent-worker scripts/test-env.sh
ListenAddress $SSH_ADDR:$SSH_PORT
HostKey $SSH_DIR/ssh_host_ed25519_key
PidFile $RUN/sshd.pid
PermitRootLogin prohibit-password
PubkeyAuthentication yes
AuthorizedKeysFile $SSH_DIR/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
X11Forwarding no
PrintMotd no
SetEnv DOCKER_HOST=$DOCKER_HOST_URL")
  write_if_changed "$SSH_CLIENT_CONFIG" 644 "# Written by oz-agent-worker scripts/test-env.sh; included first by $ROOT_SSH_CONFIG
Host $SSH_ADDR
  Port $SSH_PORT
  IdentityFile $SSH_DIR/client_ed25519
  IdentitiesOnly yes
  UserKnownHostsFile $SSH_DIR/known_hosts
  StrictHostKeyChecking yes

Host $SSH_WRONG_KEY_ALIAS
  HostName $SSH_ADDR
  Port $SSH_PORT
  IdentityFile $SSH_DIR/client_ed25519
  IdentitiesOnly yes
  UserKnownHostsFile $SSH_DIR/known_hosts_wrong
  StrictHostKeyChecking yes" >/dev/null
  echo "$changed"
}

# One `Include` line at the top of /root/.ssh/config (ssh takes the first
# value it finds for an option, so it must come before anything else).
ensure_root_ssh_config() {
  mkdir -p "$(dirname "$ROOT_SSH_CONFIG")"
  chmod 700 "$(dirname "$ROOT_SSH_CONFIG")"
  if [ ! -e "$ROOT_SSH_CONFIG" ]; then
    (umask 077 && : >"$ROOT_SSH_CONFIG")
  fi
  if [ "$(head -n 1 "$ROOT_SSH_CONFIG")" = "$SSH_INCLUDE_LINE" ] &&
    [ "$(grep -cxF "$SSH_INCLUDE_LINE" "$ROOT_SSH_CONFIG")" = 1 ]; then
    return 0
  fi
  local tmp
  tmp=$(mktemp)
  { printf '%s\n' "$SSH_INCLUDE_LINE"; grep -vxF "$SSH_INCLUDE_LINE" "$ROOT_SSH_CONFIG" || true; } >"$tmp"
  cat "$tmp" >"$ROOT_SSH_CONFIG"
  rm -f "$tmp"
  log "added '$SSH_INCLUDE_LINE' as the first line of $ROOT_SSH_CONFIG"
}

# A plain `ssh` (no extra flags) logs in and runs a command.
ssh_ok() {
  ssh -T -o BatchMode=yes -o ConnectTimeout=3 "$SSH_USER@$SSH_ADDR" -p "$SSH_PORT" true </dev/null >/dev/null 2>&1
}

# ... and `docker system dial-stdio` there answers GET /_ping.
ssh_dial_stdio_ok() {
  printf 'GET /_ping HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n' |
    timeout 20 ssh -T -o BatchMode=yes -o ConnectTimeout=3 "$SSH_USER@$SSH_ADDR" -p "$SSH_PORT" \
      docker system dial-stdio 2>/dev/null | grep -q '^HTTP/1.1 200'
}

sshd_listens() { (exec 3<>"/dev/tcp/$SSH_ADDR/$SSH_PORT") 2>/dev/null; }

ensure_sshd() {
  local changed
  changed=$(ensure_ssh_files)
  ensure_root_ssh_config
  # privilege separation directory (tmpfs: gone after a reboot)
  mkdir -p /run/sshd
  chmod 755 /run/sshd
  if sshd_listens; then
    if [ -z "$changed" ] && ssh_ok; then
      ssh_dial_stdio_ok || die "ssh to $SSH_HOST_URL works, but \`docker system dial-stdio\` there does not answer GET /_ping (see $LOGS/sshd.log)"
      return 0
    fi
    if pid_runs "$RUN/sshd.pid" sshd; then
      log "sshd configuration or keys changed; restarting our sshd"
      stop_pidfile "$RUN/sshd.pid" sshd
  if ping_unix "$DOCKER_SOCK"; then
    local entry name
    for entry in "${MATRIX[@]}"; do
      read -r name _ <<<"$entry"
      if host_docker inspect "$(matrix_container "$name")" >/dev/null 2>&1; then
        log "removing $name's container $(matrix_container "$name")"
      fi
      matrix_remove "$name"
    done
  fi
    else
      die "something not started by this script listens on $SSH_ADDR:$SSH_PORT and does not accept the test key; not touching it"
    fi
  fi
  /usr/sbin/sshd -t -f "$SSH_DIR/sshd_config" || die "sshd rejects $SSH_DIR/sshd_config"
  log "starting sshd on $SSH_ADDR:$SSH_PORT"
  # -D: stay in the foreground (start_bg detaches it); -e: log to the log file.
  start_bg "$LOGS/sshd.log" "$RUN/sshd.pid" /usr/sbin/sshd -D -e -f "$SSH_DIR/sshd_config"
  WAIT_PIDFILE=$RUN/sshd.pid wait_for "$SERVICE_TIMEOUT" "$LOGS/sshd.log" sshd sshd_listens
  wait_for "$SERVICE_TIMEOUT" "$LOGS/sshd.log" "ssh login to $SSH_USER@$SSH_ADDR:$SSH_PORT" ssh_ok
  ssh_dial_stdio_ok || die "\`docker system dial-stdio\` over ssh does not answer GET /_ping (see $LOGS/sshd.log)"
}

# ---------------------------------------------------------------------------
# 8. the daemon matrix: engines newer than Debian 12's, each run by the
# dockerd above in a container built from Debian packages
# (scripts/debian-image.sh), serving its API on a unix socket in a host
# folder bind-mounted at the same path. Their storage is a tmpfs: every
# (re)start is clean, and the test images are loaded again.
#
# What a nested daemon cannot reach: the host's loopback (the registry on
# 127.0.0.1:5000, the control plane), since it lives in its container's
# network namespace. Tests that pull from the registry stay on dockerd and
# Podman 4; matrix tests use preloaded images (pull policy if-not-present).
# Bind-mount sources are resolved by the nested daemon: /tmp is mounted at
# /tmp, so a test's temporary directories work as `-v` sources.

DAEMONS_DIR=$OZ_TEST_ROOT/daemons
# NAME SUITE KIND PACKAGES. Debian 13 (trixie) carries Docker 26.1 (API
# 1.45); unstable carries the newest Docker (28.x, API 1.51) and Podman 5.
# Podman 5 gets runc: crun refuses this VM's hybrid cgroup v1/v2 layout.
MATRIX=(
  "docker26 trixie docker docker.io,ca-certificates,iptables"
  "docker28 sid docker docker.io,ca-certificates,iptables"
  "podman5 sid podman podman,runc,ca-certificates,iptables"
)
MATRIX_TIMEOUT=${OZ_TEST_MATRIX_TIMEOUT:-90}
# --privileged fails here ("unable to apply caps": the VM lacks
# CAP_SYS_RESOURCE); these are what a daemon needs in a container.
DIND_ARGS=(--cap-add SYS_ADMIN --cap-add NET_ADMIN --cap-add NET_RAW --cap-add SYS_PTRACE
  --cap-add MKNOD --cap-add SYS_CHROOT --cap-add DAC_READ_SEARCH
  --security-opt seccomp=unconfined --security-opt apparmor=unconfined
  --security-opt systempaths=unconfined -v /sys/fs/cgroup:/sys/fs/cgroup:rw -v /tmp:/tmp)
MATRIX_LABEL=dev.oz.test-daemon
# Engines that could not come up in this run (outside CI only).
MATRIX_DOWN=()

# The host's dockerd through the CLI, whatever the caller's DOCKER_* say.
host_docker() {
  env -u DOCKER_CONTEXT -u DOCKER_TLS_VERIFY -u DOCKER_CERT_PATH -u DOCKER_API_VERSION \
    DOCKER_HOST="$DOCKER_HOST_URL" docker "$@"
}

matrix_kind() { # matrix_kind NAME -> docker | podman
  local entry
  for entry in "${MATRIX[@]}"; do
    read -r n _ k _ <<<"$entry"
    [ "$n" = "$1" ] && { echo "$k"; return 0; }
  done
  return 1
}

matrix_socket() { # matrix_socket NAME -> the socket's path on the host
  if [ "$(matrix_kind "$1")" = podman ]; then
    echo "$DAEMONS_DIR/$1/podman.sock"
  else
    echo "$DAEMONS_DIR/$1/docker.sock"
  fi
}

matrix_container() { echo "oz-test-$1"; }
matrix_image() { echo "oz-test/daemon:$1"; }

matrix_command() { # matrix_command NAME -> the daemon's argv, one per line
  local dir=$DAEMONS_DIR/$1
  if [ "$(matrix_kind "$1")" = podman ]; then
    printf '%s\n' podman system service --time=0 "unix://$dir/podman.sock"
  else
    # Never --bridge=none (see ENVIRONMENT.md); the bridge is the nested one.
    # overlay2 (on the tmpfs), as users' daemons have it: on vfs every
    # container layer and every image mount is a full copy, which made the
    # image-mount figures of benches/cold_start measure vfs, not the worker.
    printf '%s\n' dockerd -H "unix://$dir/docker.sock" --storage-driver overlay2 --iptables=false \
      "--cgroup-parent=/$(matrix_container "$1")"
  fi
}

# Podman's configuration, in the bind-mounted folder. Prints "changed" if
# it wrote a file.
ensure_podman_matrix_conf() {
  local dir=$DAEMONS_DIR/$1/conf
  mkdir -p "$dir"
  write_if_changed "$dir/containers.conf" 644 "# Written by oz-agent-worker scripts/test-env.sh
[containers]
$ULIMITS_LINE
[engine]
cgroup_manager = \"cgroupfs\"
runtime = \"runc\"
events_logger = \"file\"
[network]
firewall_driver = \"none\""
  write_if_changed "$dir/storage.conf" 644 "# Written by oz-agent-worker scripts/test-env.sh
[storage]
driver = \"vfs\"
runroot = \"/run/containers/storage\"
graphroot = \"/var/lib/containers/storage\""
}

# The arguments of `docker run` for NAME (without the image and command).
matrix_run_args() {
  local name=$1 dir=$DAEMONS_DIR/$1
  printf '%s\n' --name "$(matrix_container "$name")" --label "$MATRIX_LABEL=$name" \
    --hostname "$(matrix_container "$name")" "${DIND_ARGS[@]}" -v "$dir:$dir"
  if [ "$(matrix_kind "$name")" = podman ]; then
    printf '%s\n' --tmpfs /var/lib/containers:exec -e "CONTAINERS_CONF=$dir/conf/containers.conf" \
      -e "CONTAINERS_STORAGE_CONF=$dir/conf/storage.conf" -e PODMAN_IGNORE_CGROUPSV1_WARNING=1
  else
    printf '%s\n' --tmpfs /var/lib/docker:exec
  fi
}

# A daemon killed with its container leaves empty cgroups behind.
matrix_cgroups_cleanup() {
  local d
  for d in /sys/fs/cgroup/*/"$(matrix_container "$1")"; do
    [ -d "$d" ] && find "$d" -depth -type d -exec rmdir {} + 2>/dev/null
  done
  return 0
}

matrix_remove() { # matrix_remove NAME: the container, its socket and cgroups
  local c
  c=$(matrix_container "$1")
  if host_docker inspect "$c" >/dev/null 2>&1; then
    host_docker rm -f "$c" >/dev/null 2>&1 || true
  fi
  rm -f "$(matrix_socket "$1")"
  matrix_cgroups_cleanup "$1"
}

matrix_failed() { # matrix_failed NAME MESSAGE: fatal under CI, a warning otherwise
  if [ "${CI:-}" = true ]; then die "$1: $2"; fi
  log "WARNING: $1 is not available: $2 (its tests will be skipped; CI=true makes this fatal)"
  MATRIX_DOWN+=("$1")
}

# ensure_matrix_daemon NAME SUITE KIND PACKAGES: 0 when it answers with the
# test images loaded.
ensure_matrix_daemon() {
  local name=$1 suite=$2 packages=$4 image container sock config state deadline
  image=$(matrix_image "$name")
  container=$(matrix_container "$name")
  sock=$(matrix_socket "$name")
  mkdir -p "$DAEMONS_DIR/$name"
  [ "$(matrix_kind "$name")" = podman ] && ensure_podman_matrix_conf "$name" >/dev/null
  if ! "$REPO_DIR/scripts/debian-image.sh" build --socket "$DOCKER_SOCK" "$suite" "$image" \
    "${packages//,/ }"; then
    matrix_failed "$name" "building $image from Debian $suite failed"
    return 1
  fi
  # The container is recreated whenever its image or its arguments change.
  local -a run_args cmd
  mapfile -t run_args < <(matrix_run_args "$name")
  mapfile -t cmd < <(matrix_command "$name")
  config=$( {
    host_docker image inspect -f '{{.Id}}' "$image"
    printf '%s\n' "${run_args[@]}" "${cmd[@]}"
    [ -f "$DAEMONS_DIR/$name/conf/containers.conf" ] && cat "$DAEMONS_DIR/$name/conf/"*.conf
  } | sha256sum | cut -c1-16)
  state=$(host_docker inspect -f "{{.State.Running}} {{index .Config.Labels \"$MATRIX_LABEL.config\"}}" \
    "$container" 2>/dev/null || true)
  if [ "$state" = "true $config" ] && ping_unix "$sock"; then
    :
  else
    case $state in
    '') ;;
    "true $config") log "$name runs but does not answer on $sock; recreating it" ;;
    true*) log "$name's image or arguments changed; recreating it" ;;
    *) log "$name's container is not running (killed with its session?); recreating it" ;;
    esac
    matrix_remove "$name"
    log "starting $name ($image) on unix://$sock"
    local out
    if ! out=$(host_docker run -d --label "$MATRIX_LABEL.config=$config" "${run_args[@]}" \
      "$image" "${cmd[@]}" 2>&1); then
      matrix_failed "$name" "docker run failed: $out"
      return 1
    fi
    deadline=$((SECONDS + MATRIX_TIMEOUT))
    until ping_unix "$sock"; do
      if [ "$(host_docker inspect -f '{{.State.Running}}' "$container" 2>/dev/null)" != true ] ||
        [ "$SECONDS" -ge "$deadline" ]; then
        host_docker logs --tail 30 "$container" >&2 2>&1 || true
        matrix_failed "$name" "it did not answer on $sock within ${MATRIX_TIMEOUT}s (docker logs $container)"
        return 1
      fi
      sleep 0.2
    done
  fi
  matrix_preload "$name" "$sock"
}

# The images among the test images that SOCKET lacks, one per line.
matrix_missing_images() {
  local kind
  for kind in busybox:$IMG_BUSYBOX glibc:$IMG_GLIBC musl:$IMG_MUSL sidecar:$IMG_SIDECAR; do
    image_present "$1" "${kind#*:}" "$(fingerprint "${kind%%:*}")" || echo "${kind#*:}"
  done
}

# The test images, as in dockerd (docker save | POST /images/load). On a
# machine shared by several checkouts, another one's `up` may re-import a
# host image with its own fixture (another fingerprint) between our import
# and our save: the load is checked, and tried once more.
matrix_preload() {
  local name=$1 sock=$2 need=() out deadline _
  for _ in 1 2; do
    mapfile -t need < <(matrix_missing_images "$sock")
    [ ${#need[@]} -eq 0 ] && return 0
    log "loading ${need[*]} into $name"
    if ! out=$(host_docker save "${need[@]}" | curl -sS --max-time 300 --unix-socket "$sock" -X POST \
      -H 'Content-Type: application/x-tar' -T - "http://localhost/images/load" 2>&1) ||
      grep -q '"error' <<<"$out"; then
      matrix_failed "$name" "loading the test images failed: $out"
      return 1
    fi
    deadline=$((SECONDS + 30))
    while [ -n "$(matrix_missing_images "$sock")" ] && [ "$SECONDS" -lt "$deadline" ]; do
      sleep 0.2
    done
  done
  mapfile -t need < <(matrix_missing_images "$sock")
  [ ${#need[@]} -eq 0 ] && return 0
  matrix_failed "$name" "${need[*]} not in it after loading twice: $out"
  return 1
}

matrix_summary() {
  local entry name out=()
  for entry in "${MATRIX[@]}"; do
    read -r name _ <<<"$entry"
    if printf '%s\n' ${MATRIX_DOWN[@]+"${MATRIX_DOWN[@]}"} | grep -qxF "$name"; then
      out+=("$name:DOWN")
    else
      out+=("$name:unix://$(matrix_socket "$name")")
    fi
  done
  printf '%s\n' "${out[@]}" | paste -sd' ' -
}

ensure_matrix() {
  local entry name suite kind packages
  for entry in "${MATRIX[@]}"; do
    read -r name suite kind packages <<<"$entry"
    ensure_matrix_daemon "$name" "$suite" "$kind" "$packages" || true
  done
  # Images a rebuild replaced, now that no container of ours uses them.
  "$REPO_DIR/scripts/debian-image.sh" prune-images --socket "$DOCKER_SOCK"
}

# ---------------------------------------------------------------------------
# 9. env file

env_contents() {
  cat <<EOF
# Written by oz-agent-worker scripts/test-env.sh; source it. Contains no secrets:
# the registry password is in the file \$OZ_TEST_REGISTRY_PASSWORD_FILE.
export OZ_TEST_ROOT=$OZ_TEST_ROOT
export OZ_TEST_DOCKER_HOST=$DOCKER_HOST_URL
export OZ_TEST_DOCKER_API_VERSION=1.41
export OZ_TEST_TLS_HOST=$TLS_HOST_URL
export OZ_TEST_CERT_DIR=$CERTS
export OZ_TEST_CA=$CERTS/ca.pem
export OZ_TEST_CLIENT_CERT=$CERTS/cert.pem
export OZ_TEST_CLIENT_KEY=$CERTS/key.pem
export OZ_TEST_SERVER_CERT_DIR=$SERVER_CERTS
export OZ_TEST_OTHER_CA=$OTHER_CA_DIR/ca.pem
export OZ_TEST_OTHER_CA_DIR=$OTHER_CA_DIR
export OZ_TEST_PODMAN_HOST=$PODMAN_HOST_URL
export OZ_TEST_DOCKER26_HOST=unix://$(matrix_socket docker26)
export OZ_TEST_DOCKER28_HOST=unix://$(matrix_socket docker28)
export OZ_TEST_PODMAN5_HOST=unix://$(matrix_socket podman5)
export OZ_TEST_SSH_HOST=$SSH_HOST_URL
export OZ_TEST_REGISTRY=$REGISTRY
export OZ_TEST_REGISTRY_USER=$REGISTRY_USER
export OZ_TEST_REGISTRY_PASSWORD_FILE=$REGISTRY_PASSWORD_FILE
export OZ_TEST_IMAGE_BUSYBOX=$IMG_BUSYBOX
export OZ_TEST_IMAGE_GLIBC=$IMG_GLIBC
export OZ_TEST_IMAGE_MUSL=$IMG_MUSL
export OZ_TEST_IMAGE_SIDECAR=$IMG_SIDECAR
export OZ_TEST_REGISTRY_IMAGE_BUSYBOX=$REG_IMG_BUSYBOX
export OZ_TEST_REGISTRY_IMAGE_SIDECAR=$REG_IMG_SIDECAR
export OZ_TEST_GLIBC_BINARY=$GLIBC_BINARY
export OZ_TEST_MUSL_BINARY=$(command -v musl-gcc >/dev/null 2>&1 && echo "$MUSL_BINARY")
EOF
}

ensure_env_file() {
  local want
  want=$(env_contents)
  if [ -f "$ENV_FILE" ] && [ "$(cat "$ENV_FILE")" = "$want" ]; then return 0; fi
  printf '%s\n' "$want" >"$ENV_FILE.tmp"
  chmod 644 "$ENV_FILE.tmp"
  mv "$ENV_FILE.tmp" "$ENV_FILE"
}

# The direct runtime's tests run agents (and a worker) as this user.
ensure_test_user() {
  id -u oz-agent-test >/dev/null 2>&1 && return 0
  useradd --system --user-group --home-dir /nonexistent --no-create-home \
    --shell /usr/sbin/nologin oz-agent-test
}

# ---------------------------------------------------------------------------
# commands

cmd_up() {
  need_root
  local start=$SECONDS
  ensure_packages
  mkdir -p "$OZ_TEST_ROOT" "$LOGS" "$RUN"
  chmod 755 "$OZ_TEST_ROOT"
  ensure_certs
  ensure_dockerd
  ensure_podman
  ensure_registry
  ensure_images
  ensure_registry_images
  ensure_sshd
  ensure_matrix
  ensure_test_user
  ensure_env_file
  cat >&2 <<EOF
[test-env] up in $((SECONDS - start))s
  dockerd   $DOCKER_HOST_URL  and  $TLS_HOST_URL (--tlsverify, DOCKER_CERT_PATH=$CERTS)
  podman    $PODMAN_HOST_URL
  registry  http://$REGISTRY (user $REGISTRY_USER, password in $REGISTRY_PASSWORD_FILE)
  sshd      $SSH_HOST_URL (keys in $SSH_DIR; $ROOT_SSH_CONFIG includes $SSH_CLIENT_CONFIG)
  matrix    $(matrix_summary)
  images    $IMG_BUSYBOX $IMG_GLIBC $IMG_MUSL $IMG_SIDECAR (every engine)
            $REG_IMG_BUSYBOX $REG_IMG_SIDECAR (registry)
  logs      $LOGS
  env       source $ENV_FILE
EOF
}

cmd_status() {
  local bad=0
  check() { # check LABEL CMD...
    local label=$1
    shift
    if "$@" >/dev/null 2>&1; then
      printf '  ok       %s\n' "$label"
    else
      printf '  MISSING  %s\n' "$label"
      bad=1
    fi
  }
  local p
  echo "oz-worker test environment ($OZ_TEST_ROOT):"
  for p in "${PACKAGES[@]}"; do check "package $p" pkg_installed "$p"; done
  check "certificates in $CERTS" certs_valid
  check "dockerd on $DOCKER_HOST_URL" ping_unix "$DOCKER_SOCK"
  check "dockerd TLS on $TLS_HOST_URL" ping_tls
  check "podman ulimits in $CONTAINERS_CONF" grep -qxF "$ULIMITS_LINE" "$CONTAINERS_CONF"
  check "podman on $PODMAN_HOST_URL" ping_unix "$PODMAN_SOCK"
  if [ -s "$REGISTRY_PASSWORD_FILE" ]; then
    check "registry on $REGISTRY (401 anonymous, 200 as $REGISTRY_USER)" registry_ok
  else
    check "registry password file $REGISTRY_PASSWORD_FILE" false
  fi
  local kind image sock
  for kind in busybox:$IMG_BUSYBOX glibc:$IMG_GLIBC musl:$IMG_MUSL sidecar:$IMG_SIDECAR; do
    image=${kind#*:}
    kind=${kind%%:*}
    for sock in "$DOCKER_SOCK" "$PODMAN_SOCK"; do
      check "image $image in $sock" image_present "$sock" "$image" "$(fingerprint "$kind")"
    done
  done
  for image in "$REG_IMG_BUSYBOX" "$REG_IMG_SIDECAR"; do
    local path=${image#"$REGISTRY"/}
    if [ -s "$REGISTRY_PASSWORD_FILE" ]; then
      check "registry image $image" registry_has "${path%:*}" "${path##*:}"
    else
      check "registry image $image" false
    fi
  done
  check "sshd on $SSH_ADDR:$SSH_PORT" sshd_listens
  check "ssh $SSH_USER@$SSH_ADDR -p $SSH_PORT (key and known_hosts from $SSH_CLIENT_CONFIG)" ssh_ok
  check "docker system dial-stdio over $SSH_HOST_URL" ssh_dial_stdio_ok
  local entry name
  for entry in "${MATRIX[@]}"; do
    read -r name _ <<<"$entry"
    check "$name on unix://$(matrix_socket "$name") (container $(matrix_container "$name"))" \
      ping_unix "$(matrix_socket "$name")"
    for kind in busybox:$IMG_BUSYBOX glibc:$IMG_GLIBC musl:$IMG_MUSL sidecar:$IMG_SIDECAR; do
      check "image ${kind#*:} in $name" image_present "$(matrix_socket "$name")" "${kind#*:}" \
        "$(fingerprint "${kind%%:*}")"
    done
  done
  check "env file $ENV_FILE" test -s "$ENV_FILE"
  return $bad
}

cmd_down() {
  need_root
  stop_pidfile "$RUN/sshd.pid" sshd
  if ping_unix "$DOCKER_SOCK"; then
    local entry name
    for entry in "${MATRIX[@]}"; do
      read -r name _ <<<"$entry"
      if host_docker inspect "$(matrix_container "$name")" >/dev/null 2>&1; then
        log "removing $name's container $(matrix_container "$name")"
      fi
      matrix_remove "$name"
    done
  fi
  stop_pidfile "$RUN/registry.pid" docker-registry
  stop_pidfile "$RUN/podman.pid" podman
  stop_pidfile "$RUN/dockerd.pid" dockerd
  log "stopped the daemons this script started (state in $OZ_TEST_ROOT is kept)"
}

# The demo's images (a busybox task image and the demo agent sidecar) in the
# daemon behind one unix socket, whoever started it.
cmd_demo_images() {
  local sock=${1:-$DOCKER_SOCK}
  [ -S "$sock" ] || die "no Docker socket at $sock"
  if [ ! -x /bin/busybox ]; then
    need_root
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q busybox-static >&2 ||
      { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q busybox-static >&2; }
  fi
  command -v curl >/dev/null || die "curl is needed to import the demo images"
  mkdir -p "$BUILD"
  ensure_image busybox "$IMG_BUSYBOX" /bin "$sock"
  ensure_image sidecar "$IMG_SIDECAR" "" "$sock"
}

case "${1:-up}" in
up) cmd_up ;;
demo-images) cmd_demo_images "${2:-}" ;;
status) cmd_status ;;
down) cmd_down ;;
-h | --help | help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" ;;
*) die "unknown command '$1' (expected up, demo-images, status or down)" ;;
esac
