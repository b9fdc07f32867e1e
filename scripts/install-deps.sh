#!/usr/bin/env bash
# Install the Debian packages the tests drive, when they are missing (root only):
#   libiscsi-bin   iscsi-test-cu (libiscsi's conformance suite), iscsi-ls, iscsi-inq
#   qemu-utils     qemu-img, plus QEMU's iSCSI block driver (setup-qemu-iscsi.sh)
#   sg3-utils      sg_vpd (decodes VPD pages our initiator fetched, e.g. 0x8F)
#   open-iscsi     iscsiadm (the kernel here may have no initiator; installed for the
#                  README's commands and for tests that can use it)
# A policy-rc.d keeps apt from starting any service (open-iscsi's iscsid would start).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export DEBIAN_FRONTEND=noninteractive

if [[ $(id -u) != 0 ]]; then
  echo "install-deps.sh: not root: not installing anything (tests whose tools are missing skip outside CI)" >&2
  exit 0
fi

# apt must start no service (open-iscsi's iscsid, say): a policy-rc.d that refuses,
# for as long as this script installs, unless one is already there.
if [[ ! -e /usr/sbin/policy-rc.d ]]; then
  printf '#!/bin/sh\n# mosaic scripts/install-deps.sh: apt starts no services\nexit 101\n' >/usr/sbin/policy-rc.d
  chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi

missing=()
command -v iscsi-test-cu >/dev/null && command -v iscsi-ls >/dev/null && command -v iscsi-inq >/dev/null \
  || missing+=(libiscsi-bin)
command -v sg_vpd >/dev/null || missing+=(sg3-utils)
command -v iscsiadm >/dev/null || [[ -x /usr/sbin/iscsiadm || -x /sbin/iscsiadm ]] || missing+=(open-iscsi)
if (( ${#missing[@]} )); then
  echo "install-deps.sh: installing ${missing[*]}" >&2
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
qemu_img=$("$here/setup-qemu-iscsi.sh" | tail -1)
echo "install-deps.sh: qemu-img with iSCSI: $qemu_img" >&2
