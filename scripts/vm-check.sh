#!/usr/bin/env bash
# The installed terminal booted for real: a Debian 12 disk image built from Debian packages
# alone, facegate installed in it by scripts/install.sh exactly as on a terminal, booted in
# qemu-system-x86_64 under its own systemd, and checked there (scripts/vm_check.py).
#
#   sudo scripts/vm-check.sh [--power-cuts N] [--accel auto|tcg|kvm] [--rebuild] [--keep]
#                            [--only LIST] [--arch x86_64|arm64]
#
#   --power-cuts N  guest killed (no shutdown) N times with results waiting (default 4)
#   --accel A       auto (default): a probe boot under KVM, TCG when it does not come up;
#                   tcg / kvm: that one only. The summary line says which ran.
#   --rebuild       build the cached base image again (default: reuse it when its recipe matches)
#   --keep          keep this run's work dir (image, console logs, broker) afterwards
#   --only LIST     comma-separated subset of the guest checks (see scripts/vm_check.py)
#   --arch A        x86_64 (default): the whole check in qemu-system-x86_64. arm64: the same
#                   image for arm64 (debootstrap in two stages under qemu-user, Debian's
#                   linux-image-arm64, install.sh under qemu-user) booted in qemu-system-aarch64
#                   (-M virt, -cpu cortex-a72, TCG) with the boot check only by default (boot,
#                   READY=1, status, selftest, security, permissions; --only adds others)
#
# Steps (each prints a PASS / FAIL line; the last line is the summary; exit 1 on any failure):
#  1. host tools: qemu-system-x86 (arm64: qemu-system-arm, qemu-user-static and its binfmt_misc
#     handler), debootstrap, socat (apt, when missing).
#  2. the base root, cached in $FACEGATE_VM_CACHE (/var/cache/facegate-vm; base, base-arm64) by
#     the hash of its recipe (suite, mirror, package list, the setup below): debootstrap bookworm
#     (scripts/lib/root.sh, shared with scripts/arm64-check.sh) with Debian's kernel
#     (linux-image-amd64 / -arm64, its initramfs), systemd, udev, python3-venv; no
#     NTP client (a terminal without time sync), systemd-networkd on DHCP.
#  3. a fresh copy of it: scripts/install.sh --camera file --models-from SHARED/models in a
#     chroot (systemd not running: installed and enabled, not started), then what a
#     technician does: /etc/facegate/facegate.toml pointed at the broker and the replay
#     video; plus the check agent (a root service on a virtio serial port, test harness
#     only). An ext4 image from that tree with `mke2fs -d` (no loop mounts).
#  4. the boot and the checks through systemd: scripts/vm_check.py run (its docstring).
#     The broker is a Mosquitto on the host's loopback, reached by the guest only through
#     qemu's user-mode network (restrict=on, one guestfwd to 10.0.2.100:8883).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source-path=SCRIPTDIR source=lib/root.sh
. "$REPO/scripts/lib/root.sh"
SHARED=${FACEGATE_SHARED:-$REPO/../shared}
CACHE=${FACEGATE_VM_CACHE:-/var/cache/facegate-vm}
SUITE=bookworm
BASE_VERSION=1  # bump when base_setup below changes
BASE_PACKAGES=initramfs-tools,systemd,systemd-sysv,udev,kmod,dbus,ca-certificates,python3,python3-venv,python3-pip,iproute2,procps,v4l-utils
IMAGE_SIZE=6G
POWER_CUTS=4
ACCEL=auto
REBUILD=0
KEEP=0
ONLY=""
ARCH=x86_64

T0=$(date +%s)
WORK=""
MOUNTS=()
ROOT=""
ROOT_ENV=()

say() { printf '== %s\n' "$*"; }
pass() { printf 'PASS  %-22s %s\n' "$1" "$2"; }
die() {
    printf 'FAIL  %s\n' "$*"
    printf 'vm-check: FAIL (%s) in %d s\n' "${1%%:*}" "$(($(date +%s) - T0))" >&3
    exit 1
}

usage() { sed -n '2,32p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

parse_args() {
    while [ $# -gt 0 ]; do
        case "$1" in
            --power-cuts) POWER_CUTS=$2; shift ;;
            --accel) ACCEL=$2; shift ;;
            --rebuild) REBUILD=1 ;;
            --keep) KEEP=1 ;;
            --only) ONLY=$2; shift ;;
            --arch) ARCH=$2; shift ;;
            -h | --help) usage; exit 0 ;;
            *) echo "vm-check: unknown option $1 (see --help)" >&2; exit 2 ;;
        esac
        shift
    done
    case "$ACCEL" in auto | tcg | kvm) ;; *) echo "vm-check: --accel auto|tcg|kvm" >&2; exit 2 ;; esac
    case "$ARCH" in
        x86_64) DEB_ARCH=amd64 BASE_DIR=base ;;
        arm64) DEB_ARCH=arm64 BASE_DIR=base-arm64 ACCEL=tcg ONLY=${ONLY:-boot}
               ROOT_ENV=(QEMU_CPU=cortex-a72) ;;  # install.sh under qemu-user: the guest's CPU
        *) echo "vm-check: --arch x86_64|arm64" >&2; exit 2 ;;
    esac
    BASE_PACKAGES=linux-image-$DEB_ARCH,$BASE_PACKAGES
    [ "$EUID" -eq 0 ] || { echo "vm-check: run as root (debootstrap, chroot, image ownership)" >&2; exit 2; }
    [ -d "$SHARED/models" ] || { echo "vm-check: $SHARED/models not found (FACEGATE_SHARED)" >&2; exit 2; }
}

cleanup() {
    root_unmount
    if [ -n "$WORK" ] && [ "$KEEP" = 0 ]; then
        rm -rf "$WORK"
    elif [ -n "$WORK" ]; then
        say "kept $WORK"
    fi
}

# -- 1. host tools ----------------------------------------------------------------------
host_tools() {
    local p missing=()
    local want=(qemu-system-x86 debootstrap socat e2fsprogs)
    [ "$ARCH" = x86_64 ] || want=(qemu-system-arm qemu-user-static binfmt-support debootstrap socat e2fsprogs)
    for p in "${want[@]}"; do
        [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" = "install ok installed" ] || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        say "apt: installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
    local py=$REPO/.venv/bin/python
    if [ ! -x "$py" ]; then
        say "host: scripts/dev.sh setup (the broker, backend and signing for the checks)"
        "$REPO/scripts/dev.sh" setup >/dev/null
    fi
    if [ "$ARCH" = arm64 ]; then
        [ -e /proc/sys/fs/binfmt_misc/status ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null || true
        grep -qx enabled /proc/sys/fs/binfmt_misc/qemu-aarch64 2>/dev/null || update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
        grep -qx enabled /proc/sys/fs/binfmt_misc/qemu-aarch64 2>/dev/null ||
            die "host-tools: no qemu-aarch64 binfmt_misc handler (the arm64 root is built under qemu-user)"
    fi
    pass "host-tools" "$("qemu-system-${ARCH/arm64/aarch64}" --version | head -1), debootstrap $(dpkg-query -W -f='${Version}' debootstrap)"
}

# -- 2. the base root ----------------------------------------------------------------------

# What a terminal's image adds to debootstrap's root (part of the base's hash: this
# function's own text is hashed).
base_setup() {
    local r=$1 mirror=$2 security=$3
    root_host_settings "$r" "$mirror" "$security"
    echo terminal >"$r/etc/hostname"
    printf '127.0.0.1 localhost\n127.0.1.1 terminal\n' >"$r/etc/hosts"
    printf '/dev/vda / ext4 rw,errors=remount-ro 0 1\n' >"$r/etc/fstab"
    mkdir -p "$r/etc/systemd/network"
    printf '[Match]\nName=en*\n\n[Network]\nDHCP=ipv4\n' >"$r/etc/systemd/network/20-wired.network"
    chroot "$r" systemctl enable systemd-networkd.service >/dev/null 2>&1
    chroot "$r" passwd -d root >/dev/null   # the serial console, for a look inside (--keep)
    chroot "$r" apt-get clean
}

base_root() {
    local base=$CACHE/$BASE_DIR stamp want mirror security t
    mirror=${DEBIAN_MIRROR:-$(root_host_mirror debian)}
    security=${DEBIAN_SECURITY_MIRROR:-$(root_host_mirror debian-security)}
    want=$(printf '%s\n' "$BASE_VERSION $SUITE $DEB_ARCH $mirror $security $BASE_PACKAGES" \
               "$(declare -f base_setup root_debootstrap root_host_settings)" | sha256sum | cut -c1-16)
    stamp=$base/.facegate-base
    if [ "$REBUILD" = 0 ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
        pass "base-root" "reusing $base (recipe $want)"
        return
    fi
    say "base root: debootstrap $SUITE ($DEB_ARCH) with Debian's kernel and systemd from $mirror (minutes; arm64 under qemu-user: longer)"
    t=$(date +%s)
    mkdir -p "$CACHE"
    root_debootstrap "$DEB_ARCH" minbase "$BASE_PACKAGES" "$base.tmp" "$mirror" "$CACHE/debootstrap-$DEB_ARCH.log"
    base_setup "$base.tmp" "$mirror" "$security" || die "base-root: setting up the root failed"
    if ! compgen -G "$base.tmp/boot/vmlinuz-*" >/dev/null || ! compgen -G "$base.tmp/boot/initrd.img-*" >/dev/null; then
        die "base-root: no kernel / initramfs in $base.tmp/boot"
    fi
    rm -rf "$base"
    mv "$base.tmp" "$base"
    echo "$want" >"$stamp"
    pass "base-root" "built $base in $(($(date +%s) - t)) s (recipe $want)"
}

# -- 3. install.sh in a copy, the check's settings, the image ---------------------------
install_root() {
    local t src=/usr/local/src/facegate
    WORK=$(mktemp -d "$CACHE/run.XXXXXX")
    ROOT=$WORK/root
    say "work dir $WORK"
    cp -a "$CACHE/$BASE_DIR" "$ROOT"
    rm -f "$ROOT/.facegate-base"
    root_mounts "$CACHE" "$SHARED" /mnt/shared
    root_copy_source "$src"
    t=$(date +%s)
    if ! in_root nice bash "$src/scripts/install.sh" --camera file --models-from /mnt/shared/models \
            >"$WORK/install.log" 2>&1; then
        tail -20 "$WORK/install.log"
        die "install: scripts/install.sh failed in the root (log above)"
    fi
    grep -iE "not running|not started" "$WORK/install.log" | sed 's/^/    /' | tail -2 || true
    pass "install" "scripts/install.sh --camera file ran in the chroot in $(($(date +%s) - t)) s"
    # the check's own files: replay video, agent; the settings a technician makes
    mkdir -p "$ROOT/opt/facegate-check"
    cp "$SHARED/data/replay/zubair/live.webm" "$ROOT/opt/facegate-check/live.webm"
    helper prepare "$WORK" "$ROOT" || die "prepare: writing the broker and the terminal's settings failed"
    install -m 0755 "$REPO/scripts/vm_agent.py" "$ROOT/usr/local/sbin/facegate-vm-agent"
    cat >"$ROOT/etc/systemd/system/facegate-vm-agent.service" <<'EOF'
# test harness of scripts/vm-check.sh: runs the host's commands as root, on a virtio port
[Unit]
Description=vm-check agent (test harness)
DefaultDependencies=no
After=systemd-udevd.service
# until udev has made /dev/virtio-ports/facegate.agent: retried for as long as it takes
StartLimitIntervalSec=0
[Service]
ExecStart=/usr/bin/python3 /usr/local/sbin/facegate-vm-agent /dev/virtio-ports/facegate.agent
Restart=always
RestartSec=1
[Install]
WantedBy=multi-user.target
EOF
    in_root systemctl enable facegate-vm-agent.service >/dev/null 2>&1
    # no resolv.conf from the host, no source tree left on the terminal
    root_unmount
    rm -rf "${ROOT:?}$src" "$ROOT/etc/resolv.conf" "$ROOT/mnt/shared" "$ROOT/root/.cache"
    t=$(date +%s)
    local kernels initrds
    kernels=("$ROOT"/boot/vmlinuz-*)
    initrds=("$ROOT"/boot/initrd.img-*)
    cp "${kernels[-1]}" "$WORK/vmlinuz"
    cp "${initrds[-1]}" "$WORK/initrd.img"
    if ! nice mke2fs -q -t ext4 -L terminal -d "$ROOT" "$WORK/disk.img" "$IMAGE_SIZE" >"$WORK/mke2fs.log" 2>&1; then
        cat "$WORK/mke2fs.log"
        die "image: mke2fs -d failed"
    fi
    rm -rf "$ROOT"
    pass "image" "ext4 $IMAGE_SIZE by mke2fs -d in $(($(date +%s) - t)) s, kernel ${kernels[-1]##*/}"
}

helper() { nice "$REPO/.venv/bin/python" "$REPO/scripts/vm_check.py" "$@"; }

main() {
    exec 3>&1
    parse_args "$@"
    trap cleanup EXIT
    trap 'die "interrupted"' INT TERM
    host_tools
    base_root
    install_root
    local args=(run "$WORK" --power-cuts "$POWER_CUTS" --accel "$ACCEL" --t0 "$T0" --arch "$ARCH")
    [ -z "$ONLY" ] || args+=(--only "$ONLY")
    helper "${args[@]}"
}

# sourcing the script defines the functions without running anything
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    main "$@"
fi
