#!/usr/bin/env bash
# End-to-end benchmark: mosaic against tgt and istgt, in ONE run, on the SAME backing file,
# with the same clients (fio's libiscsi engine and libiscsi's iscsi-perf), all on 127.0.0.1.
#
#   bench/scripts/e2e.sh                      # full run: RUNTIME=20 s per measurement (~25 min)
#   RUNTIME=5 JOBS=1 bench/scripts/e2e.sh     # quick check
#
# What it does:
#   1. builds fio with the libiscsi engine if missing (../shared/peers/build-fio-libiscsi.sh)
#      and `mosaic` in release mode;
#   2. creates one 1 GiB backing file filled with real zeros (once; re-used if it has the
#      right size), which every target serves in turn; targets are started one at a time
#      and each is stopped before the next starts;
#   3. for each target: fio-libiscsi randread4k/randwrite4k at QD 32 and read128k/write128k
#      at QD 8, for each job count in JOBS (each fio job = one iSCSI session), then
#      iscsi-perf randread4k (QD 32) and read128k (QD 8), one session;
#   4. records every run through ../shared/peers/bench-lib.sh's `measure` (IOPS, MB/s,
#      latency, target CPU = utime+stime of the target process from /proc/PID/stat);
#   5. prints a markdown table (e2e-report.py) with mosaic/tgt and mosaic/istgt ratios and
#      the target's CPU time per I/O.
#
# Env knobs:
#   RUNTIME (20)  RAMP (2)  JOBS ("1 2")  TARGETS ("mosaic tgt istgt")
#   WORKLOADS ("randread4k randwrite4k read128k write128k")  PERF (1: also run iscsi-perf)
#   ROUNDS (1): repeat the whole sequence, every other round in reverse target order; the
#             report then shows the median of the rounds (the mean of two)
#   OUT       results dir                 (default build/bench-e2e/<UTC time>)
#   WORKDIR   backing file + peer state   (default /var/tmp/mosaic-e2e)
#   MOSAIC_PORT (3290) TGT_PORT (3291) ISTGT_PORT (3292; +1 its control port, +2 its 2nd portal)
#   TGT_CTRL  tgtd -C control-socket number (default: the first of 60..99 with no
#             /var/run/tgtd/socket.N, so a colleague's tgtd is never touched)
#   SKIP_BUILD=1  use build/release/mosaic as it is
#   CMD_TMO (RUNTIME+RAMP+60): per-command time limit, enforced by measure()
set -uo pipefail

REPO=$(git -C "$(dirname "$0")" rev-parse --show-toplevel) || exit 1
PEERS=${PEERS:-$REPO/../shared/peers}
[[ -r $PEERS/bench-lib.sh ]] || { echo "no $PEERS/bench-lib.sh (../shared beside the repo)" >&2; exit 1; }
PEERS=$(cd "$PEERS" && pwd)

RUNTIME=${RUNTIME:-20}
RAMP=${RAMP:-2}
JOBS=${JOBS:-1 2}
TARGETS=${TARGETS:-mosaic tgt istgt}
WORKLOADS=${WORKLOADS:-randread4k randwrite4k read128k write128k}
PERF=${PERF:-1}
ROUNDS=${ROUNDS:-1}
WORKDIR=${WORKDIR:-/var/tmp/mosaic-e2e}
MOSAIC_PORT=${MOSAIC_PORT:-3290}
TGT_PORT=${TGT_PORT:-3291}
TGT_CTRL=${TGT_CTRL:-}
ISTGT_PORT=${ISTGT_PORT:-3292}
export CMD_TMO=${CMD_TMO:-$((RUNTIME + RAMP + 60))}
OUT=${OUT:-$REPO/build/bench-e2e/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT" "$WORKDIR"
OUT=$(cd "$OUT" && pwd)
IMG=$WORKDIR/backing.img
SIZE_MB=1024
MOSAIC=$REPO/build/release/mosaic
INITIATOR_FIO=iqn.2024-01.org.example:fio
INITIATOR_PERF=iqn.2024-01.org.example:iscsi-perf
log() { echo "e2e: $*" >&2; }

# ---- clients and the target binary ---------------------------------------------------------
export RESDIR=$OUT
# shellcheck source=/dev/null
source "$PEERS/bench-lib.sh"   # measure, fio_url, FIO_ISCSI, TSV=$OUT/bench.tsv
if ! "$FIO_ISCSI" --enghelp=libiscsi >/dev/null 2>&1; then
  log "building fio with libiscsi ($FIO_ISCSI)"
  "$PEERS/build-fio-libiscsi.sh" >"$OUT/build-fio.log" 2>&1 || { log "fio build failed: $OUT/build-fio.log"; exit 1; }
fi
command -v iscsi-perf >/dev/null || { log "no iscsi-perf (apt-get install libiscsi-bin)"; exit 1; }
if [[ ${SKIP_BUILD:-0} != 1 ]]; then
  log "building mosaic (release)"
  (cd "$REPO" && cargo build --release -p mosaic-target) || { log "cargo build failed"; exit 1; }
fi
[[ -x $MOSAIC ]] || { log "no $MOSAIC"; exit 1; }
# run a private copy: a colleague's `cargo build` must not swap the binary mid-run
cp "$MOSAIC" "$OUT/mosaic" || exit 1
MOSAIC=$OUT/mosaic

# ---- the one backing file ------------------------------------------------------------------
want=$((SIZE_MB * 1024 * 1024))
if [[ $(stat -c %s "$IMG" 2>/dev/null || echo 0) -ne $want ]]; then
  log "writing $IMG ($SIZE_MB MiB of zeros)"
  rm -f "$IMG"
  dd if=/dev/zero of="$IMG" bs=1M count="$SIZE_MB" status=none conv=fsync || exit 1
fi
export WARM_FILE=$IMG   # measure() reads it through the page cache before every run

# ---- target lifecycle ----------------------------------------------------------------------
# Each start_* sets TPID and URL; stop_current stops whatever is running.  The EXIT trap
# stops it too, so an interrupted run leaves no server behind.
CUR=""; TPID=""; URL=""; MOSAIC_PID=""
TGT_STATE=$WORKDIR/tgt-$TGT_PORT
ISTGT_STATE=$WORKDIR/istgt-$ISTGT_PORT

port_free() { ! ss -Hltn "sport = :$1" | grep -q .; }
alive() { [[ -r /proc/$1/stat ]] && [[ $(sed 's/.*) //' "/proc/$1/stat" | cut -d' ' -f1) != Z ]]; }

start_mosaic() {
  port_free "$MOSAIC_PORT" || { log "port $MOSAIC_PORT busy"; return 1; }
  "$MOSAIC" serve --log warn --portal "127.0.0.1:$MOSAIC_PORT" \
    --volume "name=e2e,size=${SIZE_MB}M,block=512,backing=file,path=$IMG" \
    >"$OUT/mosaic.log" 2>&1 &
  MOSAIC_PID=$!
  local i
  for i in $(seq 1 100); do
    ! port_free "$MOSAIC_PORT" && break
    alive "$MOSAIC_PID" || { log "mosaic died:"; cat "$OUT/mosaic.log" >&2; return 1; }
    sleep 0.1
  done
  port_free "$MOSAIC_PORT" && { log "mosaic did not listen after ${i}x0.1 s"; return 1; }
  TPID=$MOSAIC_PID
  URL=iscsi://127.0.0.1:$MOSAIC_PORT/iqn.2026-11.io.mosaic:e2e/0
}
stop_mosaic() {
  [[ -n $MOSAIC_PID ]] || return 0
  if alive "$MOSAIC_PID"; then
    kill -TERM "$MOSAIC_PID" 2>/dev/null
    for _ in $(seq 1 50); do alive "$MOSAIC_PID" || break; sleep 0.1; done
    alive "$MOSAIC_PID" && { log "mosaic ignored SIGTERM for 5 s: SIGKILL"; kill -KILL "$MOSAIC_PID"; }
  fi
  wait "$MOSAIC_PID" 2>/dev/null
  MOSAIC_PID=""
}
start_tgt() {
  port_free "$TGT_PORT" || { log "port $TGT_PORT busy"; return 1; }
  if [[ -z $TGT_CTRL ]]; then
    local n
    for n in $(seq 60 99); do [[ -e /var/run/tgtd/socket.$n ]] || { TGT_CTRL=$n; break; }; done
    [[ -n $TGT_CTRL ]] || { log "no free tgtd control socket number in 60..99"; return 1; }
  fi
  PORT=$TGT_PORT CTRL=$TGT_CTRL STATE=$TGT_STATE IMG=$IMG SIZE_MB=$SIZE_MB PORT2='' \
    "$PEERS/tgt-up.sh" >"$OUT/tgt-up.log" 2>&1 || { log "tgt-up failed:"; cat "$OUT/tgt-up.log" >&2; return 1; }
  TPID=$(cat "$TGT_STATE/tgtd.pid")
  URL=iscsi://127.0.0.1:$TGT_PORT/iqn.2024-01.org.example:tgt.disk1/1
}
stop_tgt() { PORT=$TGT_PORT STATE=$TGT_STATE "$PEERS/tgt-down.sh" >/dev/null 2>&1; }
start_istgt() {
  # istgt-up.sh serves $STATE/lun0.img: make that a hard link to the one backing file
  # (same inode, so istgt-up.sh sees the right size and leaves the data alone).
  local p
  for p in "$ISTGT_PORT" $((ISTGT_PORT + 1)) $((ISTGT_PORT + 2)); do
    port_free "$p" || { log "port $p busy"; return 1; }
  done
  mkdir -p "$ISTGT_STATE"
  if ! [[ $ISTGT_STATE/lun0.img -ef $IMG ]]; then
    rm -f "$ISTGT_STATE/lun0.img"
    ln "$IMG" "$ISTGT_STATE/lun0.img" || { log "cannot hard-link $IMG into $ISTGT_STATE"; return 1; }
  fi
  PORT=$ISTGT_PORT PORT2=$((ISTGT_PORT + 2)) UCPORT=$((ISTGT_PORT + 1)) STATE=$ISTGT_STATE SIZE_MB=$SIZE_MB \
    "$PEERS/istgt-up.sh" >"$OUT/istgt-up.log" 2>&1 || { log "istgt-up failed:"; cat "$OUT/istgt-up.log" >&2; return 1; }
  TPID=$(cat "$ISTGT_STATE/istgt.pid")
  URL=iscsi://127.0.0.1:$ISTGT_PORT/iqn.2024-01.org.example.istgt:disk1/0
}
stop_istgt() { PORT=$ISTGT_PORT STATE=$ISTGT_STATE "$PEERS/istgt-down.sh" >/dev/null 2>&1; }
stop_current() {
  case $CUR in
    mosaic) stop_mosaic ;;
    tgt) stop_tgt ;;
    istgt) stop_istgt ;;
  esac
  CUR=""; TPID=""; URL=""
}
trap 'stop_current' EXIT
trap 'log "interrupted"; exit 130' INT TERM

# ---- the runs ------------------------------------------------------------------------------
{
  echo "date: $(date -u +%FT%TZ)"
  echo "host: $(uname -r), $(nproc) CPUs, $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
  lscpu | grep -E 'Model name|Hypervisor vendor' | sed 's/  */ /g'
  echo "mosaic: $(git -C "$REPO" rev-parse --short HEAD)$(git -C "$REPO" diff --quiet HEAD -- proto target || echo ' +uncommitted changes in proto/ or target/'), binary sha256 $(sha256sum "$MOSAIC" | cut -c1-16)"
  echo "tgt: $(dpkg-query -W -f '${Version}' tgt 2>/dev/null); istgt: $(dpkg-query -W -f '${Version}' istgt 2>/dev/null); libiscsi: $(dpkg-query -W -f '${Version}' libiscsi-bin 2>/dev/null); fio: $("$FIO_ISCSI" --version)"
  echo "backing file: $IMG ($SIZE_MB MiB, $(df --output=fstype "$IMG" | tail -1), served by all three)"
  echo "RUNTIME=$RUNTIME RAMP=$RAMP JOBS=\"$JOBS\" TARGETS=\"$TARGETS\" ROUNDS=$ROUNDS"
} >"$OUT/machine.txt"
: >"$OUT/load.tsv"

run_fio() {  # LABEL
  local label=$1 jobs wl rw bs qd split out
  for jobs in $JOBS; do
    for wl in $WORKLOADS; do
      case $wl in
        randread4k)  rw=randread;  bs=4k;   qd=32 ;;
        randwrite4k) rw=randwrite; bs=4k;   qd=32 ;;
        read128k)    rw=read;      bs=128k; qd=8 ;;
        write128k)   rw=write;     bs=128k; qd=8 ;;
        *) log "unknown workload $wl"; continue ;;
      esac
      # several sequential jobs each get their own slice of the LUN; random jobs roam all of it
      split=()
      if [[ $rw == read || $rw == write ]] && ((jobs > 1)); then
        split=(--size=$((100 / jobs))% --offset_increment=$((100 / jobs))%)
      fi
      out=$OUT/fio-$label-$wl-j$jobs-r$round.json   # $round: the loop at the bottom
      sync   # flush the previous run's dirty pages so they do not land in this run
      printf '%s\tfio-libiscsi\t%s\t%s\t%s\n' "$label" "$wl" "$jobs" "$(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/load.tsv"
      measure "$label" fio-libiscsi "$wl" "$bs" "$qd" "$jobs" fio-json "$out" -- \
        "$FIO_ISCSI" --name="$wl" --ioengine=libiscsi --initiator="$INITIATOR_FIO" \
        --filename="$(fio_url "$URL")" --rw=$rw --bs=$bs --iodepth=$qd --numjobs="$jobs" "${split[@]}" \
        --group_reporting --time_based --runtime="$RUNTIME" --ramp_time="$RAMP" --randrepeat=0 \
        --output-format=json --output="$out" >&2 ||
        { log "$label fio $wl j$jobs failed: $OUT/failed-$label-$wl-j$jobs.log"; cp "$OUT/last-cmd.log" "$OUT/failed-$label-$wl-j$jobs.log"; }
      alive "$TPID" || { log "$label died during fio $wl j$jobs"; return 1; }
    done
  done
}
run_perf() {  # LABEL  (iscsi-perf: READ16 only, one session; 512-byte blocks)
  local label=$1 wl bs qd rnd
  for wl in randread4k read128k; do
    case $wl in
      randread4k) bs=4096;   qd=32; rnd=(-r) ;;
      read128k)   bs=131072; qd=8;  rnd=() ;;
    esac
    sync
    printf '%s\tiscsi-perf\t%s\t1\t%s\n' "$label" "$wl" "$(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/load.tsv"
    measure "$label" iscsi-perf "$wl" "$bs" "$qd" 1 iscsi-perf -- \
      iscsi-perf -i "$INITIATOR_PERF" -m "$qd" -b $((bs / 512)) "${rnd[@]}" -t "$RUNTIME" "$URL" >&2 ||
      { log "$label iscsi-perf $wl failed: $OUT/failed-$label-perf-$wl.log"; cp "$OUT/last-cmd.log" "$OUT/failed-$label-perf-$wl.log"; }
    alive "$TPID" || { log "$label died during iscsi-perf $wl"; return 1; }
  done
}

order=$TARGETS
for ((round = 1; round <= ROUNDS; round++)); do
  for t in $order; do
    case $t in mosaic|tgt|istgt) ;; *) log "unknown target $t"; continue ;; esac
    log "round $round/$ROUNDS, $t: starting on the shared backing file (load $(cut -d' ' -f1-3 /proc/loadavg))"
    CUR=$t
    if ! "start_$t"; then stop_current; continue; fi
    log "$t: pid $TPID, $URL"
    run_fio "$t" && { [[ $PERF != 1 ]] || run_perf "$t"; }
    stop_current
    log "$t: stopped"
  done
  # the next round visits the targets in reverse order, so slow drifts in the machine's
  # background load do not always favour the same target
  order=$(echo "$order" | tr ' ' '\n' | tac | tr '\n' ' ')
done
trap - EXIT

python3 "$REPO/bench/scripts/e2e-report.py" "$OUT" >"$OUT/report.md" || exit 1
cat "$OUT/report.md"
log "raw results in $OUT (bench.tsv, fio JSON, load.tsv, machine.txt, report.md)"
