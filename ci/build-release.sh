#!/usr/bin/env bash
# Builds the static release binary for one target and prints its path on stdout:
#   ci/build-release.sh [TARGET]      # default x86_64-unknown-linux-musl
#   -> target/TARGET/release/outpost
# Targets: x86_64-unknown-linux-musl (musl-tools), aarch64-unknown-linux-musl (cross: Debian's
# gcc-aarch64-linux-gnu as linker and C compiler for ring; the result is run once under
# qemu-aarch64-static from qemu-user-static). OUTPOST_BUILD_VERSION overrides the version
# baked in. Everything else goes to stderr.
set -euo pipefail

DEFAULT_TARGET=x86_64-unknown-linux-musl

die() {
  echo "error: $1" >&2
  [ -z "${2:-}" ] || echo "hint: $2" >&2
  exit 1
}

need_tool() {
  command -v "$1" >/dev/null 2>&1 || die "$1 not found" "run ci/setup.sh (installs $2)"
}

ensure_rust_target() {
  if ! rustup target list --installed | grep -qx "$1"; then
    echo "build-release: adding rust target $1" >&2
    rustup target add "$1" >&2
  fi
}

# Cross toolchain for aarch64 musl. The Rust musl target links its own self-contained musl
# (crt objects + libc.a); the GNU cross gcc only drives the link and compiles ring's C/asm,
# which needs no libc headers beyond the freestanding ones.
setup_aarch64() {
  need_tool aarch64-linux-gnu-gcc gcc-aarch64-linux-gnu
  export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=aarch64-linux-gnu-gcc
  export CC_aarch64_unknown_linux_musl=aarch64-linux-gnu-gcc
  export AR_aarch64_unknown_linux_musl=aarch64-linux-gnu-ar
  # No aarch64 libc headers are installed (and /usr/include is x86_64 glibc): compile ring
  # freestanding, the way its build script does for clang ("-nostdlibinc").
  export CFLAGS_aarch64_unknown_linux_musl="-ffreestanding -DRING_CORE_NOSTDLIBINC=1"
  # Static, self-contained musl, like the x86_64 build.
  export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_RUSTFLAGS="-C target-feature=+crt-static -C link-self-contained=yes"
}

check_static() {
  local bin=$1 info
  if ! info=$(LC_ALL=C readelf -l "$bin" 2>/dev/null) || echo "$info" | grep -q "INTERP"; then
    die "$bin is not a static executable" "check the linker setup for its target"
  fi
  if LC_ALL=C readelf -d "$bin" 2>/dev/null | grep -q "(NEEDED)"; then
    die "$bin needs shared libraries" "check the linker setup for its target"
  fi
}

main() {
  local target=${1:-$DEFAULT_TARGET}
  cd "$(dirname "$0")/.."
  case "$target" in
    x86_64-unknown-linux-musl) ensure_rust_target "$target" ;;
    aarch64-unknown-linux-musl)
      ensure_rust_target "$target"
      setup_aarch64
      ;;
    *) echo "error: unsupported target $target" >&2
       echo "hint: use x86_64-unknown-linux-musl or aarch64-unknown-linux-musl" >&2
       exit 2 ;;
  esac
  local start=$SECONDS
  # panic=abort for the agent binary only (-590 KB): a panic is then a crash, which every
  # multi-step operation must survive anyway (upgrade record + resolution, idempotent install).
  # outpost-hub keeps unwinding, so one failing request cannot take the control plane down.
  CARGO_PROFILE_RELEASE_PANIC=abort cargo build --release --locked --target "$target" -p outpost >&2
  local bin="${CARGO_TARGET_DIR:-target}/$target/release/outpost"
  check_static "$bin"
  if [ "$target" = aarch64-unknown-linux-musl ]; then
    need_tool qemu-aarch64-static qemu-user-static
    local ver
    ver=$(qemu-aarch64-static "$bin" --version) || die "$bin --version failed under qemu-aarch64-static" "the cross build is broken"
    echo "build-release: qemu-aarch64-static $bin --version: $ver" >&2
  fi
  local size
  size=$(stat -c %s "$bin")
  echo "release binary: $bin ($size bytes, $(( (size + 524288) / 1048576 )) MiB, $target, built in $((SECONDS - start)) s)" >&2
  # The budget (README, Building): one static binary of at most 4 MiB.
  if [ "$size" -gt 4194304 ]; then
    die "$bin is $size bytes, over the 4 MiB budget (4194304 bytes)" "see docs/ARCHITECTURE.md (why a hand-written D-Bus client) and measure with cargo bloat before adding a dependency"
  fi
  echo "$bin"
}

main "$@"
