#!/usr/bin/env bash
# Build a minimal OCI image of shim-testapp into an OCI image layout, with
# umoci only (no registry, no daemon).
#
# Usage: build-test-image.sh LAYOUT_DIR TAG REVISION [APP_BINARY]
#
#   LAYOUT_DIR  OCI image layout; created (umoci init) if it does not exist.
#               Several tags can live in one layout: call once per TAG.
#   TAG         tag to (re)create, e.g. v1. An existing TAG is replaced.
#   REVISION    baked into the image as env APP_REVISION (GET / echoes it)
#               and as the org.opencontainers.image.revision label.
#   IMAGE_CRONTAB (env) the crontab bin/generate-cron prints (default: empty).
#   IMAGE_DEVICE (env) "b MAJOR MINOR" or "c MAJOR MINOR": a device node at /app/hostdev,
#               as a hostile image would ship one (default: none).
#   APP_BINARY  defaults to target/release/shim-testapp in the repository
#               (build it with: cargo build --release --bin shim-testapp).
#
# Image: entrypoint /app/testapp, workdir /app, user root (default), env
# PATH and APP_REVISION. Rootfs: busybox-static at /bin/busybox with all its
# applets as symlinks (sh, ls, cat, sleep, echo, id, env, touch, wget, ...),
# the testapp and the shared libraries it needs at the same paths as on the
# host (incl. the dynamic loader), /etc/passwd and /etc/group with root and
# app (1000:1000), /tmp with mode 1777.
#
# Check the result with:
#   umoci unpack --image LAYOUT_DIR:TAG BUNDLE    (as root: keeps ownership)
#   skopeo inspect oci:LAYOUT_DIR:TAG
set -euo pipefail

die() { echo "build-test-image.sh: $*" >&2; exit 1; }

(($# >= 3 && $# <= 4)) || die "usage: $0 LAYOUT_DIR TAG REVISION [APP_BINARY]"
REPO_ROOT="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/../.." && pwd -P)"
LAYOUT="$1"
TAG="$2"
REVISION="$3"
APP="${4:-$REPO_ROOT/target/release/shim-testapp}"
BUSYBOX=/bin/busybox # from busybox-static: statically linked, no libs needed

# OCI tags: [A-Za-z0-9_][A-Za-z0-9._-]{0,127}
[[ "$TAG" =~ ^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$ ]] || die "invalid tag: $TAG"
[[ -x "$APP" ]] || die "app binary not found: $APP (cargo build --release --bin shim-testapp)"
[[ -x "$BUSYBOX" ]] || die "$BUSYBOX missing (apt-get install busybox-static)"
if ldd "$BUSYBOX" >/dev/null 2>&1; then
  die "$BUSYBOX is dynamically linked; install busybox-static"
fi
for tool in umoci jq ldd; do
  command -v "$tool" >/dev/null || die "$tool not found"
done

# --- layout -----------------------------------------------------------------
if [[ ! -e "$LAYOUT/index.json" ]]; then
  if [[ -d "$LAYOUT" ]]; then
    # umoci init refuses an existing path; an empty dir is fine to replace.
    rmdir "$LAYOUT" 2>/dev/null || die "$LAYOUT exists and is not an OCI layout"
  fi
  mkdir -p "$(dirname "$LAYOUT")"
  umoci init --layout "$LAYOUT"
fi
LAYOUT="$(cd "$LAYOUT" && pwd -P)"

# Serialize builds into the same layout: umoci does not lock index.json, and
# concurrent builds of different tags would lose one of the updates. flock on
# the directory itself so no extra file appears in the layout.
exec 9<"$LAYOUT"
flock 9

# Replace the tag if it exists (umoci new refuses to overwrite a tag).
if umoci ls --layout "$LAYOUT" | grep -qxF "$TAG"; then
  umoci rm --image "$LAYOUT:$TAG"
fi

WORK="$(mktemp -d /tmp/build-test-image.XXXXXX)"
trap 'rm -rf --one-file-system "$WORK"' EXIT
BUNDLE="$WORK/bundle"

umoci new --image "$LAYOUT:$TAG"
umoci unpack --image "$LAYOUT:$TAG" "$BUNDLE"
ROOTFS="$BUNDLE/rootfs"

# --- rootfs -----------------------------------------------------------------
install -d -m 0755 "$ROOTFS"/{bin,sbin,usr/bin,usr/sbin,etc,app,home,proc,sys,dev,run,var}
install -d -m 0700 "$ROOTFS/root"
install -d -m 1777 "$ROOTFS/tmp" "$ROOTFS/var/tmp"
install -d -m 0755 -o 1000 -g 1000 "$ROOTFS/home/app"

install -m 0755 "$BUSYBOX" "$ROOTFS/bin/busybox"
# Same result as `busybox --install -s`, without running anything in the
# rootfs: one symlink per applet at its canonical path (bin/sh, usr/bin/wget..).
while read -r applet; do
  [[ -n "$applet" && "$applet" != bin/busybox ]] || continue
  mkdir -p "$ROOTFS/$(dirname "$applet")"
  ln -sfn /bin/busybox "$ROOTFS/$applet"
done < <("$BUSYBOX" --list-full)
for a in sh ls cat sleep echo id env touch wget; do
  [[ -e "$ROOTFS/bin/$a" || -e "$ROOTFS/usr/bin/$a" ]] || die "busybox lacks applet $a"
done

install -m 0755 "$APP" "$ROOTFS/app/testapp"
# The app's crontab generator (services.ID.cron = "bin/generate-cron"): prints /app/crontab,
# which is IMAGE_CRONTAB (empty by default).
install -d -m 0755 "$ROOTFS/app/bin"
printf '%s' "${IMAGE_CRONTAB:-}" >"$ROOTFS/app/crontab"
printf '#!/bin/sh\ncat /app/crontab\n' >"$ROOTFS/app/bin/generate-cron"
chmod 0755 "$ROOTFS/app/bin/generate-cron"
# Shared libraries, at the path the binary will look for them (as ldd
# reports: "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6" and the loader as a
# bare "/lib64/ld-linux-x86-64.so.2"). cp -L: copy the file, not the symlink,
# so /lib64/ld-linux-x86-64.so.2 is a real file in the image.
if ldd "$APP" >/dev/null 2>&1; then
  while read -r lib; do
    [[ -n "$lib" ]] || continue
    mkdir -p "$ROOTFS$(dirname "$lib")"
    cp -L "$lib" "$ROOTFS$lib"
  done < <(ldd "$APP" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' | sort -u)
fi

cat >"$ROOTFS/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
app:x:1000:1000:app:/home/app:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
cat >"$ROOTFS/etc/group" <<'EOF'
root:x:0:
app:x:1000:
nogroup:x:65534:
EOF
if [[ -n "${IMAGE_DEVICE:-}" ]]; then
  # shellcheck disable=SC2086 # "b 7 0": three words on purpose
  mknod "$ROOTFS/app/hostdev" ${IMAGE_DEVICE}
  chmod 0666 "$ROOTFS/app/hostdev"
fi
# Existing files so a runtime can bind-mount over them.
printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$ROOTFS/etc/hosts"
: >"$ROOTFS/etc/resolv.conf"
echo testapp >"$ROOTFS/etc/hostname"
chmod 0644 "$ROOTFS"/etc/{passwd,group,hosts,resolv.conf,hostname}

# --- image ------------------------------------------------------------------
# IMAGE_ENV="K=V K2=V2" adds variables to the image config (e.g. APP_HEALTH_FAIL=1 for a
# revision whose health check fails).
extra_env=()
for kv in ${IMAGE_ENV:-}; do extra_env+=(--config.env "$kv"); done
umoci repack --image "$LAYOUT:$TAG" "$BUNDLE"
umoci config --image "$LAYOUT:$TAG" \
  --config.entrypoint /app/testapp \
  --clear config.cmd \
  --config.workingdir /app \
  --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --config.env "APP_REVISION=$REVISION" \
  "${extra_env[@]}" \
  --config.exposedports 8080/tcp \
  --config.label "org.opencontainers.image.revision=$REVISION" \
  --history.created_by "build-test-image.sh $TAG $REVISION"
# Drop blobs no longer referenced (e.g. from a replaced tag).
umoci gc --layout "$LAYOUT"

echo "built $LAYOUT:$TAG (revision $REVISION)"
