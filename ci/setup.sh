#!/usr/bin/env bash
# Installs everything the build, the tests and the demo need on a fresh Debian 12 machine
# (root). Idempotent and quiet when everything is there already.
set -euo pipefail

PACKAGES="musl-tools dbus debootstrap systemd-container zstd shellcheck minisign iproute2 ca-certificates curl openssl chromium gcc-aarch64-linux-gnu binutils-aarch64-linux-gnu qemu-user-static busybox qemu-system-x86 e2fsprogs"

need_root() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "error: ci/setup.sh installs packages and needs root" >&2
    echo "hint: run it with sudo" >&2
    exit 2
  fi
}

install_packages() {
  local missing=() p
  for p in $PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

install_rust_target() {
  if ! command -v cargo >/dev/null 2>&1; then
    echo "error: cargo not found" >&2
    echo "hint: install Rust with rustup (https://rustup.rs) and re-run" >&2
    exit 1
  fi
  if ! rustup target list --installed | grep -qx x86_64-unknown-linux-musl; then
    echo "setup: adding rust target x86_64-unknown-linux-musl"
    rustup target add x86_64-unknown-linux-musl >/dev/null
  fi
}

main() {
  need_root
  install_packages
  install_rust_target
}

main "$@"
