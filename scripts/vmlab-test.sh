#!/usr/bin/env bash
# scripts/vmlab-test.sh — the real Linux initiator against the real `mosaic` binary.
#
#   sudo scripts/vmlab-test.sh [SCENARIO...]      (default: basic digests)
#
# Scenarios, each in a fresh guest (../shared/vmlab, a Debian kernel with open-iscsi in
# QEMU) against a freshly started `mosaic`:
#   basic    vmlab's own tests/basic.sh: discovery, login, sha256 round trips, fio randrw
#            and fio randwrite + verify, logout
#   digests  scripts/vmlab/basic-digests.sh: the same with HeaderDigest=CRC32C and
#            DataDigest=CRC32C set on the node record before login, checked in effect
#
# Steps: (a) build the lab (vmlab/build.sh, idempotent), (b) create the isolated netns
# (vmlab/netns.sh up), (c) per scenario start `mosaic serve` inside the netns on
# 10.77.0.1:3260 and 10.77.1.1:3260 exporting iqn.2026-11.io.mosaic:vm (LUN 0, 256 MiB),
# (d) boot the guest with the scenario's script (vmlab/run-test.sh), (e) stop mosaic;
# on exit, always stop mosaic and delete the netns. Prints PASS/FAIL per scenario with
# the guest's fio figures; exits 0 only if every scenario passed (2: cannot run here).
#
# Needs root (netns, taps, apt for the first build). Every wait is bounded.
# Env: VMLAB                dir of the lab (default: ../shared/vmlab beside the repo)
#      MOSAIC_BIN           the target binary (default: build/release/mosaic)
#      MOSAIC_LOG           mosaic's --log filter (default info; debug for evidence)
#      BACKING              file (default, sparse file in a temp dir) or memory
#      FIO_RUNTIME          seconds of fio randrw in the guest (default 20)
#      VMLAB_TEST_OUT       results dir (default build/vmlab/<date>): per scenario
#                           mosaic.log and vm/ (test.log, console.log, guest-out/)
#      VMLAB_BUILD_TIMEOUT  limit for build.sh, s (default 900)
#      VMLAB_RUN_TIMEOUT    limit for one guest run, s (default 480; a run takes ~2.5 min)
set -uo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VMLAB=${VMLAB:-$(dirname "$REPO")/shared/vmlab}
BIN=${MOSAIC_BIN:-$REPO/build/release/mosaic}
LOG=${MOSAIC_LOG:-info}
BACKING=${BACKING:-file}
FIO_RUNTIME=${FIO_RUNTIME:-20}
BUILD_TIMEOUT=${VMLAB_BUILD_TIMEOUT:-900}
RUN_TIMEOUT=${VMLAB_RUN_TIMEOUT:-480}
LAB=${LAB:-${XDG_CACHE_HOME:-$HOME/.cache}/vmlab}
export LAB
NS=isclab
export VMLAB_NETNS=$NS
PORTALS=(10.77.0.1:3260 10.77.1.1:3260)
IQN=iqn.2026-11.io.mosaic:vm
LUN=0
SCENARIOS=("$@")
[ ${#SCENARIOS[@]} -gt 0 ] || SCENARIOS=(basic digests)

say() { echo "vmlab-test: $*" >&2; }
die2() { say "$*"; exit 2; }

[ "$(id -u)" = 0 ] || die2 "needs root (network namespace, tap devices, QEMU on them)"
[ -x "$VMLAB/run-test.sh" ] || die2 "no vmlab at $VMLAB (set VMLAB=...)"
[ -x "$BIN" ] || die2 "no mosaic binary at $BIN: cargo build --release -p mosaic-target"
case "$BACKING" in file | memory) ;; *) die2 "BACKING must be file or memory" ;; esac
for s in "${SCENARIOS[@]}"; do
  case "$s" in basic | digests) ;; *) die2 "unknown scenario $s (basic, digests)" ;; esac
done
script_of() {
  case "$1" in
    basic) echo "$VMLAB/tests/basic.sh" ;;
    digests) echo "$REPO/scripts/vmlab/basic-digests.sh" ;;
  esac
}

OUT=${VMLAB_TEST_OUT:-$REPO/build/vmlab/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT" "$LAB" || die2 "cannot create $OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d /tmp/mosaic-vmlab.XXXXXX)
T0=$SECONDS
MPID=""
RESULTS=()
failed=0

# One vmlab-test at a time on this machine; and no other vmlab user on the namespace.
exec 8>"$LAB/vmlab-test.lock"
flock -w 900 8 || die2 "another scripts/vmlab-test.sh held $LAB/vmlab-test.lock for 15 min"
flock -w 600 "$LAB/run-$NS.lock" true || die2 "a vmlab guest (run-test.sh) kept netns $NS busy for 10 min"
if ip netns list | grep -qw "^$NS" && [ -n "$(ip netns exec "$NS" ss -Hltn 'sport = :3260' 2>/dev/null)" ]; then
  die2 "something already listens on port 3260 in netns $NS (another target?): $(ip netns exec "$NS" ss -Hltnp 'sport = :3260' | tr '\n' ' ')"
fi

# The guest: run-test.sh runs QEMU under `timeout`, which puts itself in its own process
# group, so a signal to ours does not reach QEMU. run_guest records that `timeout` (by
# pid) while it runs; stop_guest stops it (timeout passes SIGTERM on to QEMU).
RPID="" VMPID=""
run_guest() { # run_guest RESULTS_DIR run-test.sh-ARGS...
  local dir=$1
  shift
  "$VMLAB/run-test.sh" -o "$dir" "$@" &
  RPID=$!
  VMPID=""
  while kill -0 "$RPID" 2>/dev/null; do
    if [ -z "$VMPID" ]; then
      VMPID=$(ps -o pid=,comm= --ppid "$RPID" | awk '$2 == "timeout" {print $1; exit}')
    fi
    sleep 0.5
  done
  wait "$RPID"
  local rc=$?
  RPID="" VMPID=""
  return "$rc"
}
stop_guest() {
  if [ -n "$VMPID" ] && grep -qaF -- "$OUT/" "/proc/$VMPID/cmdline" 2>/dev/null; then
    say "stopping the guest (timeout pid $VMPID)"
    kill -TERM "$VMPID" 2>/dev/null
    for _ in $(seq 150); do kill -0 "$VMPID" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$VMPID" 2>/dev/null; then
      for q in $(ps -o pid= --ppid "$VMPID"); do kill -KILL "$q" 2>/dev/null; done
      kill -KILL "$VMPID" 2>/dev/null
    fi
  fi
  if [ -n "$RPID" ]; then
    for _ in $(seq 100); do kill -0 "$RPID" 2>/dev/null || break; sleep 0.1; done
    kill -TERM "$RPID" 2>/dev/null
    wait "$RPID" 2>/dev/null
  fi
  RPID="" VMPID=""
}

stop_mosaic() {
  [ -n "$MPID" ] || return 0
  kill -TERM "$MPID" 2>/dev/null
  for _ in $(seq 100); do kill -0 "$MPID" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$MPID" 2>/dev/null; then
    say "mosaic (pid $MPID) ignored SIGTERM for 10 s: SIGKILL"
    kill -KILL "$MPID" 2>/dev/null
  fi
  wait "$MPID" 2>/dev/null
  MPID=""
}

summary() {
  echo "==== vmlab-test summary ($((SECONDS - T0)) s, results in $OUT)"
  for r in ${RESULTS[@]+"${RESULTS[@]}"}; do echo "  $r"; done
  if [ "$failed" -eq 0 ] && [ ${#RESULTS[@]} -eq ${#SCENARIOS[@]} ]; then
    echo "vmlab-test: ALL PASSED"
  else
    echo "vmlab-test: FAILED"
  fi
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  stop_guest
  stop_mosaic
  "$VMLAB/netns.sh" down || say "netns.sh down failed"
  rm -rf "$WORK"
  summary
  [ "$rc" -ne 0 ] || [ "$failed" -eq 0 ] || rc=1
  exit "$rc"
}
trap cleanup EXIT
trap 'say "interrupted"; failed=$((failed + 1)); exit 130' INT TERM

# (a) the lab
say "building the lab ($VMLAB/build.sh, limit ${BUILD_TIMEOUT}s)"
t=$SECONDS
timeout --kill-after=10 "$BUILD_TIMEOUT" "$VMLAB/build.sh" >"$OUT/build.log" 2>&1
rc=$?
if [ "$rc" -ne 0 ]; then
  tail -30 "$OUT/build.log" >&2
  failed=$((failed + 1))
  say "build.sh failed (exit $rc$([ "$rc" -eq 124 ] && echo ", timed out")), see $OUT/build.log"
  exit 1
fi
say "lab ready in $((SECONDS - t)) s"

# (b) the namespace
"$VMLAB/netns.sh" up || { failed=$((failed + 1)); say "netns.sh up failed"; exit 1; }

# (c) mosaic inside the namespace; waits (bounded) until it listens on every portal
start_mosaic() { # start_mosaic LOGFILE
  local vol="name=vm,size=256M,backing=$BACKING" args=() p
  [ "$BACKING" = file ] && vol="$vol,path=$WORK/vm.img" && rm -f "$WORK/vm.img"
  for p in "${PORTALS[@]}"; do args+=(--portal "$p"); done
  ip netns exec "$NS" "$BIN" serve "${args[@]}" --volume "$vol" --data-dir "$WORK" --log "$LOG" \
    >"$1" 2>&1 </dev/null &
  MPID=$!
  for _ in $(seq 300); do
    kill -0 "$MPID" 2>/dev/null || { say "mosaic exited at start:"; tail -20 "$1" >&2; MPID=""; return 1; }
    [ "$(ip netns exec "$NS" ss -Hltn 'sport = :3260' | wc -l)" -ge ${#PORTALS[@]} ] && return 0
    sleep 0.1
  done
  say "mosaic did not listen on ${PORTALS[*]} within 30 s:"
  tail -20 "$1" >&2
  return 1
}

# the guest's fio randrw figures: "read 1234 IOPS 4.8MiB/s, write ..."
fio_figures() { # fio_figures FIO_OUTPUT
  [ -r "$1" ] || return 0
  sed -nE 's/^ *(read|write): IOPS=([^,]+), BW=([^ ]+).*/\1 \2 IOPS \3/p' "$1" | paste -sd, - | sed 's/,/, /g'
}

# (d) the scenarios
for s in "${SCENARIOS[@]}"; do
  d=$OUT/$s
  mkdir -p "$d"
  say "---- scenario $s: mosaic in netns $NS on ${PORTALS[*]} ($BACKING backing), guest $(basename "$(script_of "$s")")"
  t=$SECONDS
  why=""
  if ! start_mosaic "$d/mosaic.log"; then
    why="mosaic did not start"
  else
    run_guest "$d/vm" --timeout "$RUN_TIMEOUT" -t "${PORTALS[0]}" \
      -e LUN=$LUN -e FIO_RUNTIME="$FIO_RUNTIME" "$(script_of "$s")"
    rc=$?
    if ! kill -0 "$MPID" 2>/dev/null; then
      why="mosaic died during the run"
    elif [ "$rc" -eq 124 ]; then
      why="guest run timed out after ${RUN_TIMEOUT}s"
    elif [ "$rc" -ne 0 ]; then
      why="guest test exit $rc: $(grep -a '^FAIL: ' "$d/vm/test.log" 2>/dev/null | tr -d '\r' | head -5 | paste -sd';' -)"
    elif ! grep -q "$IQN" "$d/vm/guest-out/discovery.txt" 2>/dev/null; then
      why="discovery did not report $IQN"
    fi
    stop_mosaic
  fi
  counts=$(tr -d '\r' <"$d/vm/test.log" 2>/dev/null | grep -aE '^[0-9]+ passed, [0-9]+ failed$' | tail -1)
  fio=$(fio_figures "$d/vm/guest-out/fio-randrw.txt")
  if [ -z "$why" ]; then
    RESULTS+=("PASS $s ($((SECONDS - t)) s; ${counts:-?}; fio 4k randrw qd16: ${fio:-n/a})")
  else
    failed=$((failed + 1))
    RESULTS+=("FAIL $s ($((SECONDS - t)) s; ${counts:-no guest result}): $why")
    say "scenario $s FAILED: $why; last lines of mosaic's log ($d/mosaic.log):"
    tail -25 "$d/mosaic.log" >&2
  fi
done
[ "$failed" -eq 0 ]
