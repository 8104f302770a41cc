#!/usr/bin/env bash
# The test command (README): sets up the machine, builds the static release binary once,
# lints, and runs every test: unit, CLI and the real-systemd end-to-end suites.
set -euo pipefail

main() {
  cd "$(dirname "$0")/.."
  bash ci/setup.sh
  cargo fmt --all -- --check
  shellcheck -x ci/*.sh
  shellcheck -s sh scripts/install.sh
  local bin variants
  bin=$(bash ci/build-release.sh)
  # Test builds at several versions (upgrade/rollback suites) and the outpost-release packager.
  variants=$(bash ci/build-variants.sh)
  export OUTPOST_E2E_VARIANTS=$variants
  # e2e suites must run, never skip, here: CI=true / OUTPOST_E2E_REQUIRED make a missing testbed fatal.
  export OUTPOST_E2E_REQUIRED=1
  local log
  log=$(mktemp)
  OUTPOST_E2E_BIN="$PWD/$bin" cargo test --workspace --locked -- --test-threads=2 2>&1 | tee "$log"
  summary "$log"
  rm -f "$log"
}

# One closing line over every test binary (the last cargo line is often a doc-test run of 0).
summary() {
  awk '/^test result: /{ for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) s += $i } }
       END { printf "summary: %d passed, %d failed, %d skipped\n", p, f, s }' "$1"
}

main "$@"
