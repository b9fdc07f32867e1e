#!/usr/bin/env bash
# The cluster's I/O modes, end to end: the same fio workload through node 1 of a
# 3-node `mosaic lab`, against
#   spread/forward   a volume spread over the 3 nodes, the lab in forward mode
#   spread/short-cut the same volume, the lab switched to short-cut mode
#   local            a volume whose every page has node 1 as its primary
# reporting IOPS and the lab process's CPU time per I/O (all three nodes run in the
# one process, so that is the whole cluster's cost of an I/O), and ratios against
# `local`, measured in the same run. Loopback only.
#
# Usage: bench/scripts/cluster-modes.sh     (from the repository root)
# Env:   RUNTIME (20 s)  RAMP (2 s)  ROUNDS (1)  PORT (3300; the link uses PORT+1)
#        WORKLOADS ("randread4k read64k randwrite4k")  SIZE (1G)
# Needs: build/release/mosaic (cargo build --release), fio with the libiscsi engine
#        (../shared/peers/build-fio-libiscsi.sh, /opt/fio-libiscsi/bin/fio).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PEERS=$REPO/../shared/peers
RUNTIME=${RUNTIME:-20}
RAMP=${RAMP:-2}
ROUNDS=${ROUNDS:-1}
PORT=${PORT:-3300}
SIZE=${SIZE:-1G}
WORKLOADS=${WORKLOADS:-randread4k read64k randwrite4k}
export CMD_TMO=$((RUNTIME + RAMP + 60))
OUT=${OUT:-$REPO/build/bench-cluster/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
MOSAIC=$REPO/build/release/mosaic
GROUP=127.0.0.1:$((PORT + 10))
ADMIN=127.0.0.1:$((PORT + 11))
log() { echo "cluster-modes: $*" >&2; }

export RESDIR=$OUT
# shellcheck source=/dev/null
source "$PEERS/bench-lib.sh"   # measure, fio_url, FIO_ISCSI, TSV=$OUT/bench.tsv
"$FIO_ISCSI" --enghelp=libiscsi >/dev/null 2>&1 || { log "no fio with libiscsi at $FIO_ISCSI"; exit 1; }
[[ -x $MOSAIC ]] || { log "build it first: cargo build --release"; exit 1; }

# ---- the lab ---------------------------------------------------------------------------
"$MOSAIC" lab --port "$PORT" --group-portal "$GROUP" --admin "$ADMIN" --data-dir "$OUT/data" \
  --volume "name=spread,size=$SIZE,backing=memory" --volume "name=local,size=$SIZE,backing=memory" \
  --log warn >"$OUT/lab.log" 2>&1 &
TPID=$!
export TPID
trap 'kill $TPID 2>/dev/null; wait $TPID 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  "$MOSAIC" status --admin "$ADMIN" >/dev/null 2>&1 && break
  sleep 0.1
done
kill -0 "$TPID" || { log "the lab did not start: $OUT/lab.log"; exit 1; }
PAGES=$("$MOSAIC" routing show local --admin "$ADMIN" | sed -n 's/.* in \([0-9]*\) pages.*/\1/p')
"$MOSAIC" routing move local --pages "0-$((PAGES - 1))" --to 1 --admin "$ADMIN" >&2
"$MOSAIC" routing show spread --admin "$ADMIN" >"$OUT/routing-spread.txt"
"$MOSAIC" routing show local --admin "$ADMIN" >"$OUT/routing-local.txt"
# Write every block once so reads return data (memory volumes read zeros otherwise).
for v in spread local; do
  "$FIO_ISCSI" --name=fill --ioengine=libiscsi --initiator=iqn.2024-01.org.example:fio \
    --filename="$(fio_url "iscsi://127.0.1.1:$PORT/iqn.2026-11.io.mosaic:$v/0")" \
    --rw=write --bs=1m --iodepth=8 >"$OUT/fill-$v.log" 2>&1
done

run() {  # LABEL VOLUME
  local label=$1 vol=$2 wl rw bs qd json
  for wl in $WORKLOADS; do
    case $wl in
      randread4k)  rw=randread;  bs=4k;  qd=32 ;;
      randwrite4k) rw=randwrite; bs=4k;  qd=32 ;;
      read64k)     rw=randread;  bs=64k; qd=8 ;;
      *) log "unknown workload $wl"; continue ;;
    esac
    json=$OUT/fio-${label//\//-}-$wl-r$round.json
    measure "$label" fio-libiscsi "$wl" "$bs" "$qd" 1 fio-json "$json" -- \
      "$FIO_ISCSI" --name="$wl" --ioengine=libiscsi --initiator=iqn.2024-01.org.example:fio \
      --filename="$(fio_url "iscsi://127.0.1.1:$PORT/iqn.2026-11.io.mosaic:$vol/0")" \
      --rw=$rw --bs=$bs --iodepth=$qd --time_based --runtime="$RUNTIME" --ramp_time="$RAMP" \
      --output-format=json --output="$json" >/dev/null
  done
}

for round in $(seq "$ROUNDS"); do
  "$MOSAIC" io-mode forward --admin "$ADMIN" >&2
  run spread/forward spread
  "$MOSAIC" io-mode short-cut --admin "$ADMIN" >&2
  run spread/short-cut spread
  "$MOSAIC" io-mode forward --admin "$ADMIN" >&2
  run local local
done
"$MOSAIC" status --admin "$ADMIN" >"$OUT/status.txt"

# ---- report: IOPS, CPU µs per I/O, ratios to `local` ------------------------------------
python3 - "$TSV" <<'PY' | tee "$OUT/report.md"
import csv, sys, statistics
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
by = {}
for r in rows:
    if not r["iops"]:
        continue
    iops = float(r["iops"])
    cpu_us = float(r["target_cpu_pct"]) / 100 / iops * 1e6 if iops else 0
    by.setdefault((r["workload"], r["target"]), []).append((iops, cpu_us))
print("| workload | through node 1 to | IOPS | lab CPU µs/I/O | IOPS vs local | CPU/I/O vs local |")
print("|---|---|---:|---:|---:|---:|")
for wl in dict.fromkeys(w for w, _ in by):
    base = by.get((wl, "local"))
    b_iops = statistics.median(x[0] for x in base) if base else None
    b_cpu = statistics.median(x[1] for x in base) if base else None
    for t in ("spread/forward", "spread/short-cut", "local"):
        if (wl, t) not in by:
            continue
        iops = statistics.median(x[0] for x in by[(wl, t)])
        cpu = statistics.median(x[1] for x in by[(wl, t)])
        r1 = f"{iops / b_iops:.2f}" if b_iops else ""
        r2 = f"{cpu / b_cpu:.2f}" if b_cpu else ""
        print(f"| {wl} | {t} | {iops:.0f} | {cpu:.1f} | {r1} | {r2} |")
PY
log "results in $OUT"
