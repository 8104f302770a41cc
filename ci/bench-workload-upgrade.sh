#!/usr/bin/env bash
# Supervised workloads, upgrade mid-round: ten upgrades of a user-mode agent at different
# points of 20 s rounds in the real-systemd testbed. The agent's downtime per upgrade (from
# systemd's timestamps and as the upgrader saw it), each upgrade command and the next
# rounds' lateness. Figures: stdout and target/bench/workload-upgrade.json; see
# docs/PERFORMANCE.md. About 4 minutes.
set -euo pipefail

main() {
  cd "$(dirname "$0")/.."
  bash ci/setup.sh
  bash ci/build-release.sh >/dev/null
  local variants
  variants=$(bash ci/build-variants.sh | tail -n 1)
  cargo build --locked -p outpost-hub --bin outpost-hub
  OUTPOST_E2E_BIN=$PWD/target/x86_64-unknown-linux-musl/release/outpost
  export OUTPOST_E2E_BIN OUTPOST_E2E_VARIANTS=$variants OUTPOST_E2E_REQUIRED=1
  cargo test --locked --test e2e_workload_upgrade -- --ignored --nocapture bench_workload_upgrade_mid_round
}

main "$@"
