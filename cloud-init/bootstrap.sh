#!/bin/sh
# outpost cloud-init bootstrap: installs a pinned, verified outpost release and enrolls this
# host with the hub. Written by the user-data (write_files) and run once from runcmd; safe to
# run again by hand (as root) after fixing whatever made it fail:
#   sh /usr/local/lib/outpost/cloud-init/bootstrap.sh
#
# Steps: download the pinned tarball, check its sha256 against the value pinned below (and its
# minisign signature when `minisign` is installed), unpack it, `outpost install` (which checks
# the signed manifest and its own sha256 again), start the service, wait for the enrollment,
# then replace the enrollment key with REDACTED in cloud-init's cached copies of the user-data.
# The key never appears on a command line (/proc/PID/cmdline is readable by every local
# user), in the environment of a command, or in this script's output: it is read with shell
# builtins, and grep and sed get it from 0600 files (printf, a builtin, under umask 077) in a
# private directory on /run (tmpfs) that is removed on exit. In user mode outpost reads it
# from a 0600 file of the user's there (OUTPOST_ENROLL_KEY_FILE).
#
# Exit codes: 0 enrolled, 1 failure (cloud-init then reports an error: `cloud-init status
# --long`, /var/log/cloud-init-output.log).
set -eu

# Filled in by `outpost cloud-init render` (each line exactly once; see cloud-init/README.md).
HUB_URL=""
RELEASE_URL=""
TARBALL_URL=""
GITHUB_URL=""
VERSION=""
TARGET=""
SHA256=""
PUBKEYS=""
MODE=""
RUN_AS=""
CA_FILE=""
SECRETS_FILE=""
MINISIG_FILE=""

ENROLL_WAIT_SECS=60
# Where cloud-init keeps copies of the user-data (scrubbed of the key on exit).
CLOUD_DIRS="/var/lib/cloud /run/cloud-init"
# Parent of KEY_DIR: tmpfs, so files holding the key never reach a disk.
KEY_PARENT=/run
TMP_DIR=""
KEY_DIR=""
KEY=""
CR=$(printf '\r')

say() { printf 'outpost-cloud-init: %s\n' "$*"; }

# fail MESSAGE HINT
fail() {
    printf 'outpost-cloud-init: error: %s\n' "$1" >&2
    printf 'outpost-cloud-init: hint: %s\n' "$2" >&2
    printf 'outpost-cloud-init: FAILED: this host is not enrolled; fix the above, then run (as root): sh %s\n' "$0" >&2
    exit 1
}

# key_files: KEY_DIR, a fresh 0700 directory holding the key as a grep pattern (key.grep) and
# a sed script that redacts it (key.sed), written by printf (a builtin) under umask 077: grep
# and sed read the key from there, never from their arguments.
key_files() {
    [ -z "$KEY_DIR" ] || return 0
    KEY_DIR=$(mktemp -d "$KEY_PARENT/outpost-key.XXXXXX") || return 1
    (
        umask 077
        printf '%s\n' "$KEY" >"$KEY_DIR/key.grep"
        printf 's/%s/REDACTED/g\n' "$KEY" >"$KEY_DIR/key.sed"
    )
}

# The key is used up (or still in the secrets file for a re-run): cloud-init's copies go.
scrub_cloud_init() {
    [ -n "$KEY" ] || return 0
    case "$KEY" in
        *[!A-Za-z0-9_-]*)
            say "warning: the enrollment key has unexpected characters: not scrubbing cloud-init's cache"
            return 0
            ;;
    esac
    key_files || {
        say "warning: cannot create a private directory under $KEY_PARENT: not scrubbing cloud-init's cache"
        return 0
    }
    left=""
    for d in $CLOUD_DIRS; do
        [ -d "$d" ] || continue
        grep -rlF -f "$KEY_DIR/key.grep" -- "$d" 2>/dev/null | while IFS= read -r f; do
            case "$f" in
                *.pkl) rm -f -- "$f" ;; # pickled datasource: cloud-init rebuilds it at next boot
                *) sed -i -f "$KEY_DIR/key.sed" -- "$f" ;;
            esac
        done
        if grep -rqF -f "$KEY_DIR/key.grep" -- "$d" 2>/dev/null; then left="$left $d"; fi
    done
    if [ -n "$left" ]; then
        say "warning: the enrollment key is still in a file under$left"
    else
        say "removed the enrollment key from cloud-init's cached user-data"
    fi
}

cleanup() {
    status=$?
    if [ -n "$TMP_DIR" ] && [ -d "$TMP_DIR" ]; then rm -rf "$TMP_DIR"; fi
    scrub_cloud_init || true
    if [ -n "$KEY_DIR" ] && [ -d "$KEY_DIR" ]; then rm -rf "$KEY_DIR"; fi
    exit "$status"
}

# set_key VALUE: KEY is VALUE without quotes, blanks and carriage returns (builtins only)
set_key() {
    rest=$1
    KEY=""
    while [ -n "$rest" ]; do
        c=${rest%"${rest#?}"}
        rest=${rest#?}
        case "$c" in
            '"' | "'" | ' ' | '	' | "$CR") ;;
            *) KEY=$KEY$c ;;
        esac
    done
}

# read_key: KEY from the first OUTPOST_ENROLL_KEY= line of the secrets file, with builtins
# only (read, case, parameter expansion): no command ever gets the key as an argument.
read_key() {
    [ -f "$SECRETS_FILE" ] || fail "the secrets file $SECRETS_FILE is missing" \
        "it is written by the user-data's write_files; check 'cloud-init schema --system' and /var/log/cloud-init.log, or write OUTPOST_ENROLL_KEY=KEY into it (mode 0600) with a new key from 'outpost-hub keys create'"
    KEY=""
    line=""
    while IFS= read -r line || [ -n "$line" ]; do
        case "$line" in
            *OUTPOST_ENROLL_KEY=*) ;;
            *) continue ;;
        esac
        case "${line%%OUTPOST_ENROLL_KEY=*}" in
            *[![:space:]]*) continue ;; # something before the name: not the assignment
        esac
        set_key "${line#*OUTPOST_ENROLL_KEY=}"
        return 0
    done <"$SECRETS_FILE"
}

# write_user_key FILE UID GID: the key alone in FILE (0600, owned by UID:GID), for
# OUTPOST_ENROLL_KEY_FILE: outpost install --user reads it there, not from its environment.
write_user_key() {
    (
        umask 077
        printf '%s\n' "$KEY" >"$1"
    )
    chown "$2:$3" "$1"
}

# download URL FILE: curl with retries (the network may still be settling at first boot)
download() {
    i=0
    while :; do
        if [ -n "$CURL_CA" ]; then
            curl -fsSL --proto '=https,http' --connect-timeout 30 --max-time 600 --cacert "$CURL_CA" -o "$2" "$1" && return 0
        else
            curl -fsSL --proto '=https,http' --connect-timeout 30 --max-time 600 -o "$2" "$1" && return 0
        fi
        i=$((i + 1))
        [ "$i" -lt 5 ] || fail "download failed: $1" \
            "check that this host reaches the release host over HTTPS (DNS, firewall egress on 443, proxy) and that outpost $VERSION is still published there"
        say "download failed, retrying in $((i * 3)) s"
        sleep $((i * 3))
    done
}

sha256_of() {
    if command -v sha256sum >/dev/null 2>&1; then
        sha256sum "$1" | cut -d' ' -f1
    else
        openssl dgst -sha256 "$1" | sed 's/^.*= //'
    fi
}

minisign_ok() {
    printf '%s\n' "$PUBKEYS" | while read -r k; do
        [ -n "$k" ] || continue
        if minisign -Vq -P "$k" -m "$1" -x "$2" >/dev/null 2>&1; then
            echo ok
            break
        fi
    done
}

fetch_and_verify() {
    name="outpost-$VERSION-$TARGET.tar.gz"
    tarball="$TMP_DIR/$name"
    say "downloading outpost $VERSION ($TARGET) from $RELEASE_URL"
    download "$TARBALL_URL" "$tarball"
    have=$(sha256_of "$tarball")
    [ "$have" = "$SHA256" ] || fail "checksum mismatch for $name: the user-data pins sha256 $SHA256, the download has $have" \
        "nothing was installed. If the release host serves the wrong file, report it to whoever runs it; if the user-data is stale, render it again ('outpost-hub keys create --cloud-init' or 'outpost cloud-init render') and rebuild this server with it"
    if command -v minisign >/dev/null 2>&1; then
        [ "$(minisign_ok "$tarball" "$MINISIG_FILE")" = ok ] || fail "signature check failed for $name" \
            "nothing was installed; the tarball is not signed by a key this user-data trusts. Render the user-data again against the release host"
        say "verified $name (sha256 $have, minisign signature)"
    else
        say "verified $name (sha256 $have; minisign not installed: outpost checks the signed release itself)"
    fi
    mkdir "$TMP_DIR/unpacked"
    tar -xzf "$tarball" -C "$TMP_DIR/unpacked" outpost || fail "cannot unpack $name" "the tarball is damaged; nothing was installed"
    BIN="$TMP_DIR/unpacked/outpost"
    [ -x "$BIN" ] || fail "$name holds no executable outpost binary" "report this to whoever runs the release host"
}

# A github: release source on GitHub Enterprise (or a test stand-in): outpost needs the base.
export_github_url() {
    if [ -n "$GITHUB_URL" ]; then
        OUTPOST_GITHUB_URL=$GITHUB_URL
        export OUTPOST_GITHUB_URL
    fi
}

# wait_for FILE: up to ENROLL_WAIT_SECS for FILE to exist
wait_for() {
    i=0
    while [ ! -s "$1" ]; do
        [ "$i" -lt "$ENROLL_WAIT_SECS" ] || return 1
        sleep 1
        i=$((i + 1))
    done
}

enroll_failed() {
    fail "outpost did not enroll with $HUB_URL within $ENROLL_WAIT_SECS s" \
        "read '$1'; check that this host reaches $HUB_URL, and that the key was not expired or used (mint a new one with 'outpost-hub keys create', put OUTPOST_ENROLL_KEY=NEW-KEY into $2 and run '$3')"
}

install_system() {
    set -- install --system --hub "$HUB_URL" --no-start
    if [ -n "$RUN_AS" ]; then set -- "$@" --run-as "$RUN_AS"; fi
    if [ -n "$CA_FILE" ]; then set -- "$@" --ca-file "$CA_FILE"; fi
    # The key stays in the secrets file written by write_files (install keeps it as it is).
    (
        unset OUTPOST_ENROLL_KEY
        OUTPOST_RELEASE_URL=$RELEASE_URL OUTPOST_RELEASE_PUBKEYS=$PUBKEYS
        export OUTPOST_RELEASE_URL OUTPOST_RELEASE_PUBKEYS
        export_github_url
        "$BIN" "$@"
    ) || fail "outpost install failed (see above)" "fix what it names and run this script again"
    # The secrets file is root's (0600; systemd reads it as root): the agent cannot rewrite
    # it, so once the agent has enrolled, this script (root) removes the used key.
    chown 0:0 "$SECRETS_FILE"
    chmod 0600 "$SECRETS_FILE"
    /usr/local/bin/outpost start --system || fail "outpost.service did not start" "read 'journalctl -u outpost'"
    wait_for /var/lib/outpost/agent/identity.json || enroll_failed "journalctl -u outpost" "$SECRETS_FILE" "outpost restart"
    if grep -q '^[[:space:]]*OUTPOST_ENROLL_KEY=' "$SECRETS_FILE" 2>/dev/null; then
        sed -i '/^[[:space:]]*OUTPOST_ENROLL_KEY=/d' "$SECRETS_FILE"
        say "removed the used enrollment key from $SECRETS_FILE"
    fi
}

install_user() {
    [ -n "$RUN_AS" ] || fail "user mode needs the user to run as" "render the user-data with --run-as USER"
    entry=$(getent passwd "$RUN_AS") || fail "user $RUN_AS does not exist" "create it in the user-data (users:) or choose another --run-as"
    uid=$(printf '%s' "$entry" | cut -d: -f3)
    gid=$(printf '%s' "$entry" | cut -d: -f4)
    home=$(printf '%s' "$entry" | cut -d: -f6)
    loginctl enable-linger "$RUN_AS" || fail "cannot enable linger for $RUN_AS" "check systemd-logind is running"
    i=0
    until [ -S "/run/user/$uid/bus" ]; do
        [ "$i" -lt 30 ] || fail "the user manager of $RUN_AS did not start" "read 'systemctl status user@$uid.service'"
        sleep 1
        i=$((i + 1))
    done
    chmod 0755 "$TMP_DIR" "$TMP_DIR/unpacked"
    # The key goes to outpost as a file of the user's (0600) in KEY_DIR (tmpfs; 0711 so the
    # user reaches only that file by name), removed on exit.
    key_files || fail "cannot create a private directory under $KEY_PARENT" "check that $KEY_PARENT is writable by root"
    chmod 0711 "$KEY_DIR"
    write_user_key "$KEY_DIR/enroll.key" "$uid" "$gid"
    (
        cd /
        unset OUTPOST_ENROLL_KEY
        HOME=$home USER=$RUN_AS LOGNAME=$RUN_AS XDG_RUNTIME_DIR=/run/user/$uid
        DBUS_SESSION_BUS_ADDRESS=unix:path=/run/user/$uid/bus
        OUTPOST_ENROLL_KEY_FILE=$KEY_DIR/enroll.key
        OUTPOST_RELEASE_URL=$RELEASE_URL OUTPOST_RELEASE_PUBKEYS=$PUBKEYS
        export HOME USER LOGNAME XDG_RUNTIME_DIR DBUS_SESSION_BUS_ADDRESS OUTPOST_ENROLL_KEY_FILE \
            OUTPOST_RELEASE_URL OUTPOST_RELEASE_PUBKEYS
        export_github_url
        set -- install --user --hub "$HUB_URL"
        if [ -n "$CA_FILE" ]; then set -- "$@" --ca-file "$CA_FILE"; fi
        exec setpriv --reuid="$uid" --regid="$gid" --init-groups "$BIN" "$@"
    ) || fail "outpost install --user failed (see above)" "fix what it names and run this script again"
    # install wrote the key into the user's own secrets file; the staging copies go.
    rm -f "$SECRETS_FILE" "$KEY_DIR/enroll.key"
    wait_for "$home/.local/state/outpost/agent/identity.json" ||
        enroll_failed "journalctl --user -u outpost (as $RUN_AS)" "$home/.config/outpost/outpost.env" "outpost restart (as $RUN_AS)"
}

main() {
    [ "$(id -u)" = 0 ] || fail "this script must run as root" "cloud-init runs it as root; by hand: sudo sh $0"
    if [ "$MODE" = system ] && [ -s /var/lib/outpost/agent/identity.json ]; then
        say "already enrolled (/var/lib/outpost/agent/identity.json exists): nothing to do"
        if [ -f "$SECRETS_FILE" ]; then read_key; fi
        scrub_cloud_init
        exit 0
    fi
    read_key
    [ -n "$KEY" ] || fail "$SECRETS_FILE holds no OUTPOST_ENROLL_KEY" \
        "mint a key with 'outpost-hub keys create', write OUTPOST_ENROLL_KEY=KEY into $SECRETS_FILE (mode 0600) and run this script again"
    command -v curl >/dev/null 2>&1 || fail "curl is not installed" "install it (apt-get install curl) and run this script again"
    TMP_DIR=$(mktemp -d /tmp/outpost-cloud-init.XXXXXX)
    trap cleanup EXIT
    CURL_CA=""
    if [ -n "$CA_FILE" ]; then
        # curl trusts the system bundle plus the CA given to the user-data.
        CURL_CA="$TMP_DIR/ca-bundle.pem"
        cat /etc/ssl/certs/ca-certificates.crt "$CA_FILE" >"$CURL_CA" 2>/dev/null || cat "$CA_FILE" >"$CURL_CA"
    fi
    fetch_and_verify
    case "$MODE" in
        system) install_system ;;
        user) install_user ;;
        *) fail "unknown mode '$MODE'" "render the user-data with --mode system or --mode user" ;;
    esac
    say "outpost $VERSION is installed and enrolled with $HUB_URL ($MODE mode)"
}

# In braces: a cut-off script is a syntax error, never a partial run.
{ main "$@"; }
