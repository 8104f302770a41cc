#!/usr/bin/env bash
# Builds the static release binary: target/x86_64-unknown-linux-musl/release/outpost.
# OUTPOST_BUILD_VERSION overrides the version baked in.
set -euo pipefail

TARGET=x86_64-unknown-linux-musl

main() {
  cd "$(dirname "$0")/.."
  cargo build --release --locked --target "$TARGET" -p outpost >&2
  bin="target/$TARGET/release/outpost"
  if ! file_info=$(LC_ALL=C readelf -l "$bin" 2>/dev/null) || echo "$file_info" | grep -q "INTERP"; then
    echo "error: $bin is not a static executable" >&2
    exit 1
  fi
  size=$(stat -c %s "$bin")
  echo "release binary: $bin ($size bytes, $(( (size + 524288) / 1048576 )) MiB)" >&2
  echo "$bin"
}

main "$@"
