#!/usr/bin/env bash
# scripts/install.sh for real on arm64: a Debian 12 arm64 root under qemu-user (as a
# Raspberry Pi OS image is built in a chroot), and the installed facegate checked there.
#
#   sudo scripts/arm64-check.sh [--pairs N] [--rebuild] [--keep]
#
#   --pairs N   LFW pairs compared with x86 at each emulated core (default 24, at least 20)
#   --rebuild   build the cached base root again (default: reuse it when it is complete)
#   --keep      keep this run's root afterwards (for a look inside); default: removed
#
# Steps (each prints a PASS / FAIL line; the last line is the summary; exit 1 on any failure):
#  1. host tools (debootstrap, qemu-user-static, binfmt-support) and the qemu-aarch64
#     binfmt_misc handler: a machine where it cannot be registered FAILS, loudly.
#  2. the base root, built once and cached in $FACEGATE_ARM64_CACHE
#     (/var/cache/facegate-arm64): debootstrap --foreign bookworm + second stage (the root
#     building shared with scripts/vm-check.sh lives in scripts/lib/root.sh), with the
#     host's Debian mirror, apt proxy settings, CA certificates and pip configuration (the
#     root installs from the package index: the host's local wheel folders are x86-64 only).
#     Each run works on a fresh copy of it.
#  3. scripts/install.sh --camera file --models-from SHARED/models, for real, in the copy
#     (systemd is not running there: the unit is installed and enabled, not started); run
#     again, the installed tree must be unchanged (file list, modes, owners, sha256).
#  4. with the installed /opt/facegate/venv/bin/facegate and /etc/facegate/facegate.toml:
#     `facegate verify --pairs` on N LFW pairs at QEMU_CPU=cortex-a72 (Pi 4) and
#     cortex-a76 (Pi 5): every decision as x86's (computed now, by this checkout's .venv on
#     the host), the same model variant and similarity within 0.03; at qemu's `max` core
#     (the first MAX_PAIRS = 10 of them: fp32 under emulated SME is slow) the same decisions,
#     or a refusal by the models' self-test (exit 2), never a match of two different people.
#     These and step 5 run side by side, one emulated process per host core.
#  5. `facegate selftest` with the installed config (file camera, MQTT off) passes, and
#     `facegate demo` (the daemon, a file camera, no broker) runs a session and signs the result.
#  6. scripts/install.sh --uninstall --purge leaves no file behind.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source-path=SCRIPTDIR source=lib/root.sh
. "$REPO/scripts/lib/root.sh"
SHARED=${FACEGATE_SHARED:-$REPO/../shared}
CACHE=${FACEGATE_ARM64_CACHE:-/var/cache/facegate-arm64}
SUITE=bookworm
BASE_VERSION=1  # bump when the base root's recipe below changes
BASE_VARIANT=minbase  # apt, dpkg, passwd, bash: what install.sh needs, plus:
BASE_PACKAGES=ca-certificates,systemd,systemd-sysv
NPAIRS=24
REBUILD=0
KEEP=0
CPUS_EQUAL="cortex-a72 cortex-a76"  # Pi 4, Pi 5
CPU_MAX=max
MAX_PAIRS=10  # at `max`: fp32 under emulated SME is slow (see x86_reference)
DEMO_DEADLINE_S=1800

T0=$(date +%s)
FAILED=()
PASSED=()
WORK=""
ROOT=""
MOUNTS=()
JOBS=()

say() { printf '== %s\n' "$*"; }
pass() { printf 'PASS  %-22s %s\n' "$1" "$2"; PASSED+=("$1"); }
fail() { printf 'FAIL  %-22s %s\n' "$1" "$2"; FAILED+=("$1"); }
die() {  # a failure after which nothing else can be checked
    printf 'FAIL  %s\n' "$*"
    FAILED+=("${1%%:*}")
    finish
}

summary() {  # to the script's own stdout (fd 3), even from a trap inside a redirection
    local took=$(($(date +%s) - T0))
    if [ ${#FAILED[@]} -eq 0 ]; then
        printf 'arm64-check: PASS (%d checks: %s) in %d s\n' "${#PASSED[@]}" "${PASSED[*]}" "$took" >&3
    else
        printf 'arm64-check: FAIL (%s failed; passed: %s) in %d s\n' "${FAILED[*]}" "${PASSED[*]:-none}" "$took" >&3
    fi
}

finish() {
    trap - EXIT
    cleanup
    summary
    [ ${#FAILED[@]} -eq 0 ] && exit 0
    exit 1
}

# shellcheck disable=SC2317  # invoked by the INT / TERM trap
interrupted() {  # INT / TERM: a failure, and the same cleanup and summary
    printf 'FAIL  %-22s %s\n' interrupted "by a signal (emulated processes stopped, mounts removed)" >&3
    FAILED+=(interrupted)
    finish
}

cleanup() {
    local pid
    for pid in "${JOBS[@]}"; do  # emulated processes still running (interrupted)
        pkill -TERM -P "$pid" 2>/dev/null || true
    done
    [ ${#JOBS[@]} -eq 0 ] || wait "${JOBS[@]}" 2>/dev/null || true
    JOBS=()
    root_unmount
    if [ -n "$WORK" ] && [ -d "$WORK" ] && [ "$KEEP" = 0 ]; then
        # only after every mount is gone: never delete through a bind mount
        if ! grep -q " $WORK/" /proc/mounts; then
            rm -rf --one-file-system "$WORK"
        fi
    fi
}

parse_args() {
    while [ $# -gt 0 ]; do
        case "$1" in
            --pairs) NPAIRS=${2:?--pairs needs a number}; shift ;;
            --rebuild) REBUILD=1 ;;
            --keep) KEEP=1 ;;
            -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | grep '^#' | sed 's/^# \{0,1\}//'; exit 0 ;;
            *) echo "arm64-check.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
        esac
        shift
    done
    if ! [[ "$NPAIRS" =~ ^[0-9]+$ ]] || [ "$NPAIRS" -lt 20 ]; then
        echo "arm64-check.sh: --pairs must be a number >= 20" >&2
        exit 2
    fi
}

# -- 1. host tools and binfmt --------------------------------------------------------
host_tools() {
    [ "$(id -u)" -eq 0 ] || die "host: run as root (debootstrap, chroot, mounts)"
    [ "$(uname -m)" = x86_64 ] || die "host: this check emulates arm64 on an x86-64 host; here uname -m is $(uname -m)"
    if [ ! -d "$SHARED/models" ] || [ ! -f "$SHARED/data/lfw/pairs.txt" ]; then
        die "host: $SHARED/models and $SHARED/data/lfw/pairs.txt are needed (set FACEGATE_SHARED)"
    fi
    SHARED=$(cd "$SHARED" && pwd)
    local missing=() p
    for p in debootstrap qemu-user-static binfmt-support; do
        [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" = "install ok installed" ] || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        say "apt: installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

binfmt() {
    local handler=/proc/sys/fs/binfmt_misc/qemu-aarch64
    if [ ! -e /proc/sys/fs/binfmt_misc/status ]; then
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null || true
    fi
    if ! grep -qx enabled "$handler" 2>/dev/null; then
        update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
    fi
    if ! grep -qx enabled "$handler" 2>/dev/null; then
        printf '\n!!! binfmt_misc: no qemu-aarch64 handler could be registered on this machine\n' >&2
        printf '!!! (/proc/sys/fs/binfmt_misc not mountable, or update-binfmts failed): arm64 is NOT checked\n\n' >&2
        die "binfmt: qemu-aarch64 cannot be registered with binfmt_misc; the arm64 check cannot run here"
    fi
    # F (fix binary): the kernel opened the interpreter at registration, so the chroot
    # needs no copy of it
    grep -q '^flags: .*F' "$handler" ||
        die "binfmt: the qemu-aarch64 handler lacks the F flag ($(grep '^flags' "$handler")); update-binfmts --enable with Debian's qemu-user-static sets it"
    pass "binfmt" "qemu-aarch64 via $(sed -n 's/^interpreter //p' "$handler") ($(qemu-aarch64-static --version | head -1))"
}

# -- 2. the base root ---------------------------------------------------------------
base_root() {
    local base=$CACHE/base stamp want mirror security
    mirror=${DEBIAN_MIRROR:-$(root_host_mirror debian)}
    security=${DEBIAN_SECURITY_MIRROR:-$(root_host_mirror debian-security)}
    want="$BASE_VERSION $SUITE $BASE_VARIANT $mirror $BASE_PACKAGES $security"
    stamp=$base/.facegate-base
    if [ "$REBUILD" = 0 ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
        pass "base-root" "reusing $base ($want)"
        return
    fi
    say "base root: debootstrap --arch=arm64 --foreign $SUITE from $mirror (a few minutes)"
    local t=$(($(date +%s)))
    mkdir -p "$CACHE"
    root_debootstrap arm64 "$BASE_VARIANT" "$BASE_PACKAGES" "$base.tmp" "$mirror" "$CACHE/debootstrap.log"
    # apt from the host's mirrors with its proxy settings, its CA certificates and pip
    # configuration (the root installs from the package index: the host's local wheel
    # folders are x86-64 only)
    root_host_settings "$base.tmp" "$mirror" "$security"
    rm -rf "$base"
    mv "$base.tmp" "$base"
    echo "$want" >"$stamp"
    pass "base-root" "built $base in $(($(date +%s) - t)) s ($want)"
}

work_root() {
    WORK=$CACHE/run.$$
    ROOT=$WORK/root
    mkdir -p "$WORK"
    cp -a "$CACHE/base" "$ROOT"
    # ../shared read-only at its own path, so that one pairs file serves host and root; pip's
    # and apt's download caches kept across runs (what is installed comes from a fresh copy)
    root_mounts "$CACHE" "$SHARED" "$SHARED"
    mkdir -p "$CACHE/apt-archives/partial"
    root_bind "$CACHE/apt-archives" "$ROOT/var/cache/apt/archives"
    SRC=/usr/local/src/facegate
    root_copy_source "$SRC"
}

# run a command in the root (scripts/lib/root.sh's in_root: a clean environment plus the
# host's pip settings and proxies) at QEMU_CPU=$CPU
in_cpu() {
    local ROOT_ENV=("QEMU_CPU=${CPU:-max}")
    in_root "$@"
}

# -- 3. install.sh, twice ---------------------------------------------------------------
INSTALLED_PATHS=(/opt/facegate /etc/facegate /var/lib/facegate /etc/systemd/system /etc/passwd /etc/group /etc/shadow /etc/gshadow)
WHOLE_ROOT_EXCLUDES=(proc sys dev run tmp var/cache var/log var/lib/apt var/lib/dpkg root/.cache usr/local/src)

whole_root_paths() {  # the root's top-level entries minus the volatile ones
    local e ex skip
    for e in "$ROOT"/* "$ROOT"/var/* "$ROOT"/var/lib/* "$ROOT"/usr/* "$ROOT"/usr/local/* "$ROOT"/root/*; do
        e=${e#"$ROOT"/}
        skip=0
        for ex in "${WHOLE_ROOT_EXCLUDES[@]}"; do
            case "$e" in "$ex" | "$ex"/*) skip=1 ;; esac
        done
        case "$e" in var | var/lib | usr | usr/local | root) skip=1 ;; esac
        [ "$skip" = 1 ] || echo "$e"
    done
}

helper() { python3 "$REPO/scripts/arm64_check.py" "$@"; }

install_twice() {
    CPU=cortex-a76
    mapfile -t WHOLE < <(whole_root_paths)
    helper snapshot "$ROOT" "$WORK/before.json" "${WHOLE[@]}"
    local t
    t=$(date +%s)
    if ! in_cpu bash "$SRC/scripts/install.sh" --camera file --models-from "$SHARED/models" >"$WORK/install1.log" 2>&1; then
        tail -20 "$WORK/install1.log"
        die "install: scripts/install.sh failed in the arm64 root (log above)"
    fi
    local took1=$(($(date +%s) - t))
    grep -iE "systemd|not running|not started" "$WORK/install1.log" | sed "s/^/    /" | tail -3 || true
    in_cpu test -x /opt/facegate/venv/bin/facegate -a -f /etc/facegate/facegate.toml ||
        die "install: install.sh exited 0 but /opt/facegate/venv/bin/facegate or /etc/facegate/facegate.toml is missing"
    in_cpu test -L /etc/systemd/system/multi-user.target.wants/facegate.service ||
        fail "install" "facegate.service is not enabled in the root"
    pass "install" "scripts/install.sh ran in the arm64 root in $took1 s"
    helper snapshot "$ROOT" "$WORK/install1.json" "${INSTALLED_PATHS[@]}"
    t=$(date +%s)
    if ! in_cpu bash "$SRC/scripts/install.sh" --camera file --models-from "$SHARED/models" >"$WORK/install2.log" 2>&1; then
        tail -20 "$WORK/install2.log"
        fail "reinstall" "the second scripts/install.sh run failed (log above)"
        return
    fi
    helper snapshot "$ROOT" "$WORK/install2.json" "${INSTALLED_PATHS[@]}"
    if helper same-tree "$WORK/install1.json" "$WORK/install2.json" >"$WORK/reinstall.diff"; then
        pass "reinstall" "a second install.sh run ($(($(date +%s) - t)) s) changed nothing in ${INSTALLED_PATHS[*]}"
    else
        head -30 "$WORK/reinstall.diff"
        fail "reinstall" "the second install.sh run changed $(wc -l <"$WORK/reinstall.diff") path(s) (above)"
    fi
}

# -- 4 and 5. at each emulated core, all at once (each emulated process uses one host core) -
x86_reference() {
    helper pairs "$SHARED/data/lfw" "$NPAIRS" "$WORK/pairs.tsv"
    # at `max` the int8 models are refused by their self-test (qemu 7.2's SMOPA, see
    # docs/arm64.md) and fp32 under emulated SME is slow: the first MAX_PAIRS pairs there
    head -n "$MAX_PAIRS" "$WORK/pairs.tsv" >"$WORK/pairs-max.tsv"
    cp "$WORK/pairs.tsv" "$WORK/pairs-max.tsv" "$ROOT/tmp/"
    local host_fg=$REPO/.venv/bin/facegate
    if [ ! -x "$host_fg" ]; then
        say "host: scripts/dev.sh setup (for the x86 reference values)"
        "$REPO/scripts/dev.sh" setup >/dev/null
    fi
    if ! "$host_fg" verify --pairs "$WORK/pairs.tsv" >"$WORK/x86.jsonl" 2>"$WORK/x86.err"; then
        cat "$WORK/x86.err"
        die "pairs: the x86 reference run (host $host_fg verify --pairs) failed"
    fi
}

# start CMD... in the root at QEMU_CPU=$1 in the background, output to $WORK/$2.{out,err,rc}
emulate() {
    local cpu=$1 name=$2
    shift 2
    (
        CPU=$cpu
        rc=0
        in_cpu "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" || rc=$?
        echo "$rc" >"$WORK/$name.rc"
    ) &
    JOBS+=("$!")
}

emulated_checks() {
    local fg=/opt/facegate/venv/bin/facegate conf=/etc/facegate/facegate.toml ref probe t cpu
    ref=$(cut -f1 "$WORK/pairs.tsv" | head -1)
    probe=$(cut -f2 "$WORK/pairs.tsv" | head -1)
    # what a technician does after install.sh: point the file camera at a file, MQTT off
    # (no broker in the root); a copy is edited, the installed file stays for the purge check
    sed -e "/^\[camera\]/,/^\[/ s|^path = .*|path = \"$probe\"|" \
        -e "/^\[mqtt\]/,/^\[/ s|^enabled = .*|enabled = false|" "$ROOT$conf" >"$ROOT/tmp/facegate.toml"
    JOBS=()
    t=$(date +%s)
    for cpu in $CPUS_EQUAL; do
        emulate "$cpu" "pairs-$cpu" "$fg" verify --config "$conf" --pairs /tmp/pairs.tsv
    done
    emulate "$CPU_MAX" "pairs-$CPU_MAX" "$fg" verify --config "$conf" --pairs /tmp/pairs-max.tsv
    emulate cortex-a76 selftest "$fg" selftest --config /tmp/facegate.toml --key /etc/facegate/signing.key
    emulate cortex-a76 demo env FACEGATE_MODEL_DIR=/opt/facegate/models "$fg" demo --video "$probe" \
        --reference "$ref" --liveness none --workdir /tmp/demo --json --deadline-s "$DEMO_DEADLINE_S"
    say "emulating: $NPAIRS LFW pairs at $CPUS_EQUAL, $MAX_PAIRS at $CPU_MAX, selftest and a demo session at cortex-a76 (${#JOBS[@]} processes)"
    wait "${JOBS[@]}" || true
    JOBS=()
    say "emulated checks took $(($(date +%s) - t)) s (emulated timings mean nothing)"

    local name mode rc
    for cpu in $CPUS_EQUAL $CPU_MAX; do
        name=pairs-$cpu
        mode=equal
        [ "$cpu" = "$CPU_MAX" ] && mode=equal-or-refused
        rc=$(cat "$WORK/$name.rc")
        [ -s "$WORK/$name.err" ] && sed 's/^/    /' "$WORK/$name.err" | tail -5
        if helper compare-pairs "$cpu" "$WORK/x86.jsonl" "$WORK/$name.out" "$rc" "$mode" >"$WORK/$name.cmp"; then
            pass "$name" "$(cat "$WORK/$name.cmp") (exit $rc)"
        else
            fail "$name" "$(cat "$WORK/$name.cmp") (exit $rc)"
        fi
    done

    if [ "$(cat "$WORK/selftest.rc")" = 0 ]; then
        pass "selftest" "$(tail -1 "$WORK/selftest.out")"
    else
        sed 's/^/    /' "$WORK/selftest.out" "$WORK/selftest.err"
        fail "selftest" "$(tail -1 "$WORK/selftest.out") (exit $(cat "$WORK/selftest.rc"))"
    fi

    rc=$(cat "$WORK/demo.rc")
    if [ "$rc" = 0 ] && helper demo-result "$WORK/demo.out" >"$WORK/demo.summary"; then
        pass "daemon-session" "facegate demo in the root: $(cat "$WORK/demo.summary")"
    else
        tail -5 "$WORK/demo.err" | sed 's/^/    /'
        cat "$WORK/demo.summary" 2>/dev/null
        fail "daemon-session" "facegate demo in the root: exit $rc, no verified signed match"
    fi
}

# -- 6. uninstall --purge ------------------------------------------------------------------
purge() {
    CPU=cortex-a76
    rm -rf "$ROOT/tmp/demo" "$ROOT/tmp/facegate.toml"
    if ! in_cpu bash "$SRC/scripts/install.sh" --uninstall --purge >"$WORK/purge.log" 2>&1; then
        tail -20 "$WORK/purge.log"
        fail "purge" "scripts/install.sh --uninstall --purge failed"
        return
    fi
    helper snapshot "$ROOT" "$WORK/after.json" "${WHOLE[@]}"
    if helper leftovers "$ROOT" "$WORK/before.json" "$WORK/after.json" >"$WORK/purge.diff"; then
        pass "purge" "--uninstall --purge left nothing behind (apt's packages stay, by design)"
    else
        head -30 "$WORK/purge.diff"
        fail "purge" "--uninstall --purge left $(wc -l <"$WORK/purge.diff") path(s) behind (above)"
    fi
}

main() {
    exec 3>&1
    parse_args "$@"
    trap finish EXIT
    trap interrupted INT TERM
    host_tools
    binfmt
    base_root
    work_root
    install_twice
    x86_reference
    emulated_checks
    purge
    finish
}

main "$@"
