#!/usr/bin/env bash
# Cached builder of Debian images from Debian packages (no registry needed).
#
#   scripts/debian-image.sh build [options] SUITE IMAGE [PACKAGE...]
#       a minbase root filesystem of SUITE (bookworm, trixie, testing, sid,
#       unstable, ...) plus PACKAGEs, imported into a daemon as IMAGE
#   scripts/debian-image.sh rootfs [options] SUITE [PACKAGE...]
#       only make sure the cached root filesystem exists; prints its tar's path
#   scripts/debian-image.sh key [options] SUITE [PACKAGE...]
#       prints the cache key
#   scripts/debian-image.sh mirror
#       prints the Debian mirror read from this machine's apt sources
#   scripts/debian-image.sh list | prune
#       lists the cache, or removes every cached root filesystem
#   scripts/debian-image.sh prune-images [--socket PATH]
#       removes the dangling images that carry this builder's label (earlier
#       imports a rebuild replaced, and what was built on them), unless a
#       container still uses them
#
# Options (before SUITE):
#   --socket PATH    the daemon to import into (default /var/run/docker.sock)
#   --env NAME=VALUE an ENV line of the image (repeatable; PATH defaults to
#                    Debian's standard PATH)
#   --change LINE    another Dockerfile line for the import (CMD, WORKDIR, ...)
#   --slim           leave out documentation, manual pages and translations,
#                    as the official -slim images do
#   --refresh        rebuild the root filesystem even if it is cached
#   --host-cas       also trust the CA certificates this machine trusts beyond
#                    Debian's own set (e.g. a TLS-intercepting egress proxy's):
#                    for images that fetch over TLS while building (cargo).
#                    Needs the ca-certificates package in the image.
#
# How it works: `debootstrap --variant=minbase --include=PACKAGES` (which
# configures packages behind its own policy-rc.d, so no maintainer script
# starts a service here); the image gets a policy-rc.d of its own, as the
# official images do. The result is cached as a tar under $OZ_IMAGE_CACHE (default
# /var/cache/oz-worker-images), keyed by suite, architecture, package list,
# slimness and RECIPE_VERSION below; the downloaded .debs are kept there too.
# The image carries the key as the label dev.oz.debian-rootfs, so a second
# run with an unchanged recipe checks one label and returns in well under a
# second; a cached tar is imported in seconds.
#
# The mirror is read at run time from this machine's apt configuration (the
# Debian archive, not its security or updates suites); OZ_DEBIAN_MIRROR
# overrides it. It is never written into a file of this repository.
set -euo pipefail

# Bump when the way a root filesystem is made changes: every key changes.
RECIPE_VERSION=2

CACHE=${OZ_IMAGE_CACHE:-/var/cache/oz-worker-images}
DEFAULT_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
LABEL=dev.oz.debian-rootfs

log() { printf '[debian-image] %s\n' "$*" >&2; }
die() {
  printf '[debian-image] ERROR: %s\n' "$*" >&2
  exit 1
}

# ---------------------------------------------------------------------------
# the mirror

# The URI of the Debian archive in apt's own view of its sources: the package
# file whose Release says origin Debian, label Debian (not Debian-Security),
# component main, in a suite that is not -updates/-backports/-security.
mirror_from_policy() {
  apt-cache policy 2>/dev/null | awk '
    /^ *[0-9]+ (https?|ftp|file):/ { uri = $2; next }
    /^ +release / {
      if (uri != "" && $0 ~ /o=Debian,/ && $0 ~ /l=Debian,/ && $0 ~ /c=main/ && $0 !~ /n=[a-z]+-/) { print uri; exit }
      uri = ""
    }'
}

# Fallback when apt has no package lists yet: the sources files themselves.
mirror_from_sources() {
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    # deb822 stanzas: URIs of a stanza of Types deb whose Suites are not all -security
    awk 'BEGIN { RS = ""; FS = "\n" }
      {
        types = ""; uris = ""; suites = ""
        for (i = 1; i <= NF; i++) {
          if ($i ~ /^Types:/) types = $i
          if ($i ~ /^URIs:/) uris = $i
          if ($i ~ /^Suites:/) suites = $i
        }
        if (types ~ /[ \t]deb([ \t]|$)/ && suites !~ /-security/ && uris != "") {
          sub(/^URIs:[ \t]*/, "", uris); split(uris, u, /[ \t]+/); print u[1]; exit
        }
      }' "$f"
  done | head -n 1
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    sed -nE 's/^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?([^[:space:]]+)[[:space:]]+([^[:space:]]+).*/\2 \3/p' "$f" |
      awk '$2 !~ /-security/ { print $1 }'
  done | head -n 1
}

debian_mirror() {
  if [ -n "${OZ_DEBIAN_MIRROR:-}" ]; then
    printf '%s\n' "$OZ_DEBIAN_MIRROR"
    return
  fi
  local m
  m=$(mirror_from_policy)
  [ -n "$m" ] || m=$(mirror_from_sources | head -n 1)
  [ -n "$m" ] || die "no Debian mirror in this machine's apt sources (/etc/apt/sources.list*); set OZ_DEBIAN_MIRROR"
  printf '%s\n' "${m%/}"
}

# ---------------------------------------------------------------------------
# options and the key

SOCKET=/var/run/docker.sock
ENVS=()
CHANGES=()
SLIM=0
REFRESH=0
HOST_CAS=0

parse_options() { # sets OPTIND-like REST array
  REST=()
  while [ $# -gt 0 ]; do
    case $1 in
    --socket) SOCKET=${2:?--socket needs a path}; shift 2 ;;
    --env) ENVS+=("${2:?--env needs NAME=VALUE}"); shift 2 ;;
    --change) CHANGES+=("${2:?--change needs a Dockerfile line}"); shift 2 ;;
    --slim) SLIM=1; shift ;;
    --refresh) REFRESH=1; shift ;;
    --host-cas) HOST_CAS=1; shift ;;
    --) shift; REST+=("$@"); break ;;
    -*) die "unknown option $1 (see scripts/debian-image.sh --help)" ;;
    *) REST+=("$1"); shift ;;
    esac
  done
}

# Package lists are normalised (sorted, unique, comma or space separated).
normalise_packages() { tr -s ', ' '\n' <<<"$*" | sed '/^$/d' | sort -u | paste -sd, -; }

arch() { dpkg --print-architecture; }

# The PEM certificates in this machine's CA bundle that no file of its
# ca-certificates package (nor /usr/local/share/ca-certificates) provides:
# what the machine's own administrators added.
host_extra_cas() {
  local bundle=/etc/ssl/certs/ca-certificates.crt
  [ -f "$bundle" ] || return 0
  awk '
    FNR == 1 { file++ }
    /-----BEGIN CERTIFICATE-----/ { inpem = 1; body = ""; pem = $0 "\n"; next }
    /-----END CERTIFICATE-----/ {
      inpem = 0; pem = pem $0 "\n"
      if (file == 1) known[body] = 1
      else if (!(body in known) && !(body in printed)) { printf "%s", pem; printed[body] = 1 }
      next
    }
    inpem { gsub(/[ \t\r]/, ""); body = body $0; pem = pem $0 "\n" }
  ' <(cat /usr/share/ca-certificates/*/*.crt 2>/dev/null || true) "$bundle"
}

# key SUITE PACKAGES -> 16 hex digits
rootfs_key() {
  {
    printf 'recipe=%s\nsuite=%s\narch=%s\nvariant=minbase\npackages=%s\nslim=%s\n' \
      "$RECIPE_VERSION" "$1" "$(arch)" "$2" "$SLIM"
    # The slim recipe's own revision (3: apt's docker-clean configuration).
    if [ "$SLIM" = 1 ]; then echo 'slim-recipe=3'; fi
    if [ "$HOST_CAS" = 1 ]; then
      printf 'host-cas=%s\n' "$(host_extra_cas | sha256sum | cut -c1-16)"
    fi
  } | sha256sum | cut -c1-16
}

# ---------------------------------------------------------------------------
# building the root filesystem

ensure_debootstrap() {
  command -v debootstrap >/dev/null 2>&1 && return 0
  [ "$(id -u)" -eq 0 ] || die "debootstrap is missing and installing it needs root"
  log "installing debootstrap"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >&2 ||
    { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >&2; } ||
    die "could not install debootstrap"
}

# Paths the official -slim images leave out (debuerreotype's list).
# Quoted: dpkg matches them, the shell must not expand them here.
SLIM_EXCLUDES=('/usr/share/doc/*' '/usr/share/info/*' '/usr/share/linda/*'
  '/usr/share/lintian/overrides/*' '/usr/share/locale/*' '/usr/share/man/*' '/usr/share/groff/*')

slim_rootfs() {
  local root=$1 p
  # apt keeps no caches, downloads no translations and keeps its lists
  # compressed (debuerreotype's minimizing configuration).
  mkdir -p "$root/etc/apt/apt.conf.d"
  cat >"$root/etc/apt/apt.conf.d/docker-clean" <<'APT'
// Written by oz-agent-worker scripts/debian-image.sh --slim (as the official images)
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
APT
  printf 'Acquire::Languages "none";\n' >"$root/etc/apt/apt.conf.d/docker-no-languages"
  printf 'Acquire::GzipIndexes "true";\nAcquire::CompressionTypes::Order:: "gz";\n' \
    >"$root/etc/apt/apt.conf.d/docker-gzip-indexes"
  mkdir -p "$root/etc/dpkg/dpkg.cfg.d"
  {
    echo '# Written by oz-agent-worker scripts/debian-image.sh --slim (as the official -slim images)'
    for p in "${SLIM_EXCLUDES[@]}"; do echo "path-exclude $p"; done
    echo 'path-include /usr/share/doc/*/copyright'
  } >"$root/etc/dpkg/dpkg.cfg.d/docker"
  for p in doc info linda lintian/overrides locale man groff; do
    [ -d "$root/usr/share/$p" ] || continue
    if [ "$p" = doc ]; then
      find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
      find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
    else
      find "$root/usr/share/$p" -mindepth 1 -delete
    fi
  done
}

# Testing and unstable sign their Release for a week (Valid-Until). A
# mirror that is a frozen snapshot serves one that has expired: debootstrap
# does not check, but apt-get update in the image would refuse it. Only
# then the image's apt is told to accept it, with a file saying why.
allow_expired_release() { # allow_expired_release ROOTFS SUITE
  local root=$1 suite=$2 release until
  release=$(find "$root/var/lib/apt/lists" -maxdepth 1 -name '*_Release' | head -n 1)
  [ -n "$release" ] || return 0
  until=$(sed -n 's/^Valid-Until: //p' "$release")
  [ -n "$until" ] || return 0
  [ "$(date -d "$until" +%s)" -lt "$(date +%s)" ] || return 0
  log "the mirror's $suite Release expired on $until (a frozen snapshot?): apt in this image accepts it"
  printf '// Written by oz-agent-worker scripts/debian-image.sh: the mirror this image was\n// built from served a %s Release that had expired on %s.\nAcquire::Check-Valid-Until "false";\n' \
    "$suite" "$until" >"$root/etc/apt/apt.conf.d/99oz-expired-release"
}

add_host_cas() { # add_host_cas ROOTFS
  local root=$1 n=0 extras
  extras=$(host_extra_cas)
  [ -n "$extras" ] || return 0
  [ -x "$root/usr/sbin/update-ca-certificates" ] || die "--host-cas needs the ca-certificates package in the image"
  mkdir -p "$root/usr/local/share/ca-certificates"
  awk -v dir="$root/usr/local/share/ca-certificates" '
    /-----BEGIN CERTIFICATE-----/ { n++; f = sprintf("%s/oz-host-ca-%d.crt", dir, n) }
    f { print > f }
    /-----END CERTIFICATE-----/ { close(f); f = "" }' <<<"$extras"
  n=$(grep -c 'BEGIN CERTIFICATE' <<<"$extras")
  chroot "$root" update-ca-certificates >/dev/null 2>&1 || die "update-ca-certificates failed in the image"
  log "added $n CA certificate(s) this machine trusts beyond Debian's set"
}

build_rootfs() { # build_rootfs SUITE PACKAGES KEY -> $CACHE/KEY.tar
  local suite=$1 packages=$2 key=$3 mirror work root include=() d
  ensure_debootstrap
  mirror=$(debian_mirror)
  work=$CACHE/work.$key
  root=$work/root
  rm -rf "$work"
  mkdir -p "$root" "$CACHE/debs"
  [ -n "$packages" ] && include=(--include="$packages")
  log "debootstrap $suite (minbase${packages:+ + $packages}) from the apt sources' mirror"
  local started=$SECONDS
  # debootstrap configures every package (the included ones too) behind its
  # own policy-rc.d and a fake start-stop-daemon: no maintainer script starts
  # a service (docker.io's would start a dockerd) on this machine.
  if ! debootstrap --variant=minbase --cache-dir="$CACHE/debs" ${include[@]+"${include[@]}"} \
    "$suite" "$root" "$mirror" >"$work/debootstrap.log" 2>&1; then
    tail -n 30 "$work/debootstrap.log" >&2
    die "debootstrap of $suite failed (log: $work/debootstrap.log)"
  fi
  # As in the official images: package installs in a container start no service.
  printf '#!/bin/sh\n# Written by oz-agent-worker scripts/debian-image.sh: no services in containers\nexit 101\n' \
    >"$root/usr/sbin/policy-rc.d"
  chmod 755 "$root/usr/sbin/policy-rc.d"
  allow_expired_release "$root" "$suite"
  [ "$HOST_CAS" = 1 ] && add_host_cas "$root"
  # What a container gets from its runtime, not from its image, and package
  # lists (an image's apt-get update fetches its own). Only real directories
  # are emptied (never follow a link out of the root).
  rm -f "$root/etc/hostname" "$root/etc/resolv.conf"
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/cache/apt/*.bin "$root"/var/log/*.log \
    "$root"/var/lib/apt/lists/*_*
  for d in dev proc sys tmp; do
    if [ -d "$root/$d" ] && [ ! -L "$root/$d" ]; then
      find "$root/$d" -mindepth 1 -maxdepth 1 -exec rm -rf {} +
    fi
  done
  [ "$SLIM" = 1 ] && slim_rootfs "$root"
  tar -C "$root" --numeric-owner -cf "$work/rootfs.tar" .
  mv "$work/rootfs.tar" "$CACHE/$key.tar"
  printf 'suite=%s\narch=%s\npackages=%s\nslim=%s\nhost-cas=%s\nrecipe=%s\nbuilt=%s\n' "$suite" \
    "$(arch)" "$packages" "$SLIM" "$HOST_CAS" "$RECIPE_VERSION" "$(date -Is)" >"$CACHE/$key.info"
  rm -rf "$work"
  remove_other_recipes
  log "built $suite root filesystem in $((SECONDS - started))s: $CACHE/$key.tar ($(du -h "$CACHE/$key.tar" | cut -f1))"
}

# Root filesystems of an earlier recipe are never used again.
remove_other_recipes() {
  local info
  for info in "$CACHE"/*.info; do
    [ -f "$info" ] || continue
    grep -qx "recipe=$RECIPE_VERSION" "$info" && continue
    log "removing $(basename "$info" .info), cached by an earlier recipe"
    rm -f "${info%.info}".{tar,info,lock}
  done
}

# ensure_rootfs SUITE PACKAGES -> prints the tar's path (built under a lock)
ensure_rootfs() {
  local suite=$1 packages=$2 key
  key=$(rootfs_key "$suite" "$packages")
  mkdir -p "$CACHE"
  (
    flock 9
    if [ "$REFRESH" = 1 ] || [ ! -s "$CACHE/$key.tar" ]; then
      build_rootfs "$suite" "$packages" "$key"
    fi
  ) 9>"$CACHE/$key.lock"
  printf '%s\n' "$CACHE/$key.tar"
}

# ---------------------------------------------------------------------------
# the daemon side

urlencode() { # a query parameter value
  local s=$1 out='' c i
  for ((i = 0; i < ${#s}; i++)); do
    c=${s:i:1}
    case $c in
    [a-zA-Z0-9.~_-]) out+=$c ;;
    *) out+=$(printf '%%%02X' "'$c") ;;
    esac
  done
  printf '%s' "$out"
}

# image_label SOCKET IMAGE -> the image's dev.oz.debian-rootfs label, or nothing
image_label() {
  curl -sf --max-time 10 --unix-socket "$1" "http://localhost/images/$(urlencode "$2")/json" 2>/dev/null |
    sed -nE "s/.*\"$LABEL\":\"([^\"]*)\".*/\1/p" || true
}

import_rootfs() { # import_rootfs SOCKET IMAGE TAR KEY
  local sock=$1 image=$2 tar=$3 key=$4 q e c out have_path=0
  q="fromSrc=-&repo=$(urlencode "$image")"
  for e in ${ENVS[@]+"${ENVS[@]}"}; do
    [ "${e%%=*}" = PATH ] && have_path=1
    q+="&changes=$(urlencode "ENV $e")"
  done
  [ $have_path = 1 ] || q+="&changes=$(urlencode "ENV PATH=$DEFAULT_PATH")"
  for c in ${CHANGES[@]+"${CHANGES[@]}"}; do q+="&changes=$(urlencode "$c")"; done
  q+="&changes=$(urlencode "LABEL $LABEL=$key")"
  log "importing $image into $sock"
  # -T streams the file (a --data-binary @file would hold it in memory).
  out=$(curl -sS --max-time 600 --unix-socket "$sock" -X POST -H 'Content-Type: application/x-tar' \
    -T "$tar" "http://localhost/images/create?$q" 2>&1) || die "importing $image into $sock failed: $out"
  grep -q '"error' <<<"$out" && die "importing $image into $sock failed: $out"
  [ "$(image_label "$sock" "$image")" = "$key" ] || die "imported $image into $sock but it does not carry $LABEL=$key: $out"
  prune_images "$sock"
}

# Dangling images with the builder's label: the ones this tag replaced.
prune_images() { # prune_images SOCKET
  local filters
  filters=$(urlencode "{\"dangling\":[\"true\"],\"label\":[\"$LABEL\"]}")
  curl -sf --max-time 120 --unix-socket "$1" -X POST "http://localhost/images/prune?filters=$filters" \
    >/dev/null 2>&1 || log "could not prune replaced images in $1 (continuing)"
}

# A key over everything the import decides as well (ENV and other changes).
image_key() { # image_key ROOTFS_KEY
  printf '%s\n' "$1" ${ENVS[@]+"${ENVS[@]}"} ${CHANGES[@]+"${CHANGES[@]}"} | sha256sum | cut -c1-16
}

cmd_build() {
  parse_options "$@"
  [ ${#REST[@]} -ge 2 ] || die "usage: scripts/debian-image.sh build [options] SUITE IMAGE [PACKAGE...]"
  local suite=${REST[0]} image=${REST[1]} packages key ikey tar
  packages=$(normalise_packages "${REST[@]:2}")
  [ -S "$SOCKET" ] || die "no daemon socket at $SOCKET"
  key=$(rootfs_key "$suite" "$packages")
  ikey=$key-$(image_key "$key")
  if [ "$REFRESH" = 0 ] && [ "$(image_label "$SOCKET" "$image")" = "$ikey" ]; then
    log "$image is up to date in $SOCKET ($suite${packages:+ + $packages})"
    return 0
  fi
  tar=$(ensure_rootfs "$suite" "$packages")
  import_rootfs "$SOCKET" "$image" "$tar" "$ikey"
}

cmd_rootfs() {
  parse_options "$@"
  [ ${#REST[@]} -ge 1 ] || die "usage: scripts/debian-image.sh rootfs [options] SUITE [PACKAGE...]"
  ensure_rootfs "${REST[0]}" "$(normalise_packages "${REST[@]:1}")"
}

cmd_key() {
  parse_options "$@"
  [ ${#REST[@]} -ge 1 ] || die "usage: scripts/debian-image.sh key [options] SUITE [PACKAGE...]"
  rootfs_key "${REST[0]}" "$(normalise_packages "${REST[@]:1}")"
}

cmd_prune_images() {
  parse_options "$@"
  prune_images "$SOCKET"
}

cmd_list() {
  local f
  for f in "$CACHE"/*.info; do
    [ -f "$f" ] || continue
    printf '%s  %s  %s\n' "$(basename "$f" .info)" "$(du -h "${f%.info}.tar" 2>/dev/null | cut -f1)" \
      "$(grep -E '^(suite|packages|slim|built)=' "$f" | paste -sd' ' -)"
  done
}

cmd_prune() {
  [ -d "$CACHE" ] || return 0
  rm -rf "$CACHE"/*.tar "$CACHE"/*.info "$CACHE"/*.lock "$CACHE"/work.*
  log "removed the cached root filesystems in $CACHE (downloaded packages in $CACHE/debs are kept)"
}

case "${1:-}" in
build) shift; cmd_build "$@" ;;
rootfs) shift; cmd_rootfs "$@" ;;
key) shift; cmd_key "$@" ;;
mirror) debian_mirror ;;
list) cmd_list ;;
prune) cmd_prune ;;
prune-images) shift; cmd_prune_images "$@" ;;
-h | --help | help | '') awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" ;;
*) die "unknown command '$1' (expected build, rootfs, key, mirror, list, prune or prune-images)" ;;
esac
