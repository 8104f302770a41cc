#!/usr/bin/env bash
# The README's demo, end to end on this machine:
#   1. a signed release of the static outpost binary (throwaway key),
#   2. outpost-hub on https://127.0.0.1 as control plane *and* release host (throwaway CA),
#   3. a real systemd host (nspawn testbed container) where a normal user runs the one-liner
#        curl -sSL https://HUB/install.sh | sudo OUTPOST_ENROLL_KEY_FILE=… OUTPOST_HUB_URL=… sh
#   4. the agent online at the hub, `outpost status` on the host,
#   5. a pack installed on the host, trusted at the hub, and one of its actions run from the
#      hub (`outpost-hub run … --follow`), in its own systemd unit as the service user.
# Everything keeps running afterwards; the script prints how to look around and stop it.
set -euo pipefail

NAME=${OUTPOST_DEMO_NAME:-outpost-demo}
WORK=${OUTPOST_DEMO_DIR:-target/demo}
PORT=${OUTPOST_DEMO_PORT:-8443}

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
die() {
  printf 'error: %s\n' "$1" >&2
  [ -n "${2:-}" ] && printf 'hint: %s\n' "$2" >&2
  exit 1
}

stop_previous() {
  if [ -f "$WORK/hub.pid" ] && kill -0 "$(cat "$WORK/hub.pid")" 2>/dev/null; then
    kill "$(cat "$WORK/hub.pid")" || true
    sleep 0.5
  fi
  bash ci/testbed.sh halt "$NAME" >/dev/null 2>&1 || true
  rm -rf "$WORK"
  mkdir -p "$WORK"
}

build() {
  step "setting up this machine (packages, rust targets)"
  bash ci/setup.sh
  step "building the static release binary, outpost-hub and outpost-release"
  BIN=$(bash ci/build-release.sh)
  cargo build --locked --release -p outpost-hub --bin outpost-hub >&2
  cargo build --locked --release -p outpost-release --features tools --bin outpost-release >&2
  HUB=target/release/outpost-hub
  REL=target/release/outpost-release
  VERSION=$("$BIN" --version | awk '{print $2}')
}

make_tls() {
  step "making a throwaway CA and a certificate for 127.0.0.1"
  local d=$WORK/tls
  mkdir -p "$d"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$d/ca.key" \
    -out "$d/ca.crt" -days 7 -subj "/CN=outpost demo CA" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$d/server.key" \
    -out "$d/server.csr" -subj "/CN=127.0.0.1" 2>/dev/null
  printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" \
    "extendedKeyUsage=serverAuth" "subjectAltName=IP:127.0.0.1,DNS:localhost" >"$d/server.ext"
  openssl x509 -req -in "$d/server.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
    -out "$d/leaf.crt" -days 7 -extfile "$d/server.ext" 2>/dev/null
  cat "$d/leaf.crt" "$d/ca.crt" >"$d/server.crt"
}

make_release() {
  step "signing and publishing release $VERSION (throwaway minisign key)"
  "$REL" keygen --unencrypted --out "$WORK/keys" >/dev/null
  "$REL" build --version "$VERSION" --target x86_64-unknown-linux-musl --binary "$BIN" --out "$WORK/build" >/dev/null
  "$REL" sign --key "$WORK/keys/outpost-release.key" "$WORK/build" >/dev/null
  "$REL" publish --from "$WORK/build" --to "$WORK/site" --key "$WORK/keys/outpost-release.key" \
    --channel stable --base-url "https://127.0.0.1:$PORT" >/dev/null
  "$REL" verify "$WORK/site" --pubkey "$WORK/keys/outpost-release.pub"
}

start_hub() {
  step "starting outpost-hub on https://127.0.0.1:$PORT (control plane + release host)"
  OUTPOST_HUB_ADMIN_TOKEN=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
  export OUTPOST_HUB_ADMIN_TOKEN OUTPOST_HUB_URL="https://127.0.0.1:$PORT" OUTPOST_HUB_CA_FILE="$WORK/tls/ca.crt"
  printf '%s\n' "$OUTPOST_HUB_ADMIN_TOKEN" >"$WORK/admin-token"
  chmod 600 "$WORK/admin-token"
  nohup "$HUB" serve --listen "127.0.0.1:$PORT" --db "$WORK/hub.db" --releases "$WORK/site" \
    --tls-cert "$WORK/tls/server.crt" --tls-key "$WORK/tls/server.key" --heartbeat-interval 10 \
    >"$WORK/hub.log" 2>&1 &
  echo $! >"$WORK/hub.pid"
  for _ in $(seq 1 100); do
    grep -q "listening on" "$WORK/hub.log" && return 0
    sleep 0.1
  done
  cat "$WORK/hub.log" >&2
  die "outpost-hub did not start" "see $WORK/hub.log; is port $PORT free? set OUTPOST_DEMO_PORT"
}

boot_host() {
  step "booting host '$NAME' (Debian 12, systemd as PID 1) and trusting the demo CA there"
  bash ci/testbed.sh image >/dev/null
  bash ci/testbed.sh boot "$NAME"
  bash ci/testbed.sh cp-in "$NAME" "$WORK/tls/ca.crt" /usr/local/share/ca-certificates/outpost-demo.crt
  bash ci/testbed.sh exec "$NAME" -- update-ca-certificates >/dev/null
}

one_liner() {
  step "minting a single-use enrollment key"
  local key
  key=$("$HUB" keys create --ttl 1h | grep -o 'opk_[0-9a-f]*' | head -n 1)
  [ -n "$key" ] || die "could not mint a key" "see $WORK/hub.log"
  # The key reaches the host in a private mktemp file of alice's (0600, unpredictable name):
  # never on a command line, never in sudo's environment or log.
  local f
  f=$(bash ci/testbed.sh exec "$NAME" -- runuser -u alice -- mktemp) || die "cannot create the key file" "see the container's console"
  # shellcheck disable=SC2016 # expanded by the container's shell
  printf '%s' "$key" | bash ci/testbed.sh exec "$NAME" -- runuser -u alice -- sh -c 'cat > "$1"' sh "$f"
  step "alice@$NAME\$ curl -sSL $OUTPOST_HUB_URL/install.sh | sudo OUTPOST_ENROLL_KEY_FILE=\"\$f\" OUTPOST_HUB_URL=$OUTPOST_HUB_URL sh; rm -f \"\$f\""
  bash ci/testbed.sh run-as "$NAME" alice -- sh -c "curl -sSL $OUTPOST_HUB_URL/install.sh | sudo OUTPOST_ENROLL_KEY_FILE=$f OUTPOST_HUB_URL=$OUTPOST_HUB_URL sh; rc=\$?; rm -f $f; exit \$rc"
}

write_pack() {
  local d=$1
  mkdir -p "$d/bin"
  cat >"$d/pack.toml" <<'EOF'
[pack]
name = "hello"
version = "1.0.0"
description = "the demo's pack"

[[action]]
id = "greet"
description = "greet someone and say who and where the action runs"
command = ["bin/greet.sh", "{who}"]
[[action.param]]
name = "who"
type = "string"
pattern = "[a-z]+"
max_len = 16
required = true
[action.limits]
timeout = "30s"
EOF
  cat >"$d/bin/greet.sh" <<'EOF'
#!/bin/sh
echo "hello, $1: this is $(hostname), run $OUTPOST_RUN_ID as $(id -un) in cgroup $(sed -n "s/^0:://p" /proc/self/cgroup)"
EOF
  chmod 0755 "$d/bin/greet.sh"
}

a_run() {
  step "alice@$NAME\$ sudo outpost pack install ~/hello   (the actions this host allows)"
  write_pack "$WORK/hello"
  bash ci/testbed.sh cp-in "$NAME" "$WORK/hello" /home/alice/hello
  bash ci/testbed.sh exec "$NAME" -- chown -R alice: /home/alice/hello
  bash ci/testbed.sh run-as "$NAME" alice -- sudo outpost pack install /home/alice/hello
  step "outpost-hub packs --pending; outpost-hub packs trust hello SHA256   (the hub's admin trusts that tree hash)"
  local sha="" agent
  for _ in $(seq 1 60); do
    sha=$("$HUB" packs --pending | awk '$1 == "hello" { print $3 }')
    [ -n "$sha" ] && break
    sleep 0.5
  done
  [ -n "$sha" ] || die "the agent did not advertise the pack" "see: bash ci/testbed.sh exec $NAME -- journalctl -u outpost -n 30"
  "$HUB" packs
  "$HUB" packs trust hello "$sha"
  agent=$("$HUB" agents | awk 'NR == 2 { print $1 }')
  step "outpost-hub run $agent hello/greet --param who=world --follow"
  "$HUB" run "$agent" hello/greet --param who=world --follow
  step "alice@$NAME\$ sudo outpost runs"
  bash ci/testbed.sh run-as "$NAME" alice -- sudo outpost runs
}

show() {
  sleep 1
  step "alice@$NAME\$ outpost status"
  bash ci/testbed.sh run-as "$NAME" alice -- outpost status || true
  step "outpost-hub agents"
  "$HUB" agents || true
  cat <<MSG

Running now:
  hub       $OUTPOST_HUB_URL (dashboard in a browser that trusts $WORK/tls/ca.crt; admin token in $WORK/admin-token)
  host      '$NAME' with outpost.service enrolled at the hub
Try:
  bash ci/testbed.sh run-as $NAME alice -- outpost status --json
  bash ci/testbed.sh run-as $NAME alice -- sudo outpost diagnostics
  bash ci/testbed.sh run-as $NAME alice -- sudo outpost events
  OUTPOST_HUB_ADMIN_TOKEN=\$(cat $WORK/admin-token) OUTPOST_HUB_CA_FILE=$WORK/tls/ca.crt $HUB agents --hub $OUTPOST_HUB_URL
  OUTPOST_HUB_ADMIN_TOKEN=\$(cat $WORK/admin-token) OUTPOST_HUB_CA_FILE=$WORK/tls/ca.crt $HUB run --hub $OUTPOST_HUB_URL AGENT hello/greet --param who=you --follow
Stop everything:
  kill \$(cat $WORK/hub.pid); bash ci/testbed.sh halt $NAME
MSG
}

main() {
  cd "$(dirname "$0")/.."
  stop_previous
  build
  make_tls
  make_release
  start_hub
  boot_host
  one_liner
  a_run
  show
}

main "$@"
