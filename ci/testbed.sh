#!/usr/bin/env bash
# Real-systemd test bed for outpost: Debian bookworm containers booted with
# systemd-nspawn (systemd as PID 1, logind, user managers, cloud-init present).
#
# Usage: ci/testbed.sh SUBCOMMAND [ARGS]
#   image                         build (or reuse) the cached image; prints its path
#   boot NAME                     boot a fresh container NAME from the image
#   pid NAME                      print the host PID of the container's PID 1
#   exec NAME -- CMD...           run CMD as root inside (nsenter; stdin passed)
#   run-as NAME USER -- CMD...    run CMD as USER in a real logind session
#                                 (systemd-run --uid=USER -p PAMName=login)
#   cp-in NAME HOSTPATH GUESTPATH copy a file or directory into the container
#   wait-user NAME USER           wait for user@UID.service and /run/user/UID/bus
#   reboot NAME                   clean poweroff, then boot again on the same files
#   powercut NAME                 SIGKILL the container (files are kept)
#   boot-again NAME               boot an existing (halted/power-cut) machine dir
#   halt NAME                     poweroff and delete the container
#   halt-all                      halt every container this test bed knows about
#   list                          list known containers
#
# Environment:
#   OUTPOST_TESTBED_CACHE   image cache dir   (default /var/cache/outpost-testbed)
#   OUTPOST_TESTBED_STATE   machines dir      (default /var/lib/outpost-testbed)
#   OUTPOST_TESTBED_MIRROR  Debian mirror     (default: taken from apt sources)
#   OUTPOST_TESTBED_BOOT_TIMEOUT  seconds to wait for boot (default 90)
#
# Layout: the image is a zstd tarball keyed by a hash of the recipe
# ($CACHE/image-HASH.tar.zst, built under flock). It is unpacked once to
# $STATE/base/HASH/root and each machine is an overlayfs mount of it at
# $STATE/machines/NAME/root (writes go to .../upper; kept across reboot and
# powercut, deleted by halt). nspawn runs in cgroups outpost-tb-NAME under
# /sys/fs/cgroup/{systemd,unified}, with the unified hierarchy inside, and
# shares the host network namespace (host 127.0.0.1 is reachable). The
# image has users alice (1000, passwordless sudo) and bob (1001), and
# cloud-init (NoCloud) disabled by /etc/cloud/cloud-init.disabled.
set -euo pipefail

# Debian release of the image: bookworm (default) or trixie (OUTPOST_TESTBED_SUITE=trixie).
readonly SUITE=${OUTPOST_TESTBED_SUITE:-bookworm}
case $SUITE in
bookworm | trixie) ;;
*)
    echo "error: OUTPOST_TESTBED_SUITE=$SUITE is not supported" >&2
    echo "hint: use bookworm or trixie" >&2
    exit 2
    ;;
esac
# The host's apt sources name the Debian mirror under its own suite; every suite lives there.
readonly MIRROR_SUITE=bookworm
# Bump when changing build_image_tree (the guest script and package lists are
# hashed directly).
readonly RECIPE_VERSION=1
readonly INCLUDE_PKGS="systemd,systemd-sysv,dbus,dbus-user-session,libpam-systemd,polkitd,sudo,procps,ca-certificates,curl,iproute2,passwd,login,less,zstd"
readonly APT_PKGS="cloud-init"
readonly CACHE_DIR="${OUTPOST_TESTBED_CACHE:-/var/cache/outpost-testbed}"
readonly STATE_DIR="${OUTPOST_TESTBED_STATE:-/var/lib/outpost-testbed}"
readonly BOOT_TIMEOUT="${OUTPOST_TESTBED_BOOT_TIMEOUT:-90}"
readonly HALT_TIMEOUT=30
readonly CGROUP_V1=/sys/fs/cgroup/systemd
readonly CGROUP_V2=/sys/fs/cgroup/unified
readonly CGROUP_PREFIX=outpost-tb-
readonly GUEST_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

log() { printf 'testbed: %s\n' "$*" >&2; }
elapsed_ms() { echo $((($(date +%s%N) - $1) / 1000000)); }
die() {
    printf 'testbed: ERROR: %s\n' "$1" >&2
    [[ -z ${2:-} ]] || printf 'hint: %s\n' "$2" >&2
    exit 1
}
# shellcheck source=ci/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//' >&2
    exit 2
}

# ---------------------------------------------------------------- checks

require_root() {
    [[ $(id -u) -eq 0 ]] || die "must run as root (systemd-nspawn, debootstrap, cgroups)"
}

require_tools() {
    local missing=() t
    for t in "$@"; do
        command -v "$t" >/dev/null 2>&1 || missing+=("$t")
    done
    if ((${#missing[@]})); then
        die "missing tools: ${missing[*]} -- install with:" \
            "apt-get install -y debootstrap systemd-container zstd iproute2 util-linux procps"
    fi
}

require_runtime() {
    require_root
    require_tools systemd-nspawn nsenter zstd tar flock setsid pgrep
    [[ -d $CGROUP_V1 && -d $CGROUP_V2 ]] ||
        die "expected hybrid cgroup mounts at $CGROUP_V1 and $CGROUP_V2"
}

validate_name() {
    local name=$1
    [[ $name =~ ^[A-Za-z0-9][A-Za-z0-9-]{0,62}$ ]] ||
        die "invalid machine name '$name' (letters, digits, '-'; max 63 chars)"
}

# ---------------------------------------------------------------- image

# Runs inside the chroot (as a bash -c script). Part of the recipe hash.
guest_configure_script() {
    cat <<'GUEST'
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive LC_ALL=C
printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
chmod 755 /usr/sbin/policy-rc.d
apt-get update -q
apt-get install -y -q --no-install-recommends "$@"
apt-get clean
rm -rf /var/lib/apt/lists/* /usr/sbin/policy-rc.d

echo outpost-testbed >/etc/hostname
printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' >/etc/hosts
: >/etc/machine-id   # empty: systemd generates a fresh one per boot/container

useradd -m -u 1000 -U -G sudo -s /bin/bash alice
useradd -m -u 1001 -U -s /bin/bash bob
passwd -d root >/dev/null
echo 'alice ALL=(ALL) NOPASSWD:ALL' >/etc/sudoers.d/alice
chmod 0440 /etc/sudoers.d/alice

# cloud-init: NoCloud only, and off unless a test removes cloud-init.disabled
mkdir -p /etc/cloud/cloud.cfg.d /var/lib/cloud/seed/nocloud
printf 'datasource_list: [ NoCloud, None ]\n' >/etc/cloud/cloud.cfg.d/90-outpost-testbed.cfg
touch /etc/cloud/cloud-init.disabled

# units that hang or fail in a container sharing the host network
for u in systemd-networkd-wait-online.service systemd-networkd.service \
         systemd-timesyncd.service apt-daily.timer apt-daily-upgrade.timer \
         e2scrub_all.timer e2scrub_reap.service fstrim.timer; do
    ln -sf /dev/null "/etc/systemd/system/$u"
done
mkdir -p /etc/systemd/journald.conf.d
printf '[Journal]\nStorage=persistent\nSystemMaxUse=32M\n' \
    >/etc/systemd/journald.conf.d/outpost-testbed.conf
GUEST
}

recipe_hash() {
    {
        printf '%s\n' "$RECIPE_VERSION" "$SUITE" "$INCLUDE_PKGS" "$APT_PKGS"
        guest_configure_script
    } | sha256sum | cut -c1-16
}

image_path() { printf '%s/image-%s.tar.zst\n' "$CACHE_DIR" "$(recipe_hash)"; }

build_image_tree() {
    local root=$1 mirror=$2
    debootstrap --variant=minbase --include="$INCLUDE_PKGS" "$SUITE" "$root" "$mirror" \
        >"$CACHE_DIR/debootstrap.log" 2>&1 || {
        tail -n 40 "$CACHE_DIR/debootstrap.log" >&2
        die "debootstrap failed (full log: $CACHE_DIR/debootstrap.log)"
    }
    cp /etc/resolv.conf "$root/etc/resolv.conf"
    chroot_mounts "$root"
    local rc=0
    # shellcheck disable=SC2086 # APT_PKGS is a word list
    chroot "$root" /usr/bin/env -i PATH="$GUEST_PATH" HOME=/root \
        /bin/bash -c "$(guest_configure_script)" guest $APT_PKGS \
        >"$CACHE_DIR/configure.log" 2>&1 || rc=$?
    chroot_umounts "$root"
    if ((rc != 0)); then
        tail -n 40 "$CACHE_DIR/configure.log" >&2
        die "configuring the image in chroot failed (rc=$rc; full log: $CACHE_DIR/configure.log)"
    fi
    rm -f "$root/etc/resolv.conf"
}

cmd_image() {
    require_root
    require_tools debootstrap zstd tar flock sha256sum chroot
    local img tmp mirror start
    img=$(image_path)
    mkdir -p "$CACHE_DIR"
    exec 8>"$CACHE_DIR/.lock"
    flock 8
    if [[ ! -s $img ]]; then
        mirror=$(detect_mirror)
        start=$SECONDS
        log "building image $img from $mirror (takes a few minutes)"
        tmp="$CACHE_DIR/build.$$"
        rm -rf "$tmp"
        mkdir -p "$tmp"
        # shellcheck disable=SC2064 # expand now
        trap "chroot_umounts '$tmp/root'; rm -rf '$tmp'" EXIT
        build_image_tree "$tmp/root" "$mirror"
        tar --numeric-owner --xattrs --acls -C "$tmp/root" -cf - . |
            zstd -q -T0 -3 -o "$tmp/image.tar.zst"
        mv "$tmp/image.tar.zst" "$img"
        rm -rf "$tmp"
        trap - EXIT
        # drop images of older recipes
        find "$CACHE_DIR" -maxdepth 1 -name 'image-*.tar.zst' ! -path "$img" -delete
        log "image built in $((SECONDS - start))s"
    fi
    exec 8>&-
    printf '%s\n' "$img"
}

# ---------------------------------------------------------------- machines

mdir() { printf '%s/machines/%s\n' "$STATE_DIR" "$1"; }
rootdir() { printf '%s/root\n' "$(mdir "$1")"; }
logfile() { printf '%s/console.log\n' "$(mdir "$1")"; }

# pid alive and not a zombie
alive() {
    local pid=$1 state
    [[ -n $pid && -r /proc/$pid/stat ]] || return 1
    state=$(sed -e 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1) || return 1
    [[ -n $state && $state != Z && $state != X ]]
}

nspawn_pid() {
    local f pid
    f="$(mdir "$1")/nspawn.pid"
    [[ -r $f ]] || return 1
    pid=$(<"$f")
    alive "$pid" || return 1
    printf '%s\n' "$pid"
}

# container PID 1 = nspawn's child whose comm is "systemd"
container_pid() {
    local npid pid
    npid=$(nspawn_pid "$1") || return 1
    pid=$(pgrep -P "$npid" -x systemd | head -n1) || return 1
    [[ -n $pid ]] || return 1
    printf '%s\n' "$pid"
}

cmd_pid() {
    local name=$1 pid
    validate_name "$name"
    pid=$(container_pid "$name") || die "container '$name' is not running"
    printf '%s\n' "$pid"
}

show_log() {
    local name=$1 f
    f=$(logfile "$name")
    if [[ -r $f ]]; then
        printf -- '----- %s (last 60 lines) -----\n' "$f" >&2
        tail -n 60 "$f" >&2 || true
        printf -- '----- end of log -----\n' >&2
    fi
    local pid
    if pid=$(container_pid "$name" 2>/dev/null); then
        printf -- '----- journal of %s (last 40 lines) -----\n' "$name" >&2
        timeout 10 nsenter -t "$pid" -a env -i PATH="$GUEST_PATH" \
            journalctl -b --no-pager -n 40 >&2 2>&1 || true
        timeout 10 nsenter -t "$pid" -a env -i PATH="$GUEST_PATH" \
            systemctl list-jobs --no-pager >&2 2>&1 || true
        printf -- '----- end of journal -----\n' >&2
    fi
}

fail() {
    local name=$1
    shift
    show_log "$name"
    die "$*"
}

cg_name() { printf '%s%s\n' "$CGROUP_PREFIX" "$1"; }

cgroup_procs() {
    local name=$1 cg
    cg=$(cg_name "$name")
    find "$CGROUP_V1/$cg" "$CGROUP_V2/$cg" -name cgroup.procs -exec cat {} + 2>/dev/null || true
}

cgroup_remove() {
    local name=$1 cg d
    cg=$(cg_name "$name")
    for d in "$CGROUP_V2/$cg" "$CGROUP_V1/$cg"; do
        [[ -d $d ]] || continue
        find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null || true
        [[ ! -d $d ]] || log "warning: could not remove cgroup $d"
    done
}

launch_nspawn() {
    local name=$1 root log cg
    root=$(rootdir "$name")
    log=$(logfile "$name")
    cg=$(cg_name "$name")
    cgroup_remove "$name"
    mkdir -p "$CGROUP_V1/$cg" "$CGROUP_V2/$cg"
    printf -- '===== boot %s =====\n' "$(date -Is)" >>"$log"
    # setsid: own session, so a caller's Ctrl-C / `timeout` group kill does not
    # hit nspawn. (No job control in this script, so the subshell is not a group
    # leader and setsid does not fork: $! stays nspawn's pid.)
    (
        echo "$BASHPID" >"$CGROUP_V1/$cg/cgroup.procs"
        echo "$BASHPID" >"$CGROUP_V2/$cg/cgroup.procs"
        exec env SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1 setsid systemd-nspawn \
            --boot --register=no --keep-unit --console=passive \
            -D "$root" -M "$name" </dev/null >>"$log" 2>&1
    ) &
    echo "$!" >"$(mdir "$name")/nspawn.pid"
}

wait_booted() {
    local name=$1 deadline pid state npid
    deadline=$((SECONDS + BOOT_TIMEOUT))
    pid=""
    while ((SECONDS < deadline)); do
        npid=$(nspawn_pid "$name") || fail "$name" "systemd-nspawn for '$name' exited during boot"
        pid=$(pgrep -P "$npid" -x systemd | head -n1 || true)
        [[ -n $pid ]] && break
        sleep 0.1
    done
    [[ -n $pid ]] || fail "$name" "container '$name': no systemd PID 1 after ${BOOT_TIMEOUT}s"
    # systemctl fails until PID 1 listens on its private socket: retry
    state=""
    while ((SECONDS < deadline)); do
        alive "$pid" || fail "$name" "container '$name': PID 1 died during boot"
        state=$(timeout "$((deadline - SECONDS > 1 ? deadline - SECONDS : 1))" \
            nsenter -t "$pid" -a env -i PATH="$GUEST_PATH" \
            systemctl is-system-running --wait 2>/dev/null) || true
        case $state in
            running | degraded) break ;;
            maintenance | stopping) break ;;
        esac
        sleep 0.2
    done
    case $state in
        running | degraded) ;;
        *) fail "$name" "container '$name' did not finish booting within ${BOOT_TIMEOUT}s (state: '${state:-unknown}')" ;;
    esac
    if [[ $state == degraded ]]; then
        log "$name: degraded; failed units: $(guest_exec "$name" systemctl --failed --no-legend --plain | awk '{print $1}' | tr '\n' ' ')"
    fi
}

start_machine() {
    local name=$1 start
    start=$(date +%s%N)
    launch_nspawn "$name"
    wait_booted "$name"
    log "$name: booted in $(elapsed_ms "$start") ms (pid $(container_pid "$name"))"
}

# Unpacked image shared read-only by all machines (overlayfs lower dir).
# Measured: per-machine untar (~280 MB, 10k files) takes 1-20 s depending on
# host I/O load; an overlay mount takes milliseconds and writes nothing.
ensure_base() {
    local img hash base d used
    img=$(cmd_image)
    hash=$(recipe_hash)
    base="$STATE_DIR/base/$hash"
    mkdir -p "$STATE_DIR/base"
    exec 7>"$STATE_DIR/base/.lock"
    flock 7
    if [[ ! -e $base/.complete ]]; then
        rm -rf "$base" "$base.tmp"
        mkdir -p "$base.tmp/root"
        zstd -q -d -c "$img" | tar --numeric-owner --xattrs --acls -C "$base.tmp/root" -xf - ||
            die "unpacking $img failed"
        touch "$base.tmp/.complete"
        mv "$base.tmp" "$base"
    fi
    # prune bases of older recipes that no machine uses any more
    used=$(cat "$STATE_DIR"/machines/*/lower 2>/dev/null || true)
    for d in "$STATE_DIR"/base/*/; do
        d=${d%/}
        [[ $d == "$base" ]] && continue
        grep -qxF "$d/root" <<<"$used" || rm -rf "$d"
    done
    exec 7>&-
    printf '%s/root\n' "$base"
}

mount_root() {
    local name=$1 m lower
    m=$(mdir "$name")
    mountpoint -q "$m/root" && return 0
    lower=$(<"$m/lower")
    [[ -d $lower ]] || die "$name: image base $lower is gone"
    mkdir -p "$m/upper" "$m/work" "$m/root"
    mount -t overlay overlay -o "lowerdir=$lower,upperdir=$m/upper,workdir=$m/work" "$m/root" ||
        die "$name: overlay mount failed (lower=$lower)"
}

umount_root() {
    local name=$1 m
    m=$(mdir "$name")
    for _ in 1 2 3 4 5; do
        mountpoint -q "$m/root" || return 0
        umount "$m/root" 2>/dev/null && return 0
        sleep 0.2
    done
    log "warning: $name: $m/root busy, lazy unmount"
    umount -l "$m/root" || true
}

cmd_boot() {
    local name=$1 lower m start
    start=$(date +%s%N)
    validate_name "$name"
    require_runtime
    lower=$(ensure_base)
    m=$(mdir "$name")
    if [[ -e $m ]]; then
        log "$name: removing leftover machine"
        cmd_halt "$name"
    fi
    mkdir -p "$m"
    printf '%s\n' "$lower" >"$m/lower"
    mount_root "$name"
    echo "$name" >"$m/root/etc/hostname"
    printf '127.0.1.1\t%s\n' "$name" >>"$m/root/etc/hosts"
    log "$name: root fs ready in $(elapsed_ms "$start") ms"
    start_machine "$name"
}

cmd_boot_again() {
    local name=$1
    validate_name "$name"
    require_runtime
    [[ -e $(mdir "$name")/lower ]] || die "no machine dir for '$name'"
    if nspawn_pid "$name" >/dev/null; then die "container '$name' is already running"; fi
    mount_root "$name"
    start_machine "$name"
}

# wait for nspawn to exit and the cgroups to empty; SIGTERM then SIGKILL
wait_stopped() {
    local name=$1 timeout=$2 npid deadline
    npid=$(nspawn_pid "$name" || true)
    deadline=$((SECONDS + timeout))
    while [[ -n $npid ]] && alive "$npid" && ((SECONDS < deadline)); do sleep 0.1; done
    if [[ -n $npid ]] && alive "$npid"; then
        log "$name: nspawn still running after ${timeout}s, sending SIGTERM"
        kill -TERM "$npid" 2>/dev/null || true
        deadline=$((SECONDS + 10))
        while alive "$npid" && ((SECONDS < deadline)); do sleep 0.1; done
    fi
    kill_cgroup "$name"
    rm -f "$(mdir "$name")/nspawn.pid"
}

kill_cgroup() {
    local name=$1 procs deadline
    deadline=$((SECONDS + 10))
    while procs=$(cgroup_procs "$name") && [[ -n $procs ]]; do
        # shellcheck disable=SC2086 # word list of pids
        kill -KILL $procs 2>/dev/null || true
        ((SECONDS < deadline)) || { log "warning: $name: processes survive SIGKILL: $procs"; break; }
        sleep 0.1
    done
    cgroup_remove "$name"
}

stop_machine() {
    local name=$1 pid npid
    npid=$(nspawn_pid "$name" || true)
    if pid=$(container_pid "$name") &&
        timeout 10 nsenter -t "$pid" -a env -i PATH="$GUEST_PATH" \
            systemctl poweroff --no-block >/dev/null 2>&1; then
        :
    elif [[ -n $npid ]]; then
        # not booted far enough for systemctl: nspawn turns SIGTERM into a halt
        kill -TERM "$npid" 2>/dev/null || true
    fi
    wait_stopped "$name" "$HALT_TIMEOUT"
}

cmd_halt() {
    local name=$1 m
    validate_name "$name"
    require_runtime
    m=$(mdir "$name")
    stop_machine "$name"
    umount_root "$name"
    if [[ -d $m ]]; then
        if grep -qF " $m/" /proc/self/mountinfo; then
            log "warning: $name: mounts left under $m, unmounting"
            grep -F " $m/" /proc/self/mountinfo | awk '{print $5}' | sort -r | xargs -r -n1 umount -l || true
        fi
        rm -rf --one-file-system "$m"
    fi
}

cmd_halt_all() {
    require_runtime
    local d name
    for d in "$STATE_DIR"/machines/*/; do
        [[ -d $d ]] || continue
        name=$(basename "$d")
        log "halting $name"
        cmd_halt "$name" || true
    done
    # cgroups of machines whose dirs are gone
    for d in "$CGROUP_V1/$CGROUP_PREFIX"* "$CGROUP_V2/$CGROUP_PREFIX"*; do
        [[ -d $d ]] || continue
        name=$(basename "$d")
        kill_cgroup "${name#"$CGROUP_PREFIX"}"
    done
}

cmd_list() {
    local d name state
    for d in "$STATE_DIR"/machines/*/; do
        [[ -d $d ]] || continue
        name=$(basename "$d")
        if container_pid "$name" >/dev/null; then state=running; else state=stopped; fi
        printf '%s\t%s\n' "$name" "$state"
    done
}

cmd_reboot() {
    local name=$1
    validate_name "$name"
    require_runtime
    container_pid "$name" >/dev/null || die "container '$name' is not running"
    stop_machine "$name"
    start_machine "$name"
}

cmd_powercut() {
    local name=$1 pid npid
    validate_name "$name"
    require_runtime
    pid=$(container_pid "$name" || true)
    npid=$(nspawn_pid "$name" || true)
    if [[ -n $pid ]]; then kill -KILL "$pid" 2>/dev/null || true; fi
    if [[ -n $npid ]]; then kill -KILL "$npid" 2>/dev/null || true; fi
    wait_stopped "$name" 5
    printf -- '===== power cut %s =====\n' "$(date -Is)" >>"$(logfile "$name")"
}

# ---------------------------------------------------------------- inside

guest_exec() {
    local name=$1 pid
    shift
    pid=$(container_pid "$name") || die "container '$name' is not running"
    nsenter -t "$pid" -a env -i PATH="$GUEST_PATH" HOME=/root USER=root LOGNAME=root \
        LANG=C.UTF-8 TERM=dumb "$@"
}

cmd_exec() {
    local name=$1
    shift
    validate_name "$name"
    [[ ${1:-} == -- ]] && shift
    (($#)) || die "exec: no command given"
    guest_exec "$name" "$@"
}

cmd_run_as() {
    local name=$1 user=$2 home
    shift 2
    validate_name "$name"
    [[ ${1:-} == -- ]] && shift
    (($#)) || die "run-as: no command given"
    # WorkingDirectory=~ fails with EACCES under systemd-run --pipe: resolve it here
    home=$(guest_exec "$name" getent passwd "$user" | cut -d: -f6) || true
    [[ -n $home ]] || die "run-as: no user '$user' in container '$name'"
    guest_exec "$name" systemd-run --wait --pipe --quiet --collect \
        --uid="$user" -p PAMName=login -p WorkingDirectory="$home" \
        --setenv=XDG_SESSION_CLASS=user --setenv=LANG=C.UTF-8 --setenv=TERM=dumb -- "$@"
}

cmd_wait_user() {
    local name=$1 user=$2 uid deadline=$((SECONDS + 60))
    validate_name "$name"
    uid=$(guest_exec "$name" id -u "$user") || die "no user '$user' in '$name'"
    while ((SECONDS < deadline)); do
        if guest_exec "$name" systemctl is-active --quiet "user@$uid.service" &&
            guest_exec "$name" test -S "/run/user/$uid/bus"; then
            return 0
        fi
        sleep 0.2
    done
    guest_exec "$name" systemctl status --no-pager "user@$uid.service" >&2 || true
    die "$name: user@$uid.service / /run/user/$uid/bus not ready after 60s"
}

cmd_cp_in() {
    local name=$1 src=$2 dst=$3 mode
    validate_name "$name"
    [[ -e $src ]] || die "cp-in: no such host path: $src"
    # shellcheck disable=SC2016 # $1/$2 expand in the guest shell
    if [[ -d $src ]]; then
        tar --numeric-owner -C "$src" -cf - . |
            guest_exec "$name" sh -c 'mkdir -p "$1" && tar --numeric-owner -C "$1" -xf -' sh "$dst"
    else
        mode=$(stat -c %a "$src")
        guest_exec "$name" sh -c \
            'mkdir -p "$(dirname "$1")" && cat >"$1.cp-in.tmp" && chmod "$2" "$1.cp-in.tmp" && mv -f "$1.cp-in.tmp" "$1"' \
            sh "$dst" "$mode" <"$src"
    fi
}

# ---------------------------------------------------------------- main

need_args() {
    local n=$1
    shift
    (($# >= n)) || usage
}

main() {
    (($#)) || usage
    local cmd=$1
    shift
    case $cmd in
        image) cmd_image ;;
        boot) need_args 1 "$@"; cmd_boot "$1" ;;
        boot-again) need_args 1 "$@"; cmd_boot_again "$1" ;;
        pid) need_args 1 "$@"; cmd_pid "$1" ;;
        exec) need_args 2 "$@"; cmd_exec "$@" ;;
        run-as) need_args 3 "$@"; cmd_run_as "$@" ;;
        cp-in) need_args 3 "$@"; cmd_cp_in "$1" "$2" "$3" ;;
        wait-user) need_args 2 "$@"; cmd_wait_user "$1" "$2" ;;
        reboot) need_args 1 "$@"; cmd_reboot "$1" ;;
        powercut) need_args 1 "$@"; cmd_powercut "$1" ;;
        halt) need_args 1 "$@"; cmd_halt "$1" ;;
        halt-all) cmd_halt_all ;;
        list) cmd_list ;;
        -h | --help | help) usage ;;
        *) log "unknown subcommand '$cmd'"; usage ;;
    esac
}

main "$@"; exit $?  # exit: never read past this line if the file is edited mid-run
