#!/usr/bin/env bash
# Heartbeat benchmark: builds release, starts outpost-hub on 127.0.0.1 (ephemeral port,
# fresh SQLite file), runs outpost-hub-bench against it, stops the hub.
# Extra arguments go to outpost-hub-bench, e.g. hub/bench.sh --connections 128 --duration 30s
set -euo pipefail

cd "$(dirname "$0")/.."
cargo build --release -p outpost-hub --bins >&2
bin="${CARGO_TARGET_DIR:-target}/release"

work=$(mktemp -d)
hub_pid=""
cleanup() {
  if [ -n "$hub_pid" ] && kill -0 "$hub_pid" 2>/dev/null; then
    kill -TERM "$hub_pid" 2>/dev/null || true
    wait "$hub_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

mkdir "$work/releases"
OUTPOST_HUB_ADMIN_TOKEN="bench-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
export OUTPOST_HUB_ADMIN_TOKEN
# --enroll-rate 0: the bench enrolls all its agents from one loopback address.
"$bin/outpost-hub" serve --listen 127.0.0.1:0 --db "$work/hub.db" --releases "$work/releases" --enroll-rate 0 \
  >"$work/hub.out" 2>"$work/hub.err" &
hub_pid=$!

url=""
for _ in $(seq 1 100); do
  url=$(sed -n 's/^outpost-hub listening on //p' "$work/hub.out" 2>/dev/null || true)
  [ -n "$url" ] && break
  if ! kill -0 "$hub_pid" 2>/dev/null; then
    echo "error: the hub exited during startup" >&2
    cat "$work/hub.err" >&2
    exit 1
  fi
  sleep 0.1
done
if [ -z "$url" ]; then
  echo "error: the hub did not report its address within 10 s" >&2
  exit 1
fi
echo "hub at $url (pid $hub_pid, db $work/hub.db)" >&2

cpu_ticks() { awk '{print $14 + $15}' "/proc/$hub_pid/stat"; }
before=$(cpu_ticks)
"$bin/outpost-hub-bench" --hub "$url" "$@"
after=$(cpu_ticks)
hz=$(getconf CLK_TCK)
echo "hub cpu during the run (enrollment + heartbeats): $(awk -v t=$((after - before)) -v hz="$hz" 'BEGIN{printf "%.2f", t/hz}') s user+sys; load average now: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

kill -TERM "$hub_pid"
wait "$hub_pid"
hub_pid=""
echo "hub stopped cleanly (database: $(du -h "$work/hub.db" | cut -f1))" >&2
