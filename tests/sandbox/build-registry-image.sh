#!/usr/bin/env bash
# Derive a multi-layer image from an existing one, with umoci only, for the registry tests:
# the source image's layers, then two more that exercise what unpacking must get right.
#
# Usage: build-registry-image.sh SRC_LAYOUT SRC_TAG DST_LAYOUT DST_TAG [MARKER]
#
#   SRC_LAYOUT:SRC_TAG  an existing image (e.g. the test app, build-test-image.sh)
#   DST_LAYOUT:DST_TAG  created (the layout too, if missing); an existing tag is replaced
#   MARKER              written to /data/marker (default DST_TAG): images built with
#                       different markers share the source's layers but not the last ones
#
# Layer +1: /data with files, a hardlinked pair (/data/a.txt, /data/a-link), a hardlink
#           into a subdirectory, a symlink, a setuid file, a 0750 directory owned by
#           1000:1000, a fifo.
# Layer +2: deletes /etc/hostname and /data/dir (whiteouts for a file and a directory),
#           rewrites /data/a.txt (its hardlink follows), adds /data/new.txt with a hardlink,
#           and /data/marker.
set -euo pipefail

die() { echo "build-registry-image.sh: $*" >&2; exit 1; }
(($# >= 4 && $# <= 5)) || die "usage: $0 SRC_LAYOUT SRC_TAG DST_LAYOUT DST_TAG [MARKER]"
SRC="$1" SRC_TAG="$2" DST="$3" DST_TAG="$4" MARKER="${5:-$4}"
for tool in umoci skopeo; do command -v "$tool" >/dev/null || die "$tool not found"; done

mkdir -p "$(dirname "$DST")"
WORK="$(mktemp -d /tmp/build-registry-image.XXXXXX)"
trap 'rm -rf --one-file-system "$WORK"' EXIT

# The base, as an intermediate tag in the destination layout.
skopeo copy --quiet "oci:$SRC:$SRC_TAG" "oci:$DST:$DST_TAG-base" >/dev/null
if umoci ls --layout "$DST" | grep -qxF "$DST_TAG"; then
  umoci rm --image "$DST:$DST_TAG"
fi

B="$WORK/b1"
umoci unpack --image "$DST:$DST_TAG-base" "$B" >/dev/null
R="$B/rootfs"
install -d -m 0755 "$R/data" "$R/data/dir"
echo "first version" >"$R/data/a.txt"
ln "$R/data/a.txt" "$R/data/a-link"
echo b >"$R/data/dir/b.txt"
ln "$R/data/dir/b.txt" "$R/data/b-hardlink"
echo c >"$R/data/dir/c.txt"
ln -s dir/c.txt "$R/data/c-symlink"
echo setuid >"$R/data/suid" && chmod 4755 "$R/data/suid"
install -d -m 0750 -o 1000 -g 1000 "$R/data/private"
echo secret >"$R/data/private/s" && chown 1000:1000 "$R/data/private/s" && chmod 0600 "$R/data/private/s"
mkfifo -m 0620 "$R/data/fifo"
umoci repack --image "$DST:$DST_TAG-l1" "$B" >/dev/null
rm -rf --one-file-system "$B"

B="$WORK/b2"
umoci unpack --image "$DST:$DST_TAG-l1" "$B" >/dev/null
R="$B/rootfs"
rm -f "$R/etc/hostname"
rm -rf "$R/data/dir"
echo "second version" >"$R/data/a.txt"
echo new >"$R/data/new.txt"
ln "$R/data/new.txt" "$R/data/new-link"
echo "$MARKER" >"$R/data/marker"
umoci repack --image "$DST:$DST_TAG" "$B" >/dev/null
rm -rf --one-file-system "$B"

umoci rm --image "$DST:$DST_TAG-base"
umoci rm --image "$DST:$DST_TAG-l1"
umoci gc --layout "$DST"
echo "built $DST:$DST_TAG from $SRC:$SRC_TAG"
