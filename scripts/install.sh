#!/bin/sh
# outpost installer: downloads a verified outpost release and installs it as a systemd service.
#
#   curl -sSL https://RELEASES/install.sh | sudo sh
#   curl -sSL https://RELEASES/install.sh | sudo OUTPOST_HUB_URL=https://hub.example.com sh
#
# The enrollment key is a secret: keep it out of command lines and environments (they show
# up in `ps`, shell history and sudo's log). Type or paste it at a silent prompt into a
# private temp file (mktemp: mode 0600, unpredictable name) and pass only the file's name:
#   f=$(mktemp) && printf 'enrollment key: ' && read -rs k && printf '%s\n' "$k" >"$f" &&
#     unset k && echo && curl -sSL https://RELEASES/install.sh |
#     sudo OUTPOST_ENROLL_KEY_FILE="$f" OUTPOST_HUB_URL=https://hub.example.com sh; rm -f "$f"
# (`read -rs` is bash/zsh; the prompt reads from your terminal, never from the piped script.)
# outpost copies the key only into the 0600 secrets file (/etc/outpost/outpost.env).
#
# Settings (environment variables):
#   OUTPOST_VERSION      exact version to install (default: the channel's current version)
#   OUTPOST_CHANNEL      release channel when no version is given: stable (default) or beta
#   OUTPOST_RELEASE_URL  release host base URL, or github:OWNER/REPO for GitHub Releases
#                        (default: where this script was published)
#   OUTPOST_GITHUB_URL   base URL for github: sources (default https://github.com; GitHub
#                        Enterprise: https://ghe.example.com)
#   OUTPOST_HUB_URL      control-plane URL written into a new config (outpost install --hub)
#   OUTPOST_ENROLL_KEY_FILE  file holding the single-use enrollment key (secret; see above)
#   OUTPOST_MODE         system (default when root) or user
#   OUTPOST_RUN_AS       system mode: user the service runs as (default: SUDO_USER, else `outpost`)
#
# Flags:
#   --version X      same as OUTPOST_VERSION=X
#   --bundle FILE    install from an offline bundle (outpost-release bundle) instead of downloading
#   --dry-run        print what outpost would change, change nothing
#   --uninstall      stop and remove the service (config, secrets and state are kept)
#   --purge          with --uninstall: remove config, secrets and state too
#   --help           this text
#
# Verification: the channel file (channels/NAME) is not signed, so a version read from it must
# be the channel's head embedded below at publish time, or one published after this script
# (a version this script knows that is not the head is a stale or forged channel: a
# downgrade, refused). The tarball's sha256 must match the value embedded below (a mismatch
# is fatal). When `minisign` is installed, its signature is checked against the embedded
# public key(s) as well. A version published after this script has no embedded sha256: then
# minisign is required to verify the signed SHA256SUMS, or use the newer release's own
# install.sh.
# Then `outpost install` itself, given OUTPOST_RELEASE_URL (the release URL, or the bundle
# file with --bundle), the embedded keys (OUTPOST_RELEASE_PUBKEYS) and the channel it was
# resolved from (OUTPOST_RELEASE_CHANNEL), checks the signed manifest (and its replay guard),
# that the channel's signed head is its version, and that its own sha256 is the one published
# for its version and target, before it changes anything.
#
# Exit codes: 0 ok, 1 failure, 2 bad input or unsupported host. Nothing is prompted for and
# nothing sleeps. Only the last line runs anything (main, in braces), so a truncated download
# runs nothing.
set -eu

# Filled in by `outpost-release publish`.
OUTPOST_EMBEDDED_RELEASE_URL=""
OUTPOST_EMBEDDED_PUBKEYS=""
OUTPOST_EMBEDDED_SHA256S=""
OUTPOST_EMBEDDED_CHANNELS=""

TMP_DIR=""
RESOLVED_CHANNEL=""
BUNDLE_PATH=""
ARG_VERSION=""
ARG_BUNDLE=""
ARG_DRY_RUN=0
ARG_UNINSTALL=0
ARG_PURGE=0

say() { printf 'outpost-install: %s\n' "$*" >&2; }

# fail CODE MESSAGE HINT
fail() {
    code=$1
    printf 'error: %s\n' "$2" >&2
    if [ -n "${3:-}" ]; then printf 'hint: %s\n' "$3" >&2; fi
    exit "$code"
}

cleanup() {
    if [ -n "$TMP_DIR" ] && [ -d "$TMP_DIR" ]; then rm -rf "$TMP_DIR"; fi
}

usage() {
    # Piped into a shell, $0 is the shell, not this file: print the short form then.
    if [ -f "$0" ] && grep -q '^# outpost installer' "$0" 2>/dev/null; then
        sed -n '2,/^set -eu/p' "$0" | sed -e '/^set -eu/d' -e 's/^# \{0,1\}//'
    else
        echo "usage: install.sh [--version X] [--bundle FILE] [--dry-run] [--uninstall [--purge]]"
        echo "settings: OUTPOST_VERSION OUTPOST_CHANNEL OUTPOST_RELEASE_URL OUTPOST_HUB_URL OUTPOST_ENROLL_KEY_FILE OUTPOST_MODE OUTPOST_RUN_AS"
    fi
}

parse_args() {
    while [ $# -gt 0 ]; do
        case "$1" in
            --version)
                [ $# -ge 2 ] || fail 2 "--version needs a value" "pass --version X.Y.Z"
                ARG_VERSION=$2
                shift 2
                ;;
            --version=*) ARG_VERSION=${1#--version=}; shift ;;
            --bundle)
                [ $# -ge 2 ] || fail 2 "--bundle needs a file" "pass --bundle /path/to/outpost-bundle.tar"
                ARG_BUNDLE=$2
                shift 2
                ;;
            --bundle=*) ARG_BUNDLE=${1#--bundle=}; shift ;;
            --dry-run) ARG_DRY_RUN=1; shift ;;
            --uninstall) ARG_UNINSTALL=1; shift ;;
            --purge) ARG_PURGE=1; shift ;;
            -h | --help) usage; exit 0 ;;
            *) fail 2 "unknown argument: $1" "run with --help to see the flags" ;;
        esac
    done
    if [ "$ARG_PURGE" = 1 ] && [ "$ARG_UNINSTALL" = 0 ]; then
        fail 2 "--purge only goes with --uninstall" "run with --uninstall --purge"
    fi
    if [ -n "$ARG_VERSION" ]; then OUTPOST_VERSION=$ARG_VERSION; fi
    case "${OUTPOST_VERSION:-}" in
        "" | [0-9]*.[0-9]*.[0-9]*) ;;
        *) fail 2 "invalid version '${OUTPOST_VERSION}'" "use an exact version such as 1.2.3" ;;
    esac
    case "${OUTPOST_CHANNEL:=stable}" in
        stable | beta) ;;
        *) fail 2 "invalid channel '$OUTPOST_CHANNEL'" "use OUTPOST_CHANNEL=stable or beta" ;;
    esac
    case "${OUTPOST_MODE:=}" in
        "" | system | user) ;;
        *) fail 2 "invalid OUTPOST_MODE '$OUTPOST_MODE'" "use OUTPOST_MODE=system or user" ;;
    esac
}

detect_platform() {
    os=$(uname -s)
    [ "$os" = Linux ] || fail 2 "unsupported operating system: $os" "outpost runs on Linux with systemd (Debian 12/13, Ubuntu 22.04/24.04, Raspberry Pi OS, DietPi)"
    case "$(uname -m)" in
        x86_64 | amd64) TARGET=x86_64-unknown-linux-musl ;;
        aarch64 | arm64) TARGET=aarch64-unknown-linux-musl ;;
        *) fail 2 "unsupported architecture: $(uname -m)" "outpost ships x86_64 and aarch64 builds; report this with the output of 'uname -a'" ;;
    esac
    SYSTEMD=0
    if [ -d /run/systemd/system ] && [ "$(cat /proc/1/comm 2>/dev/null || true)" = systemd ]; then
        SYSTEMD=1
    fi
    IN_CONTAINER=0
    if [ -f /run/.containerenv ] || [ -f /.dockerenv ] || [ -n "${container:-}" ]; then
        IN_CONTAINER=1
    fi
    if [ "$SYSTEMD" = 0 ] && [ "$IN_CONTAINER" = 0 ]; then
        fail 2 "systemd is not running as PID 1 (found: $(cat /proc/1/comm 2>/dev/null || echo unknown))" \
            "outpost needs systemd: Debian 12/13, Ubuntu 22.04/24.04, Raspberry Pi OS, DietPi; OpenRC (Alpine) is not supported"
    fi
}

pick_downloader() {
    if command -v curl >/dev/null 2>&1; then
        DOWNLOADER=curl
    elif command -v wget >/dev/null 2>&1; then
        DOWNLOADER=wget
    else
        fail 1 "neither curl nor wget is installed" "install one of them (apt-get install curl) and run again"
    fi
}

# download URL FILE
download() {
    case "$1" in
        file://*) cp "${1#file://}" "$2" || fail 1 "cannot read $1" "check OUTPOST_RELEASE_URL" ;;
        *)
            if [ "$DOWNLOADER" = curl ]; then
                curl -fsSL --proto '=https,http' -o "$2" "$1" || fail 1 "download failed: $1" "check the release URL and that this host can reach it (proxy: set HTTPS_PROXY)"
            else
                wget -q -O "$2" "$1" || fail 1 "download failed: $1" "check the release URL and that this host can reach it (proxy: set HTTPS_PROXY)"
            fi
            ;;
    esac
}

# check_release_source: set RELEASE_SRC (an http(s)/file URL without a trailing slash, or
# github:OWNER/REPO) and, for GitHub, GITHUB_BASE; refuse anything else.
check_release_source() {
    RELEASE_SRC=${OUTPOST_RELEASE_URL:-$OUTPOST_EMBEDDED_RELEASE_URL}
    RELEASE_SRC=${RELEASE_SRC%/}
    case "$RELEASE_SRC" in
        "") fail 2 "no release URL" "set OUTPOST_RELEASE_URL=https://your-release-host/path or github:OWNER/REPO" ;;
        https://?* | http://?* | file:///*) ;;
        github:*)
            repo=${RELEASE_SRC#github:}
            case "$repo" in
                */*/* | /* | */ | *[!A-Za-z0-9._/-]* | . | ./* | .. | ../* | */. | */..) fail 2 "invalid release source '$RELEASE_SRC'" "use github:OWNER/REPO (letters, digits, '-', '_', '.')" ;;
                */*) ;;
                *) fail 2 "invalid release source '$RELEASE_SRC'" "use github:OWNER/REPO (letters, digits, '-', '_', '.')" ;;
            esac
            GITHUB_BASE=${OUTPOST_GITHUB_URL:-https://github.com}
            GITHUB_BASE=${GITHUB_BASE%/}
            case "$GITHUB_BASE" in
                https://?* | http://127.0.0.1 | http://127.0.0.1[:/]* | http://localhost | http://localhost[:/]* | "http://[::1]" | "http://[::1]"[:/]*) ;;
                *) fail 2 "invalid OUTPOST_GITHUB_URL '$GITHUB_BASE'" "use an https:// URL such as https://ghe.example.com (http:// only on loopback)" ;;
            esac
            ;;
        *) fail 2 "invalid release source '$RELEASE_SRC'" "use an https:// URL, a file:/// URL or github:OWNER/REPO" ;;
    esac
}

# asset_url PATH: where PATH of the release-root layout (vV/FILE, channels/C, manifest.json)
# is fetched from. GitHub Releases hold one release per tag vV; root files are assets of the
# latest release, and channels/C is the asset channel-C (docs/RELEASES.md).
asset_url() {
    case "$RELEASE_SRC" in
        github:*)
            gh="$GITHUB_BASE/${RELEASE_SRC#github:}/releases"
            case "$1" in
                v*/*) printf '%s/download/%s/%s' "$gh" "${1%%/*}" "${1#*/}" ;;
                channels/*) printf '%s/latest/download/channel-%s' "$gh" "${1#channels/}" ;;
                *) printf '%s/latest/download/%s' "$gh" "$1" ;;
            esac
            ;;
        *) printf '%s/%s' "$RELEASE_SRC" "$1" ;;
    esac
}

resolve_version() {
    if [ -n "${OUTPOST_VERSION:-}" ]; then
        VERSION=$OUTPOST_VERSION
        return
    fi
    download "$(asset_url "channels/$OUTPOST_CHANNEL")" "$TMP_DIR/channel"
    VERSION=$(tr -d ' \t\r\n' <"$TMP_DIR/channel")
    case "$VERSION" in
        [0-9]*.[0-9]*.[0-9]*) ;;
        *) fail 1 "channel $OUTPOST_CHANNEL names no valid version ('$VERSION')" "set OUTPOST_VERSION explicitly" ;;
    esac
    check_channel_head
    RESOLVED_CHANNEL=$OUTPOST_CHANNEL
}

# embedded_channel_head CHANNEL: the channel's version when this script was published
embedded_channel_head() {
    printf '%s\n' "$OUTPOST_EMBEDDED_CHANNELS" | while read -r c v; do
        if [ "$c" = "$1" ]; then
            printf '%s' "$v"
            break
        fi
    done
}

# embedded_version V: prints V if this script was published with a checksum for a build of V
embedded_version() {
    printf '%s\n' "$OUTPOST_EMBEDDED_SHA256S" | while read -r v t s; do
        if [ "$v" = "$1" ]; then
            printf '%s' "$v"
            break
        fi
    done
}

# The channel file is unsigned: it may name the head this script was published with, or a
# version published after it (outpost then checks the signed manifest's head itself), but not
# another version this script knows: that is a stale or forged channel file (a downgrade).
check_channel_head() {
    head=$(embedded_channel_head "$OUTPOST_CHANNEL")
    if [ -z "$head" ] || [ "$VERSION" = "$head" ] || [ -z "$(embedded_version "$VERSION")" ]; then
        return 0
    fi
    fail 1 "channel $OUTPOST_CHANNEL names outpost $VERSION, but its head was $head when this install.sh was published: refusing a stale or forged channel file (a downgrade)" \
        "nothing was installed. The release host or a mirror serves an old or forged channels/$OUTPOST_CHANNEL: fetch install.sh from the release host again (or pin a version on purpose: OUTPOST_VERSION=$head), and report it to whoever runs the mirror if it persists"
}

sha256_of() {
    if command -v sha256sum >/dev/null 2>&1; then
        sha256sum "$1" | cut -d' ' -f1
    else
        openssl dgst -sha256 "$1" | sed 's/^.*= //'
    fi
}

embedded_sha256() {
    printf '%s\n' "$OUTPOST_EMBEDDED_SHA256S" | while read -r v t s; do
        if [ "$v" = "$VERSION" ] && [ "$t" = "$TARGET" ]; then
            printf '%s' "$s"
            break
        fi
    done
}

# minisign_ok FILE: verify FILE.minisig against any embedded key
minisign_ok() {
    printf '%s\n' "$OUTPOST_EMBEDDED_PUBKEYS" | while read -r key; do
        [ -n "$key" ] || continue
        if minisign -Vq -P "$key" -m "$1" >/dev/null 2>&1; then
            echo ok
            break
        fi
    done
}

verify_tarball() {
    tarball=$1 name=$2
    want=$(embedded_sha256)
    have=$(sha256_of "$tarball")
    has_minisign=0
    if command -v minisign >/dev/null 2>&1 && [ -n "$OUTPOST_EMBEDDED_PUBKEYS" ]; then has_minisign=1; fi
    if [ -n "$want" ]; then
        [ "$want" = "$have" ] || fail 1 "checksum mismatch for $name: expected $want, got $have" \
            "the download was corrupted or tampered with; nothing was installed. Report this to whoever runs the release host"
    elif [ "$has_minisign" = 1 ]; then
        # Newer than this script: trust SHA256SUMS only with a valid signature.
        if [ ! -f "$TMP_DIR/SHA256SUMS" ] || [ ! -f "$TMP_DIR/SHA256SUMS.minisig" ]; then
            fail 1 "no signed SHA256SUMS for $VERSION" "use the install.sh published with that release"
        fi
        [ "$(minisign_ok "$TMP_DIR/SHA256SUMS")" = ok ] || fail 1 "signature check failed for SHA256SUMS of $VERSION" "nothing was installed; the release is not signed by a trusted key"
        want=$(grep "  $name\$" "$TMP_DIR/SHA256SUMS" | cut -d' ' -f1)
        if [ -z "$want" ] || [ "$want" != "$have" ]; then
            fail 1 "checksum mismatch for $name" "nothing was installed; the download was corrupted or tampered with"
        fi
    else
        fail 1 "this installer has no checksum for outpost $VERSION ($TARGET) and minisign is not installed" \
            "use the install.sh published with that release, or install minisign (apt-get install minisign)"
    fi
    if [ "$has_minisign" = 1 ] && [ -f "$tarball.minisig" ]; then
        [ "$(minisign_ok "$tarball")" = ok ] || fail 1 "signature check failed for $name" "nothing was installed; the tarball is not signed by a trusted key"
    fi
    say "verified $name (sha256 $have)"
}

# check_bundle: set BUNDLE_PATH (absolute), VERSION and BUNDLE_MEMBER (the tarball's entry)
# from the bundle's listing. A bundle holds only release-root files (docs/RELEASES.md): any
# other entry, a path with `..`, or two builds for this target is refused before extracting.
check_bundle() {
    if [ ! -f "$ARG_BUNDLE" ] || [ ! -r "$ARG_BUNDLE" ]; then
        fail 2 "cannot read bundle $ARG_BUNDLE" "pass the path of a file made by 'outpost-release bundle'"
    fi
    case "$ARG_BUNDLE" in
        /*) BUNDLE_PATH=$ARG_BUNDLE ;;
        *) BUNDLE_PATH=$(pwd)/$ARG_BUNDLE ;;
    esac
    # outpost records it as [release] url: no spaces, quotes or other characters TOML or sh mind
    case "$BUNDLE_PATH" in
        *[!A-Za-z0-9._/+@:=,~-]*) fail 2 "the bundle path $BUNDLE_PATH has characters outpost does not accept in a release source" "move or rename the bundle to a path of letters, digits and . _ - / only" ;;
    esac
    tar -tf "$BUNDLE_PATH" >"$TMP_DIR/bundle-members" 2>/dev/null || fail 1 "bundle $BUNDLE_PATH is not a valid tar file" "make it again with 'outpost-release bundle'"
    BUNDLE_MEMBER=""
    while IFS= read -r m; do
        rel=${m#./}
        case "$rel" in
            *..*) fail 1 "bundle $BUNDLE_PATH holds the entry '$m', which leaves the bundle" "nothing was installed; this is not a bundle made by 'outpost-release bundle'" ;;
            "" | v[0-9]*/) ;;
            manifest.json | manifest.json.minisig | v[0-9]*/SHA256SUMS | v[0-9]*/SHA256SUMS.minisig | v[0-9]*/outpost-*.tar.gz.minisig) ;;
            v[0-9]*/outpost-*-"$TARGET".tar.gz)
                [ -z "$BUNDLE_MEMBER" ] || fail 1 "bundle $BUNDLE_PATH holds more than one build for $TARGET" "nothing was installed; make a bundle of one version with 'outpost-release bundle'"
                BUNDLE_MEMBER=$m
                ;;
            v[0-9]*/outpost-*.tar.gz) ;;
            *) fail 1 "bundle $BUNDLE_PATH holds an unexpected entry '$m'" "nothing was installed; a bundle holds only release files: make it again with 'outpost-release bundle'" ;;
        esac
    done <"$TMP_DIR/bundle-members"
    [ -n "$BUNDLE_MEMBER" ] || fail 1 "bundle $BUNDLE_PATH has no build for $TARGET" "make a bundle with --target $TARGET"
    name=${BUNDLE_MEMBER##*/}
    VERSION=${name#outpost-}
    VERSION=${VERSION%-"$TARGET".tar.gz}
    case "${BUNDLE_MEMBER#./}" in
        "v$VERSION/$name") ;;
        *) fail 1 "bundle $BUNDLE_PATH holds $name in the wrong directory ($BUNDLE_MEMBER)" "nothing was installed; make the bundle again with 'outpost-release bundle'" ;;
    esac
}

# bundle_extract MEMBER DEST: one regular file of the bundle (only if listed)
bundle_extract() {
    grep -qxF -- "$1" "$TMP_DIR/bundle-members" || return 0
    mkdir -p "$TMP_DIR/bundle"
    tar -xf "$BUNDLE_PATH" -C "$TMP_DIR/bundle" -- "$1" || fail 1 "cannot extract $1 from bundle $BUNDLE_PATH" "the bundle is damaged; make it again with 'outpost-release bundle'"
    if [ ! -f "$TMP_DIR/bundle/$1" ] || [ -h "$TMP_DIR/bundle/$1" ]; then
        fail 1 "$1 in bundle $BUNDLE_PATH is not a regular file" "nothing was installed; make the bundle again with 'outpost-release bundle'"
    fi
    mv -f "$TMP_DIR/bundle/$1" "$2"
}

fetch_release() {
    name="outpost-$VERSION-$TARGET.tar.gz"
    if [ -n "$ARG_BUNDLE" ]; then
        dir=${BUNDLE_MEMBER%/*}
        bundle_extract "$BUNDLE_MEMBER" "$TMP_DIR/$name"
        [ -f "$TMP_DIR/$name" ] || fail 1 "cannot extract $BUNDLE_MEMBER from bundle $BUNDLE_PATH" "the bundle is damaged; make it again with 'outpost-release bundle'"
        bundle_extract "$BUNDLE_MEMBER.minisig" "$TMP_DIR/$name.minisig"
        bundle_extract "$dir/SHA256SUMS" "$TMP_DIR/SHA256SUMS"
        bundle_extract "$dir/SHA256SUMS.minisig" "$TMP_DIR/SHA256SUMS.minisig"
        say "read outpost $VERSION for $TARGET from bundle $BUNDLE_PATH"
    else
        say "downloading outpost $VERSION for $TARGET from $RELEASE_SRC"
        download "$(asset_url "v$VERSION/$name")" "$TMP_DIR/$name"
        if command -v minisign >/dev/null 2>&1; then
            files="$name.minisig"
            if [ -z "$(embedded_sha256)" ]; then files="$files SHA256SUMS SHA256SUMS.minisig"; fi
            for f in $files; do
                download "$(asset_url "v$VERSION/$f")" "$TMP_DIR/$f"
            done
        fi
    fi
    verify_tarball "$TMP_DIR/$name" "$name"
    mkdir "$TMP_DIR/unpacked"
    tar -xzf "$TMP_DIR/$name" -C "$TMP_DIR/unpacked" outpost || fail 1 "cannot unpack $name" "the tarball is damaged; nothing was installed"
    OUTPOST_BIN="$TMP_DIR/unpacked/outpost"
    if [ ! -f "$OUTPOST_BIN" ] || [ -h "$OUTPOST_BIN" ] || [ ! -x "$OUTPOST_BIN" ]; then
        fail 1 "$name holds no executable outpost binary" "report this to whoever runs the release host"
    fi
}

installed_binary() {
    for b in /usr/local/bin/outpost "${HOME:-/nonexistent}/.local/bin/outpost"; do
        if [ -x "$b" ]; then
            printf '%s' "$b"
            return
        fi
    done
}

run_uninstall() {
    bin=$(installed_binary)
    [ -n "$bin" ] || fail 1 "outpost is not installed (no /usr/local/bin/outpost or ~/.local/bin/outpost)" "nothing to uninstall"
    set -- uninstall
    if [ "$ARG_PURGE" = 1 ]; then set -- "$@" --purge; fi
    if [ "$ARG_DRY_RUN" = 1 ]; then set -- "$@" --dry-run; fi
    "$bin" "$@"
}

run_install() {
    if [ "$SYSTEMD" = 0 ]; then
        # A container without systemd: place the binary, no service.
        if [ "$ARG_DRY_RUN" = 1 ]; then
            say "would copy outpost $VERSION to /usr/local/bin/outpost (no systemd here: no service)"
            return
        fi
        install -m 0755 "$OUTPOST_BIN" /usr/local/bin/outpost.new && mv -f /usr/local/bin/outpost.new /usr/local/bin/outpost
        say "installed the outpost binary only: systemd is not PID 1 in this container"
        say "hint: run 'outpost agent run' as the container's main process, or install on the host"
        return
    fi
    set -- install
    case "$OUTPOST_MODE" in
        system) set -- "$@" --system ;;
        user) set -- "$@" --user ;;
    esac
    if [ -n "${OUTPOST_HUB_URL:-}" ]; then set -- "$@" --hub "$OUTPOST_HUB_URL"; fi
    if [ -n "${OUTPOST_RUN_AS:-}" ]; then set -- "$@" --run-as "$OUTPOST_RUN_AS"; fi
    if [ "$ARG_DRY_RUN" = 1 ]; then set -- "$@" --dry-run; fi
    # The enrollment key reaches outpost through OUTPOST_ENROLL_KEY_FILE (or the environment),
    # never argv.
    # outpost checks the signed manifest itself (against the keys embedded here, with its
    # replay guard), that a channel's signed head is the version resolved from it, and that its
    # own sha256 is the one published for its version and target: from the release source, or
    # from the bundle exactly the same way.
    if [ -n "$ARG_BUNDLE" ]; then
        OUTPOST_RELEASE_URL=$BUNDLE_PATH
    else
        OUTPOST_RELEASE_URL=$RELEASE_SRC
    fi
    OUTPOST_RELEASE_PUBKEYS=$OUTPOST_EMBEDDED_PUBKEYS
    export OUTPOST_RELEASE_URL OUTPOST_RELEASE_PUBKEYS
    if [ -n "$RESOLVED_CHANNEL" ]; then
        OUTPOST_RELEASE_CHANNEL=$RESOLVED_CHANNEL
        export OUTPOST_RELEASE_CHANNEL
    else
        unset OUTPOST_RELEASE_CHANNEL
    fi
    if [ -n "$ARG_BUNDLE" ]; then
        "$OUTPOST_BIN" "$@"
        return
    fi
    if [ -n "${GITHUB_BASE:-}" ]; then
        OUTPOST_GITHUB_URL=$GITHUB_BASE
        export OUTPOST_GITHUB_URL
    fi
    "$OUTPOST_BIN" "$@"
}

main() {
    parse_args "$@"
    detect_platform
    if [ "$ARG_UNINSTALL" = 1 ]; then
        run_uninstall
        return
    fi
    if [ -z "$ARG_BUNDLE" ]; then check_release_source; fi
    pick_downloader
    TMP_DIR=$(mktemp -d "${TMPDIR:-/tmp}/outpost-install.XXXXXX")
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    if [ -n "$ARG_BUNDLE" ]; then check_bundle; else resolve_version; fi
    fetch_release
    run_install
}

# In braces: a download cut anywhere in this line is a syntax error, never a bare `main`.
{ main "$@"; }
