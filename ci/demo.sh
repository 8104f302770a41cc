#!/usr/bin/env bash
# The README's demo: boots a real systemd host (nspawn testbed), installs outpost in it the
# way an operator would (`sudo outpost install` as a normal user), and shows `outpost status`.
# The container keeps running afterwards so you can look around; the script says how.
set -euo pipefail

NAME=${OUTPOST_DEMO_NAME:-outpost-demo}

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

main() {
  cd "$(dirname "$0")/.."
  step "setting up this machine (packages, rust target)"
  bash ci/setup.sh
  step "building the static release binary"
  local bin
  bin=$(bash ci/build-release.sh)
  step "building (or reusing) the testbed image and booting host '$NAME'"
  bash ci/testbed.sh image >/dev/null
  bash ci/testbed.sh halt "$NAME" >/dev/null 2>&1 || true
  bash ci/testbed.sh boot "$NAME"
  bash ci/testbed.sh cp-in "$NAME" "$bin" /srv/dist/outpost
  step "alice@$NAME\$ outpost detect"
  bash ci/testbed.sh run-as "$NAME" alice -- /srv/dist/outpost detect
  step "alice@$NAME\$ sudo outpost install"
  bash ci/testbed.sh run-as "$NAME" alice -- sudo /srv/dist/outpost install
  step "alice@$NAME\$ outpost status"
  bash ci/testbed.sh run-as "$NAME" alice -- outpost status
  step "alice@$NAME\$ outpost restart   (no sudo: outpost's polkit rule allows exactly this)"
  bash ci/testbed.sh run-as "$NAME" alice -- outpost restart
  step "root@$NAME# journalctl -u outpost"
  bash ci/testbed.sh exec "$NAME" -- journalctl -u outpost.service --no-pager -o short-monotonic -n 8
  cat <<MSG

The host '$NAME' is still running. Try:
  bash ci/testbed.sh run-as $NAME alice -- outpost status --json
  bash ci/testbed.sh run-as $NAME alice -- sudo outpost uninstall --dry-run
  bash ci/testbed.sh exec $NAME -- systemctl status outpost
Stop it with:
  bash ci/testbed.sh halt $NAME
MSG
}

main "$@"
