# shellcheck shell=bash
# Building a Debian root and running scripts/install.sh in it, as a terminal's image is built:
# the part scripts/vm-check.sh and scripts/arm64-check.sh share. Sourced, never run.
#
# The caller defines: REPO (the checkout), SUITE (bookworm), ROOT (the root being worked
# on, for in_root), MOUNTS=() (every mount made here is appended; the caller's cleanup
# unmounts them in reverse, see root_unmount), die() (prints and exits).
# Optional: ROOT_ENV=() extra VAR=value words for in_root (e.g. QEMU_CPU=cortex-a76).

root_host_mirror() {  # the Debian mirror the host's apt uses ($1: debian or debian-security)
    local want=$1 uri
    uri=$( (grep -h '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}'
            grep -hE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | awk '{print $2}') |
           grep -E "/$want/?\$" | head -1)
    echo "${uri:-http://deb.debian.org/$want}"
}

# root_debootstrap ARCH VARIANT PACKAGES TARGET MIRROR LOG: debootstrap SUITE into TARGET; for
# a foreign ARCH (arm64 on an x86-64 host) in two stages, the second one run in the root under
# qemu-user (the qemu-aarch64 binfmt_misc handler with its F flag: no interpreter copy needed)
root_debootstrap() {
    local arch=$1 variant=$2 packages=$3 target=$4 mirror=$5 log=$6
    rm -rf "$target"
    if [ "$arch" = "$(dpkg --print-architecture)" ]; then
        nice debootstrap --variant="$variant" --include="$packages" "$SUITE" "$target" "$mirror" >"$log" 2>&1 ||
            { tail -5 "$log"; die "base-root: debootstrap failed, see $log"; }
        return
    fi
    nice debootstrap --arch="$arch" --foreign --variant="$variant" --include="$packages" "$SUITE" "$target" \
            "$mirror" >"$log" 2>&1 ||
        { tail -5 "$log"; die "base-root: debootstrap (first stage) failed, see $log"; }
    nice chroot "$target" /debootstrap/debootstrap --second-stage >>"$log" 2>&1 ||
        { tail -5 "$log"; die "base-root: debootstrap second stage failed under qemu-user, see $log"; }
}

# root_host_settings TARGET MIRROR SECURITY: apt from the host's mirrors (updates, security)
# with its proxy settings; the host's extra CA certificates (a TLS-inspecting egress proxy)
# and pip configuration: install.sh's pip runs in the root on this machine, as on a terminal
# behind such a proxy
root_host_settings() {
    local r=$1 mirror=$2 security=$3
    cat >"$r/etc/apt/sources.list" <<EOF
deb $mirror $SUITE main
deb $mirror $SUITE-updates main
deb $security $SUITE-security main
EOF
    apt-config dump 2>/dev/null | grep -iE '^Acquire::(https?|ftp)::Proxy' >"$r/etc/apt/apt.conf.d/90host-proxy" || true
    if compgen -G "/usr/local/share/ca-certificates/*" >/dev/null; then
        cp -r /usr/local/share/ca-certificates/. "$r/usr/local/share/ca-certificates/"
    fi
    chroot "$r" update-ca-certificates >/dev/null 2>&1 || die "base-root: update-ca-certificates failed in the root"
    [ ! -f /etc/pip.conf ] || cp /etc/pip.conf "$r/etc/pip.conf"
    if [ -d /etc/xdg/pip ]; then
        mkdir -p "$r/etc/xdg"
        cp -r /etc/xdg/pip "$r/etc/xdg/pip"
    fi
}

root_bind() {  # root_bind SRC DST [ro]
    mkdir -p "$2"
    mount --bind "$1" "$2"
    MOUNTS+=("$2")
    [ "${3:-}" != ro ] || mount -o remount,bind,ro "$2"
}

# root_mounts CACHE SHARED_SRC SHARED_DST: what a chroot install needs: /proc, /sys, /dev (and
# a private devpts), the host's resolv.conf, ../shared read-only at SHARED_DST, pip's
# download cache kept in CACHE across runs
root_mounts() {
    local cache=$1 shared=$2 shared_at=$3
    cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
    mount -t proc proc "$ROOT/proc"; MOUNTS+=("$ROOT/proc")
    mount -t sysfs sysfs "$ROOT/sys"; MOUNTS+=("$ROOT/sys")
    root_bind /dev "$ROOT/dev"
    mount -t devpts devpts "$ROOT/dev/pts" -o newinstance,ptmxmode=0666; MOUNTS+=("$ROOT/dev/pts")
    root_bind "$shared" "$ROOT$shared_at" ro
    mkdir -p "$cache/pip-cache"
    root_bind "$cache/pip-cache" "$ROOT/root/.cache/pip"
}

root_unmount() {  # every mount of MOUNTS, last first
    local i
    for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
        umount "${MOUNTS[i]}" 2>/dev/null || umount -l "${MOUNTS[i]}" 2>/dev/null || true
    done
    MOUNTS=()
}

# root_copy_source DST: the source tree as a release tarball would have it: the checkout's
# files (git's view when this is a git checkout), no venvs, caches or build output
root_copy_source() {
    local dst=$1
    mkdir -p "$ROOT$dst"
    if git -C "$REPO" rev-parse --git-dir >/dev/null 2>&1; then
        (cd "$REPO" && git ls-files -z --cached --others --exclude-standard |
            tar --null --ignore-failed-read -T - -cf - 2>/dev/null) | tar -xf - -C "$ROOT$dst"
    else
        tar -C "$REPO" --exclude=./.venv --exclude=./.venv-convert --exclude=./build --exclude=./out \
            --exclude='*.egg-info' --exclude=__pycache__ -cf - . | tar -xf - -C "$ROOT$dst"
    fi
    [ -f "$ROOT$dst/scripts/install.sh" ] || die "root: copying the source tree into the root failed"
}

# in_root CMD...: CMD in ROOT with a clean environment, plus ROOT_ENV and the host's pip
# settings and proxies (not PIP_FIND_LINKS: the host's wheel folder is not in the root)
in_root() {
    local envs=(PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8
                ${ROOT_ENV[@]+"${ROOT_ENV[@]}"}) v
    for v in $(compgen -e); do
        case "$v" in
            PIP_FIND_LINKS) ;;
            PIP_* | http_proxy | https_proxy | no_proxy | HTTP_PROXY | HTTPS_PROXY | NO_PROXY) envs+=("$v=${!v}") ;;
        esac
    done
    chroot "$ROOT" /usr/bin/env -i "${envs[@]}" "$@"
}
