#!/usr/bin/env bash
# Builds what the upgrade and release suites need, once: test builds of outpost at several
# versions (with the `fault-injection` feature: upgrade pause points, and agent faults chosen
# per version through OUTPOST_FAULT=VERSION:KIND in the service environment), and the
# `outpost-release` packager. Prints the output directory.
#
#   target/variants/out/<version>/outpost
#   target/variants/out/outpost-release
set -euo pipefail

VERSIONS=${OUTPOST_VARIANT_VERSIONS:-"1.0.0 1.1.0 1.2.0"}

main() {
  cd "$(dirname "$0")/.."
  local tdir=target/variants out=target/variants/out v
  mkdir -p "$out"
  for v in $VERSIONS; do
    echo "build-variants: outpost $v (fault-injection)" >&2
    OUTPOST_BUILD_VERSION=$v CARGO_TARGET_DIR=$tdir \
      cargo build --locked --profile variant --features fault-injection -p outpost >&2
    mkdir -p "$out/$v"
    cp -f "$tdir/variant/outpost" "$out/$v/outpost.tmp"
    mv -f "$out/$v/outpost.tmp" "$out/$v/outpost"
  done
  echo "build-variants: outpost-release" >&2
  CARGO_TARGET_DIR=$tdir cargo build --locked --profile variant -p outpost-release --features tools --bin outpost-release >&2
  cp -f "$tdir/variant/outpost-release" "$out/outpost-release"
  echo "$PWD/$out"
}

main "$@"
