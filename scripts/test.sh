#!/usr/bin/env bash
# THE test command (README's second command; .ci/run calls exactly this).
#
#   scripts/test.sh
#
# 1. As root, installs the Debian packages the tests drive when they are missing
#    (scripts/install-deps.sh: libiscsi-bin, open-iscsi, qemu-utils + QEMU's iSCSI
#    driver), with apt starting no services.
# 2. Checks formatting (cargo fmt) and lints (cargo clippy -D warnings).
# 3. Builds the release `mosaic` binary; the black-box tests in tests/ run it.
# 4. Runs every test of the workspace (unit, property, integration, black-box against
#    libiscsi's iscsi-test-cu, qemu-img and our own protocol client).
# Every step runs even when an earlier one failed; the script exits non-zero if any
# failed, and says which.
#
# Env: CI=true makes a missing external tool a test failure instead of a skip.
#      SKIP_LINT=1 skips fmt and clippy (quicker local runs).
set -uo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
failed=()
step() { # step NAME CMD...
  local name=$1; shift
  echo "=== $name: $*"
  local t0=$SECONDS
  if "$@"; then
    echo "=== $name: ok ($((SECONDS - t0))s)"
  else
    echo "=== $name: FAILED ($((SECONDS - t0))s)"
    failed+=("$name")
  fi
}

step deps scripts/install-deps.sh
if [[ ${SKIP_LINT:-0} != 1 ]]; then
  step fmt cargo fmt --all -- --check
  step clippy cargo clippy --workspace --all-targets -- -D warnings
fi
step build cargo build --release -p mosaic-target --bin mosaic
# The black-box tests run this binary. If the build failed, an older binary may still
# be there: leave MOSAIC_BIN unset, so the tests build (and fail on) the current code.
if [[ " ${failed[*]} " != *" build "* && -x build/release/mosaic ]]; then
  export MOSAIC_BIN=$PWD/build/release/mosaic
fi
# `--all-targets` also builds the benches and runs each once in test mode; doc tests
# run separately (`--all-targets` leaves them out).
step test cargo test --workspace --all-targets --no-fail-fast
step doctest cargo test --workspace --doc

if (( ${#failed[@]} )); then
  echo "scripts/test.sh: FAILED steps: ${failed[*]}"
  exit 1
fi
echo "scripts/test.sh: all steps passed"
