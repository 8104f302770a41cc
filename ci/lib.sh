# shellcheck shell=bash
# Shared by ci/testbed.sh and ci/vm.sh (sourced, never run): finding the Debian mirror and
# the mounts a chroot into an image tree needs. The caller defines die MESSAGE [HINT] and
# MIRROR_SUITE.

# Debian mirror: env override, else the bookworm (non-security) entry of the
# host's apt sources (deb822 .sources or one-line .list).
detect_mirror() {
    if [[ -n ${OUTPOST_TESTBED_MIRROR:-} ]]; then
        printf '%s\n' "$OUTPOST_TESTBED_MIRROR"
        return
    fi
    local f uri
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -f $f ]] || continue
        uri=$(awk -v suite="$MIRROR_SUITE" '
            BEGIN { RS=""; FS="\n" }
            {
                uris=""; ok=0
                for (i = 1; i <= NF; i++) {
                    if ($i ~ /^URIs:/)   { sub(/^URIs:[ \t]*/, "", $i); split($i, u, /[ \t]+/); uris=u[1] }
                    if ($i ~ /^Suites:/) { n=split($i, s, /[ \t]+/); for (j = 2; j <= n; j++) if (s[j] == suite) ok=1 }
                }
                if (ok && uris != "") { print uris; exit }
            }' "$f")
        [[ -n $uri ]] && { printf '%s\n' "$uri"; return; }
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -f $f ]] || continue
        uri=$(awk -v suite="$MIRROR_SUITE" '$1 == "deb" {
                i = 2; if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                if ($(i+1) == suite) { print $i; exit } }' "$f")
        [[ -n $uri ]] && { printf '%s\n' "$uri"; return; }
    done
    die "no '$MIRROR_SUITE' Debian mirror found in /etc/apt/sources*" "set OUTPOST_TESTBED_MIRROR"
}

chroot_mounts() {
    local root=$1
    mount -t proc proc "$root/proc"
    mount -t sysfs sysfs "$root/sys"
    mount --bind /dev "$root/dev"
    mount --bind /dev/pts "$root/dev/pts"
}

chroot_umounts() {
    local root=$1 m
    for m in dev/pts dev sys proc; do
        if mountpoint -q "$root/$m"; then umount -l "$root/$m" || true; fi
    done
}
