#!/usr/bin/env bash
# Upgrade benchmark in the real-systemd testbed: downtime, total upgrade time and rollback
# time over OUTPOST_BENCH_RUNS (default 10) runs each. Figures: stdout and
# target/bench/upgrade.json; see docs/PERFORMANCE.md.
set -euo pipefail

main() {
  cd "$(dirname "$0")/.."
  bash ci/setup.sh
  OUTPOST_E2E_VARIANTS=$(bash ci/build-variants.sh)
  export OUTPOST_E2E_VARIANTS OUTPOST_E2E_REQUIRED=1
  cargo test --locked --test bench_upgrade -- --ignored --nocapture
}

main "$@"
