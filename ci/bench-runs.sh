#!/usr/bin/env bash
# Runs benchmark in the real-systemd testbed: dispatch latency over OUTPOST_BENCH_RUNS
# (default 50) runs, 100 MiB of log streamed to the hub (and the agent's heartbeats
# meanwhile), agent RSS with 4 runs in flight. Figures: stdout and target/bench/runs.json;
# see docs/PERFORMANCE.md.
set -euo pipefail

main() {
  cd "$(dirname "$0")/.."
  bash ci/setup.sh
  bash ci/build-release.sh >/dev/null
  cargo build --locked -p outpost-hub --bin outpost-hub
  OUTPOST_E2E_BIN=$PWD/target/x86_64-unknown-linux-musl/release/outpost
  export OUTPOST_E2E_BIN OUTPOST_E2E_REQUIRED=1
  cargo test --locked --test bench_runs -- --ignored --nocapture
}

main "$@"
