#!/usr/bin/env bash
# Make sure a qemu-img with QEMU's iSCSI block driver (block-iscsi.so) is available.
#
# QEMU only loads modules from its own build ("Only modules from the same build can be
# loaded"), so qemu-block-extra must match qemu-utils exactly:
#   1. The qemu-img on PATH already has a working iSCSI driver: nothing to do.
#   2. qemu-utils is missing, or its version matches the qemu-block-extra apt offers:
#      `apt-get install qemu-utils qemu-block-extra` (the ordinary Debian way).
#   3. Otherwise (e.g. qemu-utils from bookworm-backports, with no matching
#      qemu-block-extra): unpack the matching pair of .debs side by side into $DEST
#      with `dpkg -x`, leaving the installed qemu-utils alone. Use it as
#        QEMU_MODULE_DIR=$DEST/usr/lib/x86_64-linux-gnu/qemu $DEST/usr/bin/qemu-img ...
#      (the tests in tests/ look there by themselves).
#
# Needs root for 2 and 3. Prints the qemu-img to use on its last line.
set -euo pipefail
DEST=${DEST:-/opt/qemu72}
export DEBIAN_FRONTEND=noninteractive

# Does this qemu-img (with this module dir) have a loadable iSCSI driver? Port 1 on
# loopback refuses the connection: a driver that exists says "iSCSI: ...".
has_iscsi() { # $1 = qemu-img, $2 = module dir or ""
  local out
  out=$(QEMU_MODULE_DIR=${2:-} timeout 20 "$1" info iscsi://127.0.0.1:1/iqn.2000-01.invalid:probe/0 2>&1 || true)
  [[ $out == *iSCSI:* ]]
}

moddir=$DEST/usr/lib/x86_64-linux-gnu/qemu
if [[ -x $DEST/usr/bin/qemu-img ]] && has_iscsi "$DEST/usr/bin/qemu-img" "$moddir"; then
  echo "$DEST/usr/bin/qemu-img"; exit 0
fi
if command -v qemu-img >/dev/null && has_iscsi "$(command -v qemu-img)" ""; then
  command -v qemu-img; exit 0
fi
[[ $(id -u) == 0 ]] || { echo "setup-qemu-iscsi.sh: need root to install qemu's iSCSI driver" >&2; exit 1; }

installed=$(dpkg-query -W -f='${db:Status-Status} ${Version}' qemu-utils 2>/dev/null | awk '$1=="installed"{print $2}')
extra=$(apt-cache policy qemu-block-extra | awk '/Candidate:/ {print $2}')
if [[ -z $extra || $extra == "(none)" ]]; then
  apt-get update -qq
  extra=$(apt-cache policy qemu-block-extra | awk '/Candidate:/ {print $2}')
fi
if [[ -z $installed || $installed == "$extra" ]]; then
  apt-get install -y -qq --no-install-recommends qemu-utils qemu-block-extra >/dev/null
  if has_iscsi "$(command -v qemu-img)" ""; then command -v qemu-img; exit 0; fi
  echo "setup-qemu-iscsi.sh: qemu-block-extra installed, but qemu-img still has no iSCSI driver" >&2
  exit 1
fi

# The installed qemu-utils ($installed) does not match qemu-block-extra ($extra):
# unpack the matching pair beside it, without touching the installed one.
echo "setup-qemu-iscsi.sh: qemu-utils $installed has no matching qemu-block-extra; unpacking $extra into $DEST" >&2
apt-get install -y -qq --no-install-recommends libiscsi7 >/dev/null
tmp=$(mktemp -d); chmod 755 "$tmp"
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && apt-get download -qq "qemu-utils=$extra" "qemu-block-extra=$extra")
mkdir -p "$DEST"
for d in "$tmp"/*.deb; do dpkg -x "$d" "$DEST"; done
# The unpacked qemu-img may need libraries the newer qemu-utils does not: install
# whatever its Depends list names that is missing (shared libraries only).
deps=$(dpkg-deb -f "$tmp"/qemu-utils_*.deb Depends | tr ',' '\n' | sed 's/[ (].*//; s/^ *//' | grep -E '^lib' || true)
missing=()
for p in $deps; do dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null | grep -q installed || missing+=("$p"); done
if (( ${#missing[@]} )); then apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; fi
if has_iscsi "$DEST/usr/bin/qemu-img" "$moddir"; then
  QEMU_MODULE_DIR=$moddir "$DEST/usr/bin/qemu-img" --version | head -1 >&2
  echo "$DEST/usr/bin/qemu-img"; exit 0
fi
echo "setup-qemu-iscsi.sh: $DEST/usr/bin/qemu-img has no working iSCSI driver" >&2
exit 1
