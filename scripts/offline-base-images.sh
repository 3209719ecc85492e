#!/usr/bin/env bash
# offline-base-images.sh: build the images that the Dockerfile's FROM lines name
# (debian:<suite>-slim and rust:<x.y>-slim-<suite>) from Debian's package mirror and the host's
# Rust toolchain, without any container registry. It also vendors the crates so that
# `docker build .` needs no network. The Dockerfile is the same one a user with internet uses.
#
#   scripts/offline-base-images.sh [all|images|vendor|unvendor|check] [--force] [--refresh]
#     all       (default) images + vendor
#     images    import debian:<suite>-slim and rust:<x.y>-slim-<suite> (and rust:<x.y.z>-...)
#     vendor    `cargo vendor --locked` into ./vendor (the Dockerfile uses it when present;
#               host builds never do)
#     unvendor  remove ./vendor
#     check     show what exists, change nothing
#     --force   re-import images that already exist (reuses the cached root file systems)
#     --refresh also re-run debootstrap (throws away the cached root file systems)
#   Env: RESTOCK_OFFLINE_CACHE (default ${XDG_CACHE_HOME:-$HOME/.cache}/restock-offline),
#        RESTOCK_DEBIAN_SUITE (bookworm), RESTOCK_DEBIAN_MIRROR (http://deb.debian.org/debian),
#        RESTOCK_REPO_DIR (the repo holding this script), RUSTC (rustc on PATH).
#   Run as root (debootstrap, chroot, mount). Safe to run again: existing images are skipped.
#
# Findings on the machine this was written on (Debian 12, Docker Engine 20.10.24, 2 cores):
# - `docker pull` reaches no registry. `docker build` (without --pull) and `docker-compose build`
#   use the image already in the local store under the FROM name and pull nothing: verified.
# - The `docker` first on PATH is client 28.2.2 (/usr/local/bin) without buildx: `docker build`
#   uses the classic builder, and DOCKER_BUILDKIT=1 fails ("buildx component is missing").
#   Compose: Debian's docker-compose 1.29.2 (/usr/bin, classic builder); a Compose v2.40.3 CLI
#   plugin (from PyPI, ~/.docker/cli-plugins) appeared later and builds with BuildKit. Both build
#   from the local base images. BuildKit also works via DOCKER_BUILDKIT=1 /usr/bin/docker build
#   (Debian's 20.10 client). Because plain `docker build` cannot use BuildKit, the Dockerfile
#   uses no BuildKit-only syntax (no RUN --mount, no "# syntax=" line).
# - Containers DO have network (docker run and RUN steps of docker build, default bridge):
#   apt over http://deb.debian.org works, but https to crates.io fails, "SSL certificate problem:
#   self-signed certificate in certificate chain": egress is TLS-intercepted by a CA that only the
#   host trusts. With the host's CA bundle mounted into a container, crate downloads work.
#   Builds need none of it: crates are vendored, and `docker build --network none` succeeds.
# - Extra CAs the host trusts: /usr/local/share/ca-certificates/custom-ca.crt ("Custom Artifactory
#   CA") and sandboxing-egress-ca.crt ("sandboxing-egress-ca"), merged into
#   /etc/ssl/certs/ca-certificates.crt. They are deliberately NOT put into the images (the runtime
#   image copies its CA bundle from the build image and would ship them). If a container must
#   reach the internet here, mount the host bundle at run time:
#   -v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro
# - Root file systems are fetched on the host (debootstrap, then chroot apt-get), never inside a
#   container. First run about 70 s (debootstrap about 30 s), a second run a few seconds.
set -euo pipefail

SUITE="${RESTOCK_DEBIAN_SUITE:-bookworm}"
MIRROR="${RESTOCK_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
CACHE_DIR="${RESTOCK_OFFLINE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/restock-offline}"
REPO_DIR="${RESTOCK_REPO_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
RUSTC="${RUSTC:-rustc}"
BUILD_PACKAGES=(gcc libc6-dev pkg-config)
CONFIG_MARKER="# written by scripts/offline-base-images.sh"

cmd="all"; force=0; refresh=0
for arg in "$@"; do
  case "$arg" in
    all|images|vendor|unvendor|check) cmd="$arg" ;;
    --force) force=1 ;;
    --refresh) refresh=1; force=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $arg (try --help)" >&2; exit 2 ;;
  esac
done

START=$SECONDS
log() { printf '[offline %3ds] %s\n' "$((SECONDS - START))" "$*"; }
die() { printf 'offline-base-images: error: %s\n' "$*" >&2; exit 1; }
have_image() { docker image inspect "$1" >/dev/null 2>&1; }

DEBIAN_TAG="debian:${SUITE}-slim"
BASE_TAR="$CACHE_DIR/debian-${SUITE}-slim-rootfs.tar"
BUILD_TAR="$CACHE_DIR/debian-${SUITE}-build-rootfs.tar"
SLIM_PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# ---- scratch directories, chroot mounts, and their cleanup --------------------------------------
WORK_DIRS=()
unmount_under() { # unmount everything mounted below $1, deepest first
  local dir mnt
  dir="$(realpath -m "$1")"
  awk -v d="$dir/" 'index($2, d) == 1 { print $2 }' /proc/self/mounts | sort -r |
    while read -r mnt; do umount "$mnt" 2>/dev/null || umount -l "$mnt"; done
}
cleanup() {
  local d
  for d in "${WORK_DIRS[@]}"; do
    [[ -d "$d" ]] || continue
    unmount_under "$d"
    if awk -v d="$(realpath -m "$d")/" 'index($2, d) == 1 { f = 1 } END { exit !f }' /proc/self/mounts; then
      echo "offline-base-images: not removing $d: something is still mounted below it" >&2
    else
      rm -rf --one-file-system "$d"
    fi
  done
  rmdir "$CACHE_DIR/tmp" 2>/dev/null || true
}
trap cleanup EXIT
new_workdir() { # sets $work (not via $(...): the cleanup list must grow in this shell)
  mkdir -p "$CACHE_DIR/tmp"
  work="$(mktemp -d "$CACHE_DIR/tmp/$1.XXXXXX")"
  WORK_DIRS+=("$work")
}

# Run a command inside the root file system $1, with /proc, device nodes and DNS available.
in_chroot() {
  local root="$1"; shift
  local n name type major minor
  mkdir -p "$root/dev" "$root/proc"
  for n in "null c 1 3" "zero c 1 5" "full c 1 7" "random c 1 8" "urandom c 1 9" "tty c 5 0"; do
    read -r name type major minor <<<"$n"
    [[ -e "$root/dev/$name" ]] || mknod -m 666 "$root/dev/$name" "$type" "$major" "$minor"
  done
  mountpoint -q "$root/proc" || mount -t proc proc "$root/proc"
  cp -L /etc/resolv.conf "$root/etc/resolv.conf"
  local rc=0
  LC_ALL=C.UTF-8 DEBIAN_FRONTEND=noninteractive DEBCONF_NONINTERACTIVE_SEEN=true \
    PATH="$SLIM_PATH" HOME=/root chroot "$root" "$@" || rc=$?
  umount "$root/proc" 2>/dev/null || umount -l "$root/proc"
  : >"$root/etc/resolv.conf"
  return "$rc"
}

# Tidy a root file system like Debian's official -slim images and pack it into $2.
pack_rootfs() {
  local root="$1" out="$2"
  in_chroot "$root" apt-get clean
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/debconf/*-old \
    "$root"/var/lib/dpkg/*-old "$root"/var/log/apt/* "$root"/tmp/* "$root"/var/tmp/* "$root"/root/.bash_history
  find "$root/var/log" -type f -exec truncate -s 0 {} +
  find "$root/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
  find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
  rm -rf "$root"/usr/share/{man,info,groff,lintian,linda}/*
  find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
  : >"$root/etc/machine-id"; : >"$root/etc/hostname"; : >"$root/etc/resolv.conf"
  unmount_under "$root"
  tar --numeric-owner --xattrs -C "$root" \
    --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' -cf "$out.part" .
  mv "$out.part" "$out"
}

# ---- root file systems (cached) -----------------------------------------------------------------
ensure_debootstrap() {
  command -v debootstrap >/dev/null && return 0
  log "installing debootstrap (apt-get)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null ||
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; }
  command -v debootstrap >/dev/null || die "could not install debootstrap"
}

make_base_rootfs() {
  if [[ -s "$BASE_TAR" && ( $refresh -eq 0 || -n "${BASE_FRESH:-}" ) ]]; then log "cached rootfs: $BASE_TAR"; return 0; fi
  ensure_debootstrap
  local work root; new_workdir base; root="$work/root"
  log "debootstrap --variant=minbase $SUITE from $MIRROR (about a minute)"
  debootstrap --variant=minbase --include=ca-certificates "$SUITE" "$root" "$MIRROR" \
    >"$work/debootstrap.log" 2>&1 || { tail -n 30 "$work/debootstrap.log" >&2; die "debootstrap failed"; }

  log "configuring the rootfs like debian:$SUITE-slim, applying $SUITE-updates and -security"
  rm -f "$root/etc/apt/sources.list"
  cat >"$root/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: http://deb.debian.org/debian
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  cat >"$root/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
# as in Debian's official -slim images: no docs, man pages or translations
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
  cat >"$root/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
  printf 'Acquire::GzipIndexes "true";\nAcquire::CompressionTypes::Order:: "gz";\n' \
    >"$root/etc/apt/apt.conf.d/docker-gzip-indexes"
  printf 'Acquire::Languages "none";\n' >"$root/etc/apt/apt.conf.d/docker-no-languages"
  printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"; chmod 755 "$root/usr/sbin/policy-rc.d"
  in_chroot "$root" apt-get update -qq
  in_chroot "$root" apt-get -y -qq -o Dpkg::Use-Pty=0 -o Dpkg::Options::=--force-confold upgrade \
    >"$work/upgrade.log" 2>&1 || { tail -n 30 "$work/upgrade.log" >&2; die "apt-get upgrade in the rootfs failed"; }
  pack_rootfs "$root" "$BASE_TAR"
  BASE_FRESH=1
  log "cached $BASE_TAR ($(du -h "$BASE_TAR" | cut -f1))"
}

make_build_rootfs() {
  if [[ -s "$BUILD_TAR" && "$BUILD_TAR" -nt "$BASE_TAR" ]]; then
    log "cached rootfs: $BUILD_TAR"; return 0
  fi
  local work root; new_workdir build; root="$work/root"; mkdir -p "$root"
  tar --numeric-owner -xf "$BASE_TAR" -C "$root"
  log "chroot apt-get install ${BUILD_PACKAGES[*]}"
  in_chroot "$root" apt-get update -qq
  in_chroot "$root" apt-get install -y -qq -o Dpkg::Use-Pty=0 --no-install-recommends "${BUILD_PACKAGES[@]}" \
    >"$work/install.log" 2>&1 || { tail -n 30 "$work/install.log" >&2; die "apt-get install in the rootfs failed"; }
  pack_rootfs "$root" "$BUILD_TAR"
  log "cached $BUILD_TAR ($(du -h "$BUILD_TAR" | cut -f1))"
}

# ---- images -------------------------------------------------------------------------------------
rust_facts() { # sets RUST_VERSION RUST_MINOR RUST_HOST RUST_SYSROOT from the host's rustc
  command -v "$RUSTC" >/dev/null || die "no rustc on PATH (set RUSTC=/path/to/rustc)"
  local vv; vv="$("$RUSTC" -vV)"
  RUST_VERSION="$(sed -n 's/^release: //p' <<<"$vv")"
  RUST_HOST="$(sed -n 's/^host: //p' <<<"$vv")"
  RUST_SYSROOT="$("$RUSTC" --print sysroot)"
  [[ "$RUST_VERSION" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] ||
    die "host rustc is '$RUST_VERSION'; only stable releases map onto rust:<x.y>-slim-$SUITE tags"
  RUST_MINOR="${RUST_VERSION%.*}"
  RUST_TAG="rust:${RUST_MINOR}-slim-${SUITE}"
  RUST_TAG_FULL="rust:${RUST_VERSION}-slim-${SUITE}"
}

drop_replaced() { # after --force: remove the image a tag used to name, unless something uses it
  local old="$1" tag="$2"
  [[ -n "$old" && "$old" != "$(docker image inspect --format '{{.Id}}' "$tag")" ]] || return 0
  docker rmi "$old" >/dev/null 2>&1 && log "removed the replaced image ${old:7:12}" || true
}

dockerfile_hint() { # warn when the Dockerfile's default RUST_VERSION is not what we just built
  local f="$REPO_DIR/Dockerfile" want
  [[ -f "$f" ]] || return 0
  want="$(sed -n 's/^ARG RUST_VERSION=//p' "$f" | head -n1)"
  if [[ -n "$want" && "$want" != "$RUST_MINOR" && "$want" != "$RUST_VERSION" ]]; then
    log "NOTE: Dockerfile defaults to RUST_VERSION=$want but the host toolchain gave $RUST_TAG;"
    log "      build with --build-arg RUST_VERSION=$RUST_MINOR (or install rust $want on the host)"
  fi
}

import_debian() {
  if have_image "$DEBIAN_TAG" && [[ $force -eq 0 ]]; then log "image $DEBIAN_TAG exists, skipping"; return 0; fi
  make_base_rootfs
  local old; old="$(docker image inspect --format '{{.Id}}' "$DEBIAN_TAG" 2>/dev/null || true)"
  log "docker import $DEBIAN_TAG"
  docker import --message "debootstrap $SUITE minbase (scripts/offline-base-images.sh)" \
    --change "ENV PATH=$SLIM_PATH" --change 'CMD ["bash"]' "$BASE_TAR" "$DEBIAN_TAG" >/dev/null
  drop_replaced "$old" "$DEBIAN_TAG"
  docker run --rm --network none "$DEBIAN_TAG" sh -c 'echo "  debian $(cat /etc/debian_version), $(ls /etc/ssl/certs | wc -l) entries in /etc/ssl/certs"'
}

import_rust() {
  rust_facts
  if have_image "$RUST_TAG" && [[ $force -eq 0 ]]; then
    log "image $RUST_TAG exists, skipping"
    have_image "$RUST_TAG_FULL" || docker tag "$RUST_TAG" "$RUST_TAG_FULL"
    return 0
  fi
  make_base_rootfs
  make_build_rootfs
  local work root tc rustup_bin settings_version b old
  old="$(docker image inspect --format '{{.Id}}' "$RUST_TAG" 2>/dev/null || true)"
  new_workdir rust; root="$work/root"; mkdir -p "$root"
  tc="${RUST_VERSION}-${RUST_HOST}"
  tar --numeric-owner -xf "$BUILD_TAR" -C "$root"
  log "copying toolchain $RUST_SYSROOT -> /usr/local/rustup/toolchains/$tc (without docs/sources)"
  mkdir -p "$root/usr/local/rustup/toolchains/$tc" "$root/usr/local/cargo/bin"
  tar -C "$RUST_SYSROOT" --exclude=./share/doc --exclude=./lib/rustlib/src -cf - . |
    tar -C "$root/usr/local/rustup/toolchains/$tc" --no-same-owner -xf -
  # rustup proxies like the official image (cargo, rustc, ... -> rustup), or plain links without rustup
  rustup_bin="$(command -v rustup || true)"
  if [[ -n "$rustup_bin" ]]; then
    cp "$(readlink -f "$rustup_bin")" "$root/usr/local/cargo/bin/rustup"
    settings_version="$(sed -n 's/^version = "\(.*\)"/\1/p' "${RUSTUP_HOME:-$HOME/.rustup}/settings.toml" 2>/dev/null || true)"
    printf 'version = "%s"\ndefault_toolchain = "%s"\nprofile = "minimal"\nauto_self_update = "disable"\n\n[overrides]\n' \
      "${settings_version:-12}" "$tc" >"$root/usr/local/rustup/settings.toml"
    for b in "$root/usr/local/rustup/toolchains/$tc"/bin/*; do
      ln -sf rustup "$root/usr/local/cargo/bin/$(basename "$b")"
    done
  else
    for b in "$root/usr/local/rustup/toolchains/$tc"/bin/*; do
      ln -sf "/usr/local/rustup/toolchains/$tc/bin/$(basename "$b")" "$root/usr/local/cargo/bin/"
    done
  fi
  chmod -R a+w "$root/usr/local/rustup" "$root/usr/local/cargo"
  log "docker import $RUST_TAG ($(du -sh "$root" | cut -f1) unpacked)"
  tar --numeric-owner --xattrs -C "$root" --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' -cf - . |
    docker import --message "debootstrap $SUITE + ${BUILD_PACKAGES[*]} + host rust $RUST_VERSION (scripts/offline-base-images.sh)" \
      --change "ENV PATH=/usr/local/cargo/bin:$SLIM_PATH" \
      --change "ENV RUSTUP_HOME=/usr/local/rustup" --change "ENV CARGO_HOME=/usr/local/cargo" \
      --change "ENV RUST_VERSION=$RUST_VERSION" --change 'CMD ["bash"]' - "$RUST_TAG" >/dev/null
  docker tag "$RUST_TAG" "$RUST_TAG_FULL"
  drop_replaced "$old" "$RUST_TAG"
  docker run --rm --network none "$RUST_TAG" sh -c \
    'printf "  %s | %s | %s\n" "$(rustc --version)" "$(cargo --version)" "$(cc --version | head -n1)"'
}

# ---- vendored crates ----------------------------------------------------------------------------
vendor_crates() {
  # Only ./vendor is written: the Dockerfile points cargo at it inside the build stage when it is
  # in the build context. Host builds are unaffected (no .cargo/config.toml in the tree), so
  # adding a dependency on the host never breaks because of a stale vendor/.
  local stamp="$REPO_DIR/vendor/.restock-vendor-lock.sha256" sum
  [[ -f "$REPO_DIR/Cargo.lock" ]] || die "$REPO_DIR/Cargo.lock missing (run cargo generate-lockfile there)"
  sum="$(sha256sum "$REPO_DIR/Cargo.lock" | cut -d' ' -f1)"
  if [[ $force -eq 0 && -f "$stamp" && "$(cat "$stamp")" == "$sum" ]]; then
    log "vendor/ matches Cargo.lock, skipping cargo vendor"; return 0
  fi
  log "cargo vendor --locked into $REPO_DIR/vendor"
  (cd "$REPO_DIR" && cargo vendor --locked vendor >/dev/null 2>"$CACHE_DIR/cargo-vendor.log") ||
    { tail -n 20 "$CACHE_DIR/cargo-vendor.log" >&2; die "cargo vendor failed (is Cargo.lock up to date? this script never changes it)"; }
  echo "$sum" >"$stamp"
  log "vendored $(find "$REPO_DIR/vendor" -mindepth 1 -maxdepth 1 -type d | wc -l) crates ($(du -sh "$REPO_DIR/vendor" | cut -f1))"
}

unvendor() {
  local cfg="$REPO_DIR/.cargo/config.toml"
  if [[ -f "$cfg" ]] && grep -qF "$CONFIG_MARKER" "$cfg"; then rm -f "$cfg"; rmdir "$REPO_DIR/.cargo" 2>/dev/null || true; log "removed $cfg"; fi
  if [[ -d "$REPO_DIR/vendor" ]]; then rm -rf --one-file-system "$REPO_DIR/vendor"; log "removed $REPO_DIR/vendor"; fi
}

check() {
  rust_facts
  local t
  for t in "$DEBIAN_TAG" "$RUST_TAG" "$RUST_TAG_FULL"; do
    if have_image "$t"; then echo "image    $t: present"; else echo "image    $t: missing"; fi
  done
  for t in "$BASE_TAR" "$BUILD_TAR"; do
    if [[ -s "$t" ]]; then echo "cache    $t ($(du -h "$t" | cut -f1))"; else echo "cache    $t: missing"; fi
  done
  if [[ -d "$REPO_DIR/vendor" ]]; then echo "vendor   $REPO_DIR/vendor: present"; else echo "vendor   $REPO_DIR/vendor: not set up"; fi
}

# ---- main ---------------------------------------------------------------------------------------
case "$cmd" in
  check) check; exit 0 ;;
  unvendor) unvendor; exit 0 ;;
esac
[[ $EUID -eq 0 ]] || [[ "$cmd" == vendor ]] || die "run as root (debootstrap, chroot and mount need it)"
command -v docker >/dev/null || [[ "$cmd" == vendor ]] || die "docker not found"
mkdir -p "$CACHE_DIR"
if [[ "$cmd" == all || "$cmd" == images ]]; then
  log "cache: $CACHE_DIR, suite: $SUITE, mirror: $MIRROR"
  import_debian
  import_rust
  dockerfile_hint
fi
if [[ "$cmd" == all || "$cmd" == vendor ]]; then
  vendor_crates
fi
log "done. Now: docker build -t restock . (or docker-compose build)"
