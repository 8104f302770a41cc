#!/usr/bin/env bash
# The test command (README): sets up the machine, builds every binary once, lints, builds and
# verifies a signed two-architecture release, and runs every test: unit, CLI, API, the
# real-systemd end-to-end suites and the limits suite in a QEMU VM (ci/vm.sh).
set -euo pipefail

phase() { printf '\n=== [%4ds] %s\n' "$SECONDS" "$*" >&2; }

main() {
  cd "$(dirname "$0")/.."
  phase "setup"
  bash ci/setup.sh
  phase "lint"
  cargo fmt --all -- --check
  shellcheck -x ci/*.sh
  shellcheck -s sh scripts/install.sh cloud-init/bootstrap.sh
  cargo clippy --workspace --all-targets --locked -- -D warnings
  local bin variants site status=0 log
  phase "static release binary (x86_64)"
  bin=$(bash ci/build-release.sh)
  phase "release pipeline: aarch64 cross build + qemu smoke, sign, publish, verify"
  site=$(bash ci/release.sh "$PWD/target/release-site")
  echo "release site: $site" >&2
  phase "test builds of several versions (upgrade suites) and outpost-release"
  variants=$(bash ci/build-variants.sh)
  export OUTPOST_E2E_VARIANTS=$variants
  phase "VM image (ci/vm.sh: the testbed image + a Debian kernel, for tests/e2e_vm_limits.rs)"
  bash ci/vm.sh image >&2
  # e2e suites must run, never skip, here: CI=true / OUTPOST_E2E_REQUIRED make a missing testbed fatal.
  export OUTPOST_E2E_REQUIRED=1
  phase "cargo test (unit, CLI, API, real-systemd e2e)"
  log=$(mktemp)
  OUTPOST_E2E_BIN="$PWD/$bin" cargo test --workspace --locked --no-fail-fast -- --test-threads=2 2>&1 | tee "$log" || status=$?
  phase "done"
  summary "$log"
  rm -f "$log"
  return "$status"
}

# One closing line over every test binary (the last cargo line is often a doc-test run of 0).
summary() {
  awk '/^test result: /{ for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) s += $i } }
       END { printf "summary: %d passed, %d failed, %d skipped\n", p, f, s }' "$1"
}

main "$@"
