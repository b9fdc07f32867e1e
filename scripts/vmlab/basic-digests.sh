#!/bin/bash
# Guest-side vmlab test (runs inside the vmlab VM, see ../shared/vmlab/run-test.sh):
# tests/basic.sh of the vmlab with CRC32C header AND data digests. The node record is
# set to HeaderDigest=CRC32C and DataDigest=CRC32C (no "None" fallback) before login,
# the negotiated values are checked with `iscsiadm -m session -P 2` and in sysfs,
# then the same checks as basic.sh run over the digest-protected session: checksum
# round trips, fio randrw, fio randwrite + verify, logout; and the kernel must not
# have logged any digest error.
# Env: TARGET_PORTAL (ip:port), optional TARGET_IQN, FIO_RUNTIME (s, default 20),
#      LUN (default 1; Mosaic exports LUN 0), DIGEST (default CRC32C).
. /usr/local/lib/vmlab/lib.sh
P=$TARGET_PORTAL
LUN=${LUN:-1}
FIO_RUNTIME=${FIO_RUNTIME:-20}
DIGEST=${DIGEST:-CRC32C}

step "discovery (sendtargets) on $P"
iscsiadm -m discovery -t sendtargets -p "$P" | tee /vmlab/out/discovery.txt
IQN=${TARGET_IQN:-$(awk '{print $2; exit}' /vmlab/out/discovery.txt)}
[ -n "$IQN" ] || die "discovery returned no target"
pass "discovery found $IQN"

step "node record: HeaderDigest=$DIGEST DataDigest=$DIGEST"
for k in HeaderDigest DataDigest; do
  check "set node.conn[0].iscsi.$k=$DIGEST" \
    iscsiadm -m node -T "$IQN" -p "$P" -o update -n "node.conn[0].iscsi.$k" -v "$DIGEST"
done
iscsiadm -m node -T "$IQN" -p "$P" | grep -E 'Digest' | sed 's/^/    /'

step "login"
check "login $IQN @ $P" iscsiadm -m node -T "$IQN" -p "$P" --login
iscsiadm -m session -P 2 | tee /vmlab/out/session-P2.txt | sed 's/^/    /'
for k in HeaderDigest DataDigest; do
  got=$(awk -v k="$k:" '$1 == k {print $2; exit}' /vmlab/out/session-P2.txt)
  check "negotiated $k is $DIGEST (iscsiadm says ${got:-nothing})" [ "$got" = "$DIGEST" ]
done
for f in /sys/class/iscsi_connection/connection*/header_digest /sys/class/iscsi_connection/connection*/data_digest; do
  [ -e "$f" ] && info "$f = $(cat "$f")"
done
DEV=$(iscsi_disk "$P" "$IQN" "$LUN") || die "no /dev/sdX for LUN $LUN"
pass "LUN $LUN is $DEV ($(blockdev --getsize64 "$DEV") bytes)"
sg_inq "$DEV" | sed -n '1,12p' | sed 's/^/    /'
sg_vpd -p di "$DEV" 2>/dev/null | sed 's/^/    /' | head -8

step "write + read back 32 MiB with checksum (O_DIRECT)"
head -c $((32*1024*1024)) /dev/urandom > /tmp/pattern
want=$(sha256sum < /tmp/pattern | cut -d' ' -f1)
dd if=/tmp/pattern of="$DEV" bs=1M oflag=direct conv=fsync status=none
echo 3 > /proc/sys/vm/drop_caches
got=$(dd if="$DEV" bs=1M count=32 iflag=direct status=none | sha256sum | cut -d' ' -f1)
info "want=$want"; info "got =$got"
check "sha256 round trip" [ "$want" = "$got" ]
SZ=$(blockdev --getsize64 "$DEV")
dd if=/tmp/pattern of="$DEV" bs=1M count=4 seek=$((SZ/1048576-4)) oflag=direct conv=fsync status=none
got2=$(dd if="$DEV" bs=1M count=4 skip=$((SZ/1048576-4)) iflag=direct status=none | sha256sum | cut -d' ' -f1)
check "sha256 at end of LUN" [ "$got2" = "$(head -c 4194304 /tmp/pattern | sha256sum | cut -d' ' -f1)" ]

step "fio 4k randrw ${FIO_RUNTIME}s (libaio, iodepth 16)"
fio --eta=never --name=randrw --filename="$DEV" --direct=1 --ioengine=libaio --rw=randrw --bs=4k --iodepth=16 \
    --size=64M --offset=64M --time_based --runtime="$FIO_RUNTIME" --group_reporting \
    --output-format=normal,json --output=/vmlab/out/fio-randrw.txt
rc=$?
grep -E '^ *(read|write): |^ *(clat|lat) \((u|m)sec\)|err=' /vmlab/out/fio-randrw.txt | sed 's/^/    /'
check "fio randrw exit 0" [ $rc -eq 0 ]
fio --eta=never --name=verify --filename="$DEV" --direct=1 --ioengine=libaio --rw=randwrite --bs=4k --iodepth=8 \
    --size=16M --offset=160M --verify=crc32c --do_verify=1 --output=/vmlab/out/fio-verify.txt
check "fio randwrite+verify(crc32c) 16 MiB" [ $? -eq 0 ]
# large transfers: 1 MiB sequential I/O spans several Data-In/Data-Out PDUs and R2Ts, each digested
fio --eta=never --name=seqverify --filename="$DEV" --direct=1 --ioengine=libaio --rw=write --bs=1M --iodepth=4 \
    --size=32M --offset=192M --verify=crc32c --do_verify=1 --output=/vmlab/out/fio-seqverify.txt
check "fio 1 MiB write+verify(crc32c) 32 MiB" [ $? -eq 0 ]

step "still digested, no digest errors"
check "session still uses $DIGEST for both digests" bash -c \
  "[ \$(iscsiadm -m session -P 2 | grep -cE '^[[:space:]]*(Header|Data)Digest: $DIGEST\$') -eq 2 ]"
dmesg | grep -iE 'digest|iscsi.*(error|fail)|conn.*error' | sed 's/^/    /' > /vmlab/out/dmesg-digest.txt
cat /vmlab/out/dmesg-digest.txt
check "kernel logged no digest error" bash -c '! grep -qi "digest" /vmlab/out/dmesg-digest.txt'

step "logout"
check "logout" iscsiadm -m node -T "$IQN" -p "$P" --logout
check "no sessions left" bash -c '! iscsiadm -m session >/dev/null 2>&1'
check "disk gone" bash -c "! [ -e $DEV ]"
summary
