#!/usr/bin/env bash
# The release pipeline, end to end, with a throwaway key:
#   ci/release.sh [DIR]          # default target/release-site
# builds the static binaries for x86_64 and aarch64 (ci/build-release.sh; the aarch64 one is
# run under qemu-aarch64-static), builds `outpost-release`, makes a throwaway unencrypted
# signing key, builds + signs both tarballs, publishes them to channel stable in DIR, then
# checks the result with `outpost-release verify` and `sha256sum -c`. Prints DIR on stdout.
#
# Environment:
#   OUTPOST_BUILD_VERSION     version to build and publish (default: the workspace version)
#   OUTPOST_RELEASE_BASE_URL  URL baked into install.sh (publish --base-url; default none)
#   OUTPOST_RELEASE_KEY_DIR   where the throwaway key pair goes (default target/release-key;
#                             replaced on every run; never inside DIR)
#
# DIR is replaced when it is empty or a previous release root (has manifest.json); anything
# else is refused.
set -euo pipefail

TARGETS="x86_64-unknown-linux-musl aarch64-unknown-linux-musl"

die() {
  echo "error: $1" >&2
  [ -z "${2:-}" ] || echo "hint: $2" >&2
  exit 1
}

step() { echo "release: $*" >&2; }

workspace_version() {
  sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' Cargo.toml | head -n 1
}

prepare_dir() {
  local dir=$1
  if [ -e "$dir" ] && [ -n "$(ls -A "$dir" 2>/dev/null)" ] && [ ! -f "$dir/manifest.json" ]; then
    die "$dir exists and is not a release root" "pass an empty or new directory"
  fi
  rm -rf "$dir"
  mkdir -p "$dir"
}

main() {
  cd "$(dirname "$0")/.."
  local dir=${1:-target/release-site}
  local keydir=${OUTPOST_RELEASE_KEY_DIR:-target/release-key}
  local build=target/release-build
  local version=${OUTPOST_BUILD_VERSION:-$(workspace_version)}
  [ -n "$version" ] || die "cannot read the workspace version from Cargo.toml" "set OUTPOST_BUILD_VERSION"
  export OUTPOST_BUILD_VERSION=$version
  prepare_dir "$dir"
  dir=$(cd "$dir" && pwd)
  case "$(cd "$(dirname "$keydir")" 2>/dev/null && pwd)/" in
    "$dir"/*) die "the key directory $keydir is inside $dir" "set OUTPOST_RELEASE_KEY_DIR outside the published tree" ;;
  esac

  local t start bin times=""
  declare -A bins=()
  for t in $TARGETS; do
    start=$SECONDS
    step "building outpost $version for $t"
    bin=$(bash ci/build-release.sh "$t")
    bins[$t]=$bin
    times="$times $t=$((SECONDS - start))s"
  done

  start=$SECONDS
  step "building outpost-release"
  cargo build --release --locked -p outpost-release --features tools --bin outpost-release >&2
  local tool=target/release/outpost-release
  times="$times outpost-release=$((SECONDS - start))s"

  step "throwaway key in $keydir"
  rm -rf "$keydir" "$build"
  "$tool" keygen --unencrypted --out "$keydir" >&2
  local key=$keydir/outpost-release.key pub=$keydir/outpost-release.pub

  for t in $TARGETS; do
    "$tool" build --version "$version" --target "$t" --binary "${bins[$t]}" --out "$build" >&2
  done
  "$tool" sign --key "$key" "$build" >&2
  local base=()
  if [ -n "${OUTPOST_RELEASE_BASE_URL:-}" ]; then base=(--base-url "$OUTPOST_RELEASE_BASE_URL"); fi
  "$tool" publish --from "$build" --to "$dir" --key "$key" --channel stable "${base[@]}" >&2

  step "verifying $dir"
  "$tool" verify "$dir" --pubkey "$pub" >&2
  (cd "$dir/v$version" && sha256sum -c SHA256SUMS) >&2
  for t in $TARGETS; do
    [ -f "$dir/v$version/outpost-$version-$t.tar.gz" ] || die "no $t tarball in $dir/v$version" "see the output above"
  done
  step "done in $SECONDS s (${times# }); public key: $pub"
  echo "$dir"
}

main "$@"
