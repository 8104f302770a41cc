#!/usr/bin/env bash
# QEMU VM test bed for what the nspawn containers of ci/testbed.sh cannot show: cgroup v2
# with its controllers (cpuset cpu io memory pids), so memory, CPU and task limits are really
# enforced. The VM boots the SAME Debian image as the containers, with its own kernel, under
# TCG (no KVM needed), with no network device at all (-nic none): a test talks to servers it
# starts inside the VM, on the VM's own 127.0.0.1.
#
# Usage: ci/vm.sh SUBCOMMAND [ARGS]
#   image                     build (or reuse) the cached VM image; prints its directory
#   run PAYLOAD_DIR OUT_DIR   boot a fresh VM (the root disk is never written: snapshot=on)
#                             with PAYLOAD_DIR as its payload, run PAYLOAD_DIR/run.sh OUT as
#                             root once the system is up, power off, and unpack what the
#                             script left in OUT into OUT_DIR (plus console.log, rc,
#                             journal.txt, boot.txt)
#   smoke OUT_DIR             `run` with a payload that records the kernel, the cgroup
#                             controllers and the Delegate= of user@.service
#
# Environment:
#   OUTPOST_VM_CACHE     image cache dir (default $OUTPOST_TESTBED_CACHE/vm, i.e.
#                        /var/cache/outpost-testbed/vm)
#   OUTPOST_VM_TIMEOUT   seconds one `run` may take from power on to power off (default 300);
#                        run.sh gets this less 60 s (boot and shutdown), then it is killed
#   OUTPOST_VM_MEMORY    guest memory in MiB (default 1024)
#   OUTPOST_VM_CPUS      guest CPUs (default 2)
#   ci/testbed.sh's OUTPOST_TESTBED_CACHE and OUTPOST_TESTBED_MIRROR apply to the base image
#   and to the kernel download.
#
# The kernel: the image has none, and the host's kernel is not a Debian one (nor is it
# guaranteed to have /boot, modules or virtio drivers), so the image build installs Debian's
# linux-image-amd64 into a copy of the unpacked testbed tree with apt in a chroot, from the
# mirror ci/testbed.sh uses. Its initramfs (initramfs-tools) is cut down to what the VM needs
# (MODULES=list: virtio_pci, virtio_blk, ext4): less to unpack and probe under TCG. QEMU
# boots that vmlinuz + initrd directly (-kernel/-initrd), so there is no boot loader and no
# partition table: the root disk is the tree as a bare ext4 file system (mkfs.ext4 -d, no
# loop mount), and the modules in it match the kernel.
#
# Layout: $CACHE/HASH/{vmlinuz,initrd.img,root.img}; HASH covers the testbed image's name
# (itself a hash of its recipe) and this script's recipe, so a change to either rebuilds;
# older builds are deleted. Built under flock. A run uses three virtio disks: the root
# (snapshot=on: writes go to a temporary overlay and vanish at exit), the payload (a tar
# archive as a raw disk, read-only) and the output (a raw disk the guest writes one tar
# archive to, read back with tar). The guest side is the unit outpost-vm-payload.service,
# baked into the image: it waits for the payload disk, runs run.sh, writes the archive and
# powers off (it powers off at once when there is no payload disk). Markers on the serial
# console (console.log): "outpost-vm: payload start", "outpost-vm: payload done rc=N".
set -euo pipefail

readonly VM_RECIPE_VERSION=1
HERE=$(cd "$(dirname "$0")" && pwd)
readonly HERE
readonly TESTBED_CACHE="${OUTPOST_TESTBED_CACHE:-/var/cache/outpost-testbed}"
readonly CACHE_DIR="${OUTPOST_VM_CACHE:-$TESTBED_CACHE/vm}"
readonly VM_TIMEOUT="${OUTPOST_VM_TIMEOUT:-300}"
readonly VM_MEMORY="${OUTPOST_VM_MEMORY:-1024}"
readonly VM_CPUS="${OUTPOST_VM_CPUS:-2}"
readonly ROOT_SIZE=3G
readonly OUT_SIZE=64M
readonly MIRROR_SUITE=bookworm
readonly KERNEL_PKGS="linux-image-amd64"
readonly GUEST_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# Only the testbed's own suite (the image is bookworm unless OUTPOST_TESTBED_SUITE says so).
readonly SUITE=${OUTPOST_TESTBED_SUITE:-bookworm}

log() { printf 'vm: %s\n' "$*" >&2; }
die() {
    printf 'vm: ERROR: %s\n' "$1" >&2
    [[ -z ${2:-} ]] || printf 'hint: %s\n' "$2" >&2
    exit 1
}
# shellcheck source=ci/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//' >&2
    exit 2
}

require_root() {
    [[ $(id -u) -eq 0 ]] || die "must run as root (chroot, apt in the image tree)" "run it with sudo"
}

require_tools() {
    local missing=() t
    for t in "$@"; do
        command -v "$t" >/dev/null 2>&1 || missing+=("$t")
    done
    ((${#missing[@]} == 0)) ||
        die "missing tools: ${missing[*]}" "run ci/setup.sh (installs qemu-system-x86, e2fsprogs, zstd)"
}

valid_uint() { [[ $1 =~ ^[0-9]+$ ]] || die "$2=$1 is not a number" "unset it or give a whole number"; }

# ---------------------------------------------------------------- image

# Runs inside the chroot of the unpacked testbed tree (bash -c). Part of the recipe hash.
guest_kernel_script() {
    cat <<'GUEST'
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive LC_ALL=C
printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
chmod 755 /usr/sbin/policy-rc.d
# A small initramfs: only what finds and mounts the root disk of this VM.
mkdir -p /etc/initramfs-tools/conf.d
printf 'MODULES=list\nCOMPRESS=zstd\n' >/etc/initramfs-tools/conf.d/outpost-vm.conf
printf 'virtio_pci\nvirtio_blk\ncrc32c_generic\next4\n' >/etc/initramfs-tools/modules
apt-get update -q
apt-get install -y -q --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$@"
apt-get clean
rm -rf /var/lib/apt/lists/* /usr/sbin/policy-rc.d
ls /boot/vmlinuz-* /boot/initrd.img-* >/dev/null
GUEST
}

# Files the image gets on top of the testbed tree (written by write_vm_files). Part of the
# recipe hash.
payload_unit() {
    cat <<'UNIT'
[Unit]
Description=outpost VM test payload (ci/vm.sh)
After=multi-user.target
ConditionKernelCommandLine=outpost.vm=1

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/outpost-vm-payload
StandardOutput=journal+console
StandardError=journal+console
TimeoutStartSec=infinity

[Install]
WantedBy=multi-user.target
UNIT
}

payload_runner() {
    cat <<'RUNNER'
#!/bin/bash
# Runs the payload of ci/vm.sh once the system is up, writes the results, powers off.
set -uo pipefail
say() { echo "outpost-vm: $*"; }
finish() { say "powering off"; systemctl poweroff --no-block; exit 0; }
# the disk with this serial (udev's by-id link), waiting up to 30 s for it
disk() {
    local i
    for ((i = 0; i < 300; i++)); do
        [[ -b /dev/disk/by-id/virtio-$1 ]] && { readlink -f "/dev/disk/by-id/virtio-$1"; return 0; }
        sleep 0.1
    done
    return 1
}
arg() { sed -n "s/.*\\b$1=\\([^ ]*\\).*/\\1/p" /proc/cmdline; }
say "payload start, uptime $(cut -d' ' -f1 /proc/uptime) s"
pay=$(disk outpost-payload) || { say "no payload disk"; finish; }
out=$(disk outpost-out) || { say "no output disk"; finish; }
P=/var/lib/outpost-vm/payload O=/var/lib/outpost-vm/out
rm -rf "$P" "$O"
mkdir -p "$P" "$O"
tar -xf "$pay" -C "$P" || { say "payload disk $pay is not a tar archive"; finish; }
# seconds since the kernel started: the boot, up to this unit (part of the boot itself)
echo "payload_start_uptime=$(cut -d' ' -f1 /proc/uptime)" >"$O/boot.txt"
t=$(arg outpost.timeout)
[[ $t =~ ^[0-9]+$ ]] || t=240
say "running run.sh (at most $t s)"
timeout --kill-after=5 "$t" "$P/run.sh" "$O" >"$O/run.log" 2>&1
rc=$?
echo "$rc" >"$O/rc"
echo "payload_end_uptime=$(cut -d' ' -f1 /proc/uptime)" >>"$O/boot.txt"
journalctl -b --no-pager -o short-monotonic >"$O/journal.txt" 2>&1
say "payload done rc=$rc"
tail -n 20 "$O/run.log" | sed 's/^/outpost-vm: run.log: /'
tar -C "$O" -cf "$out" . || say "writing the results to $out failed"
sync
finish
RUNNER
}

recipe_hash() {
    local tb_image=$1
    {
        printf '%s\n' "$VM_RECIPE_VERSION" "$(basename "$tb_image")" "$KERNEL_PKGS" "$ROOT_SIZE"
        guest_kernel_script
        payload_unit
        payload_runner
        declare -f write_vm_files
    } | sha256sum | cut -c1-16
}

write_vm_files() {
    local root=$1
    echo outpost-vm >"$root/etc/hostname"
    printf '127.0.0.1\tlocalhost\n127.0.1.1\toutpost-vm\n::1\tlocalhost ip6-localhost ip6-loopback\n' \
        >"$root/etc/hosts"
    printf '/dev/vda / ext4 rw,noatime 0 0\n' >"$root/etc/fstab"
    payload_unit >"$root/etc/systemd/system/outpost-vm-payload.service"
    ln -sf ../outpost-vm-payload.service \
        "$root/etc/systemd/system/multi-user.target.wants/outpost-vm-payload.service"
    payload_runner >"$root/usr/local/sbin/outpost-vm-payload"
    chmod 0755 "$root/usr/local/sbin/outpost-vm-payload"
    # no login prompt on the serial console (it only adds noise to console.log)
    ln -sf /dev/null "$root/etc/systemd/system/serial-getty@ttyS0.service"
    ln -sf /dev/null "$root/etc/systemd/system/getty@tty1.service"
}

build_vm_image() {
    local tb_image=$1 dir=$2 tmp=$3 mirror rc=0 kver
    mirror=$(detect_mirror)
    local root="$tmp/root"
    mkdir -p "$root"
    log "unpacking $tb_image"
    zstd -q -d -c "$tb_image" | tar --numeric-owner --xattrs --acls -C "$root" -xf - ||
        die "unpacking $tb_image failed" "delete it and run 'bash ci/testbed.sh image' again"
    log "installing $KERNEL_PKGS from $mirror into a copy of the tree"
    cp "$root/etc/apt/sources.list" "$tmp/sources.list.orig" 2>/dev/null || true
    printf 'deb %s %s main\n' "$mirror" "$SUITE" >"$root/etc/apt/sources.list"
    cp /etc/resolv.conf "$root/etc/resolv.conf"
    chroot_mounts "$root"
    # shellcheck disable=SC2086 # KERNEL_PKGS is a word list
    timeout 1200 chroot "$root" /usr/bin/env -i PATH="$GUEST_PATH" HOME=/root \
        /bin/bash -c "$(guest_kernel_script)" guest $KERNEL_PKGS \
        >"$CACHE_DIR/kernel.log" 2>&1 || rc=$?
    chroot_umounts "$root"
    rm -f "$root/etc/resolv.conf"
    if [[ -f $tmp/sources.list.orig ]]; then cp "$tmp/sources.list.orig" "$root/etc/apt/sources.list"; fi
    if ((rc != 0)); then
        tail -n 30 "$CACHE_DIR/kernel.log" >&2
        die "installing the kernel in the chroot failed (rc=$rc; full log: $CACHE_DIR/kernel.log)" \
            "check that the Debian mirror is reachable (OUTPOST_TESTBED_MIRROR overrides it)"
    fi
    kver=$(find "$root/boot" -maxdepth 1 -name 'vmlinuz-*' -printf '%f\n' | sed 's/^vmlinuz-//' | sort -V | tail -n1)
    [[ -n $kver && -f $root/boot/initrd.img-$kver ]] || die "no kernel or initrd in $root/boot after the install" \
        "see $CACHE_DIR/kernel.log"
    cp "$root/boot/vmlinuz-$kver" "$tmp/vmlinuz"
    cp "$root/boot/initrd.img-$kver" "$tmp/initrd.img"
    echo "$kver" >"$tmp/kernel-version"
    write_vm_files "$root"
    log "making the ext4 root disk ($ROOT_SIZE, sparse) from the tree"
    truncate -s "$ROOT_SIZE" "$tmp/root.img"
    timeout 600 mkfs.ext4 -q -F -L outpost-vm -E root_owner=0:0 -d "$root" "$tmp/root.img" ||
        die "mkfs.ext4 -d failed" "e2fsprogs 1.43 or newer is needed for -d (ci/setup.sh installs it)"
    rm -rf "$root"
    mv "$tmp/vmlinuz" "$tmp/initrd.img" "$tmp/kernel-version" "$tmp/root.img" "$dir/"
}

cmd_image() {
    require_root
    require_tools zstd tar flock sha256sum chroot mkfs.ext4 truncate timeout
    local tb_image hash dir tmp start
    tb_image=$(bash "$HERE/testbed.sh" image) || die "the testbed image could not be built" \
        "run 'bash ci/testbed.sh image' to see why"
    [[ -s $tb_image ]] || die "ci/testbed.sh image printed '$tb_image', which is not a file"
    hash=$(recipe_hash "$tb_image")
    dir="$CACHE_DIR/$hash"
    mkdir -p "$CACHE_DIR"
    exec 8>"$CACHE_DIR/.lock"
    flock 8
    if [[ ! -e $dir/.complete ]]; then
        start=$SECONDS
        log "building VM image $dir (a few minutes)"
        tmp="$CACHE_DIR/build.$$"
        rm -rf "$tmp" "$dir"
        mkdir -p "$tmp" "$dir"
        # shellcheck disable=SC2064 # expand now
        trap "chroot_umounts '$tmp/root'; rm -rf '$tmp'" EXIT
        build_vm_image "$tb_image" "$dir" "$tmp"
        rm -rf "$tmp"
        trap - EXIT
        touch "$dir/.complete"
        # drop builds of older recipes or images
        find "$CACHE_DIR" -mindepth 1 -maxdepth 1 -type d ! -path "$dir" -exec rm -rf {} +
        log "VM image built in $((SECONDS - start)) s (kernel $(<"$dir/kernel-version"))"
    fi
    exec 8>&-
    printf '%s\n' "$dir"
}

# ---------------------------------------------------------------- run

cmd_run() {
    local payload=$1 out=$2 dir work rc=0 start secs
    require_root
    require_tools qemu-system-x86_64 tar timeout truncate
    valid_uint "$VM_TIMEOUT" OUTPOST_VM_TIMEOUT
    valid_uint "$VM_MEMORY" OUTPOST_VM_MEMORY
    valid_uint "$VM_CPUS" OUTPOST_VM_CPUS
    ((VM_TIMEOUT >= 90)) || die "OUTPOST_VM_TIMEOUT=$VM_TIMEOUT is too short" "boot and shutdown alone take about a minute under TCG: give 90 or more"
    [[ -x $payload/run.sh ]] || die "$payload/run.sh is missing or not executable" \
        "the payload dir needs an executable run.sh (it gets the output dir as \$1)"
    dir=$(cmd_image)
    mkdir -p "$out"
    out=$(cd "$out" && pwd)
    work=$(mktemp -d "${TMPDIR:-/tmp}/outpost-vm.XXXXXX")
    # shellcheck disable=SC2064 # expand now
    trap "rm -rf '$work'" EXIT
    tar --numeric-owner -C "$payload" -cf "$work/payload.tar" . || die "archiving $payload failed"
    truncate -s "$OUT_SIZE" "$work/out.img"
    rm -f "$out/console.log"
    log "booting the VM (TCG, ${VM_CPUS} CPUs, ${VM_MEMORY} MiB, no network; at most ${VM_TIMEOUT} s)"
    start=$(date +%s%N)
    # -nic none: no network device at all. -no-reboot: a panic (panic=-1) ends QEMU.
    timeout --kill-after=10 "$VM_TIMEOUT" qemu-system-x86_64 \
        -accel tcg,thread=multi -machine pc -m "$VM_MEMORY" -smp "$VM_CPUS" \
        -nodefaults -no-user-config -display none -nic none -no-reboot \
        -serial "file:$out/console.log" \
        -kernel "$dir/vmlinuz" -initrd "$dir/initrd.img" \
        -append "root=/dev/vda rw console=ttyS0 panic=-1 mitigations=off outpost.vm=1 outpost.timeout=$((VM_TIMEOUT - 60))" \
        -drive "file=$dir/root.img,format=raw,if=none,id=root,snapshot=on" \
        -device virtio-blk-pci,drive=root,serial=outpost-root \
        -drive "file=$work/payload.tar,format=raw,if=none,id=payload,readonly=on" \
        -device virtio-blk-pci,drive=payload,serial=outpost-payload \
        -drive "file=$work/out.img,format=raw,if=none,id=out" \
        -device virtio-blk-pci,drive=out,serial=outpost-out \
        </dev/null >"$work/qemu.log" 2>&1 || rc=$?
    secs=$((($(date +%s%N) - start) / 1000000))
    if ((rc == 124 || rc == 137)); then
        tail -n 40 "$out/console.log" >&2 || true
        die "the VM did not power off within ${VM_TIMEOUT} s (console: $out/console.log)" \
            "raise OUTPOST_VM_TIMEOUT, or see where the boot or run.sh hung in the console log"
    fi
    if ((rc != 0)); then
        cat "$work/qemu.log" >&2
        tail -n 40 "$out/console.log" >&2 || true
        die "qemu-system-x86_64 exited with $rc after $secs ms" \
            "see the QEMU messages above; ci/setup.sh installs qemu-system-x86"
    fi
    if ! tar -xf "$work/out.img" -C "$out" 2>"$work/tar.log"; then
        tail -n 40 "$out/console.log" >&2 || true
        die "the VM powered off after $secs ms without results on its output disk (console: $out/console.log)" \
            "look for 'outpost-vm:' lines in the console log: the payload unit did not finish"
    fi
    echo "vm_wall_ms=$secs" >>"$out/boot.txt"
    log "VM powered off after $secs ms; run.sh exited $(cat "$out/rc" 2>/dev/null || echo '?'); results in $out"
}

cmd_smoke() {
    local out=$1 p
    p=$(mktemp -d "${TMPDIR:-/tmp}/outpost-vm-smoke.XXXXXX")
    # shellcheck disable=SC2064 # expand now
    trap "rm -rf '$p'" RETURN
    cat >"$p/run.sh" <<'SMOKE'
#!/bin/sh
out=$1
uname -r >"$out/kernel"
cat /sys/fs/cgroup/cgroup.controllers >"$out/controllers"
systemctl show user@1000.service -p Delegate -p DelegateControllers | tr '\n' ' ' >"$out/delegate" 2>&1
ip -o link >"$out/links"
echo ok
SMOKE
    chmod 0755 "$p/run.sh"
    cmd_run "$p" "$out"
    printf 'kernel %s; controllers: %s; user@.service %s; links: %s\n' "$(cat "$out/kernel")" \
        "$(cat "$out/controllers")" "$(cat "$out/delegate")" "$(awk '{print $2}' "$out/links" | tr '\n' ' ')"
}

# ---------------------------------------------------------------- main

main() {
    (($#)) || usage
    local cmd=$1
    shift
    case $cmd in
        image) cmd_image ;;
        run) (($# == 2)) || usage; cmd_run "$1" "$2" ;;
        smoke) (($# == 1)) || usage; cmd_smoke "$1" ;;
        -h | --help | help) usage ;;
        *) log "unknown subcommand '$cmd'"; usage ;;
    esac
}

main "$@"
