#!/usr/bin/env bash
# Install facegate as a systemd service on a Raspberry Pi (Raspberry Pi OS Bookworm,
# Pi 4 or Pi 5), or remove it again.
#
#   sudo scripts/install.sh [--models-from DIR] [--camera picamera2|v4l2|file] [--no-apt]
#   sudo scripts/install.sh --uninstall [--purge]
#   scripts/install.sh --dry-run ...      print every action, do nothing (no root needed)
#   sudo scripts/install.sh --root DIR ...  install into DIR as the root file system
#
# Idempotent: run it again to upgrade; a run with nothing new changes nothing. Existing
# config and signing key are never overwritten; the service is restarted only if it was
# running and the package or unit changed. Where systemd is not running (a chroot, as in
# an image build, or a container) the unit is installed and enabled but not started.
# --uninstall --purge removes every file, the user and the groups it created.
# --root DIR (tests): paths, users and the unit go under DIR (useradd --prefix,
# systemctl --root); no apt; the venv is usable from here at DIR/opt/facegate/venv.
#
# Layout: /opt/facegate/venv (system site packages, for apt's python3-picamera2),
# /opt/facegate/models, /etc/facegate/facegate.toml (0640 root:facegate),
# /etc/facegate/signing.key (0600 root:root, handed to the service as a systemd
# credential), /var/lib/facegate (state), /etc/systemd/system/facegate.service.
set -euo pipefail

SRC_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PREFIX=/opt/facegate
VENV=$PREFIX/venv
MODELS=$PREFIX/models
CONF_DIR=/etc/facegate
CONF=$CONF_DIR/facegate.toml
KEY=$CONF_DIR/signing.key
STATE=/var/lib/facegate
UNIT_SRC=$SRC_DIR/systemd/facegate.service
UNIT=/etc/systemd/system/facegate.service
SERVICE=facegate.service
SVC_USER=facegate
GROUPS_NEEDED="video gpio"
APT_REQUIRED="python3 python3-venv python3-pip"
APT_OPTIONAL="python3-picamera2 python3-lgpio mosquitto-clients"

DRY_RUN=0
ROOT=""
UNINSTALL=0
PURGE=0
APT=1
MODELS_FROM=""
CAMERA=picamera2

usage() {
    sed -n '2,23p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

die() {
    printf 'install.sh: %s\n' "$*" >&2
    exit 2
}

note() {
    printf '# %s\n' "$*"
}

# Print an action as a command line (arguments with spaces quoted).
show() {
    local out="" arg
    for arg in "$@"; do
        case "$arg" in
            "" | *[[:space:]]*) out="$out '$arg'" ;;
            *) out="$out $arg" ;;
        esac
    done
    printf '+%s\n' "$out"
}

# Print an action; do it unless --dry-run.
run() {
    show "$@"
    if [ "$DRY_RUN" = 0 ]; then
        "$@"
    fi
}

parse_args() {
    while [ $# -gt 0 ]; do
        case "$1" in
            --dry-run) DRY_RUN=1 ;;
            --uninstall) UNINSTALL=1 ;;
            --purge) PURGE=1 ;;
            --no-apt) APT=0 ;;
            --models-from) [ $# -ge 2 ] || die "--models-from needs a directory"; MODELS_FROM=$2; shift ;;
            --models-from=*) MODELS_FROM=${1#*=} ;;
            --camera) [ $# -ge 2 ] || die "--camera needs a source"; CAMERA=$2; shift ;;
            --camera=*) CAMERA=${1#*=} ;;
            --root) [ $# -ge 2 ] || die "--root needs a directory"; ROOT=$2; shift ;;
            --root=*) ROOT=${1#*=} ;;
            -h | --help) usage; exit 0 ;;
            *) die "unknown option $1 (see --help)" ;;
        esac
        shift
    done

    case "$CAMERA" in
        picamera2 | v4l2 | file) ;;
        *) die "--camera must be picamera2, v4l2 or file" ;;
    esac
    if [ -n "$MODELS_FROM" ]; then
        [ -d "$MODELS_FROM" ] || die "--models-from $MODELS_FROM is not a directory"
        MODELS_FROM=$(cd "$MODELS_FROM" && pwd)
    fi
    if [ -n "$ROOT" ]; then
        [ -d "$ROOT/etc" ] || die "--root $ROOT has no etc/ (passwd, group)"
        ROOT=$(cd "$ROOT" && pwd)
        [ "$ROOT" != / ] || ROOT=""
    fi
    if [ "$PURGE" = 1 ] && [ "$UNINSTALL" = 0 ]; then
        die "--purge only goes with --uninstall"
    fi
    if [ "$DRY_RUN" = 0 ] && [ "$EUID" -ne 0 ]; then
        die "run as root (sudo), or with --dry-run to see the plan"
    fi
    if [ "$DRY_RUN" = 1 ]; then
        note "dry run: nothing is changed"
    fi
}

# -- install steps ------------------------------------------------------------------
installed() {  # is the apt package installed?
    [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]
}

available() {  # does apt know the package?
    apt-cache show "$1" >/dev/null 2>&1
}

# Accounts: the system's name service, or the files under --root.
group_exists() {
    if [ -n "$ROOT" ]; then grep -q "^$1:" "$ROOT/etc/group"; else getent group "$1" >/dev/null; fi
}

user_exists() {
    if [ -n "$ROOT" ]; then grep -q "^$1:" "$ROOT/etc/passwd"; else id -u "$1" >/dev/null 2>&1; fi
}

user_groups() {
    if [ -n "$ROOT" ]; then
        awk -F: -v u="$1" '{ n = split($4, m, ","); for (i = 1; i <= n; i++) if (m[i] == u) print $1 }' \
            "$ROOT/etc/group"
    else
        id -nG "$1"
    fi
}

# An owner for install -o/-g: the name, or under --root its number there (unknown here).
owner() {
    local db=passwd
    [ "$2" = group ] && db=group
    if [ -n "$ROOT" ] && grep -q "^$1:" "$ROOT/etc/$db"; then
        awk -F: -v n="$1" '$1 == n { print $3 }' "$ROOT/etc/$db"
    else
        printf '%s\n' "$1"
    fi
}

shadow_prefix() {  # useradd/groupadd/usermod/userdel/groupdel option for --root
    [ -z "$ROOT" ] || printf '%s\n' "--prefix=$ROOT"
}

systemd_running() {  # sd_booted(); never the host's systemd under --root
    [ -z "$ROOT" ] && [ -d /run/systemd/system ]
}

systemctl_() {
    if [ -n "$ROOT" ]; then run systemctl --root="$ROOT" "$@"; else run systemctl "$@"; fi
}

install_apt() {
    if [ "$APT" = 0 ]; then
        note "apt: skipped (--no-apt)"
        return
    fi
    if [ -n "$ROOT" ]; then
        note "apt: skipped (--root)"
        return
    fi
    command -v apt-get >/dev/null || die "apt-get not found (not Debian / Raspberry Pi OS?); use --no-apt"
    local missing="" pkg
    for pkg in $APT_REQUIRED; do
        installed "$pkg" || missing="$missing $pkg"
    done
    for pkg in $APT_OPTIONAL; do
        if installed "$pkg"; then
            continue
        elif available "$pkg"; then
            missing="$missing $pkg"
        else
            note "apt: $pkg is not available here, skipped"
        fi
    done
    if [ -z "$missing" ]; then
        note "apt: all packages present"
        return
    fi
    run apt-get update
    # shellcheck disable=SC2086  # word splitting of the package list is intended
    run env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing
}

CREATED_GROUPS=""   # groups this run made (recorded for --purge)
CHANGED=0           # the package or the unit changed (a running service is restarted)

install_user() {
    local g pfx
    pfx=$(shadow_prefix)
    for g in $GROUPS_NEEDED; do
        if group_exists "$g"; then
            note "group $g exists"
        else
            run groupadd ${pfx:+"$pfx"} --system "$g"
            CREATED_GROUPS="$CREATED_GROUPS $g"
        fi
    done
    if user_exists "$SVC_USER"; then
        note "user $SVC_USER exists"
        for g in $GROUPS_NEEDED; do
            case " $(user_groups "$SVC_USER" | tr '\n' ' ') " in
                *" $g "*) ;;
                *) run usermod ${pfx:+"$pfx"} --append --groups "$g" "$SVC_USER" ;;
            esac
        done
    else
        run useradd ${pfx:+"$pfx"} --system --user-group --groups "${GROUPS_NEEDED// /,}" --home-dir "$STATE" \
            --no-create-home --shell /usr/sbin/nologin --comment "facegate daemon" "$SVC_USER"
    fi
}

install_dirs() {
    local user group
    user=$(owner "$SVC_USER" passwd)
    group=$(owner "$SVC_USER" group)
    run install -d -m 0755 -o root -g root "$ROOT$PREFIX"
    run install -d -m 0750 -o root -g "$group" "$ROOT$CONF_DIR"
    run install -d -m 0750 -o "$user" -g "$group" "$ROOT$STATE"
    if [ -n "$CREATED_GROUPS" ]; then  # the groups --uninstall --purge may remove again
        printf '+ %s\n' "record the groups made here in $ROOT$CONF_DIR/groups-created:$CREATED_GROUPS"
        if [ "$DRY_RUN" = 0 ]; then
            # shellcheck disable=SC2086  # one group a line
            printf '%s\n' $CREATED_GROUPS >>"$ROOT$CONF_DIR/groups-created"
        fi
    fi
}

# What the package is built from; its hash decides whether the venv is up to date.
PACKAGE_FILES="pyproject.toml README.md device models"
EXTRAS="daemon,pi"

source_stamp() {
    (
        cd "$SRC_DIR"
        # shellcheck disable=SC2086  # the file list splits on purpose
        find $PACKAGE_FILES -type f ! -path '*/__pycache__/*' ! -path '*.egg-info/*' ! -name '*.pyc' -print0 |
            LC_ALL=C sort -z | xargs -0 sha256sum
        printf 'extras %s\n' "$EXTRAS"
    ) | sha256sum | cut -c1-64
}

install_venv() {
    local v=$ROOT$VENV stamp build
    if [ -x "$v/bin/python" ]; then
        note "venv $v exists"
    else
        run python3 -m venv --system-site-packages "$v"
    fi
    stamp=$(source_stamp)
    if [ -x "$v/bin/facegate" ] && [ "$(cat "$v/.facegate-source" 2>/dev/null)" = "$stamp" ]; then
        note "package facegate is up to date in $v (source $(printf '%s' "$stamp" | cut -c1-12))"
        return
    fi
    CHANGED=1
    # a non-editable install, built from a copy: the source tree may be read-only and
    # is left as it was (no build/ or egg-info in it)
    build="<temporary directory>"
    [ "$DRY_RUN" = 1 ] || build=$(mktemp -d)
    printf '+ %s\n' "copy $PACKAGE_FILES of $SRC_DIR to $build"
    if [ "$DRY_RUN" = 0 ]; then
        # shellcheck disable=SC2086  # the file list splits on purpose
        (cd "$SRC_DIR" && cp -r $PACKAGE_FILES "$build/")
        find "$build" \( -name __pycache__ -o -name '*.egg-info' \) -prune -exec rm -rf {} +
    fi
    if ! run "$v/bin/pip" install --upgrade "${build}[$EXTRAS]"; then
        [ "$DRY_RUN" = 1 ] || rm -rf "$build"
        die "pip install of facegate into $v failed"
    fi
    [ "$DRY_RUN" = 1 ] || rm -rf "$build"
    printf '+ %s\n' "record source $(printf '%s' "$stamp" | cut -c1-12) in $v/.facegate-source"
    if [ "$DRY_RUN" = 0 ]; then
        printf '%s\n' "$stamp" >"$v/.facegate-source"
    fi
}

install_models() {
    local from=()
    if [ -n "$MODELS_FROM" ]; then
        from=(--from "$MODELS_FROM")
    fi
    run env FACEGATE_MODEL_DIR="$ROOT$MODELS" "$ROOT$VENV/bin/facegate" models fetch --dir "$ROOT$MODELS" "${from[@]}"
}

config_text() {  # the example config with this machine's camera and model directory
    "$ROOT$VENV/bin/facegate" config example |
        sed -e "/^\[camera\]/,/^\[/ s|^source = .*|source = \"$CAMERA\"|" \
            -e "/^\[models\]/,/^\[/ s|^dir = .*|dir = \"$MODELS\"|"
}

write_config() {
    local tmp
    tmp=$(mktemp)
    config_text >"$tmp"
    install -m 0640 -o root -g "$(owner "$SVC_USER" group)" "$tmp" "$ROOT$CONF"
    rm -f "$tmp"
}

install_config() {
    if [ -e "$ROOT$CONF" ]; then
        note "config $ROOT$CONF exists, kept"
    else
        printf '+ %s\n' "$ROOT$VENV/bin/facegate config example > $ROOT$CONF (camera.source = \"$CAMERA\", models.dir = \"$MODELS\"; mode 0640 root:$SVC_USER)"
        if [ "$DRY_RUN" = 0 ]; then
            write_config
        fi
    fi
    if ! run "$ROOT$VENV/bin/facegate" config check "$ROOT$CONF"; then
        note "WARNING: $ROOT$CONF does not validate; fix it before starting the service"
    fi
}

# An Ed25519 key, PEM PKCS#8 unencrypted, created 0600 (O_EXCL: never overwrites).
# (What `facegate keys init --path` does, without its imports; O_EXCL makes it race-free.)
KEYGEN_PY='
import os, sys
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
key = Ed25519PrivateKey.generate()
pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                        serialization.NoEncryption())
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
with os.fdopen(fd, "wb") as f:
    f.write(pem)
raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
print("signing key created; public key (give it to the backend):", raw.hex())
'

install_key() {
    if [ -e "$ROOT$KEY" ]; then
        note "signing key $ROOT$KEY exists, kept"
        return
    fi
    printf '+ %s\n' "$ROOT$VENV/bin/python -c <make an Ed25519 key, PEM PKCS#8 unencrypted> $ROOT$KEY (mode 0600 root:root)"
    if [ "$DRY_RUN" = 0 ]; then
        (umask 077 && "$ROOT$VENV/bin/python" -c "$KEYGEN_PY" "$ROOT$KEY")
        chown 0:0 "$ROOT$KEY"
    fi
}

unit_enabled() {  # the [Install] symlink is there (what systemctl enable makes)
    [ -L "$ROOT/etc/systemd/system/multi-user.target.wants/$SERVICE" ]
}

install_unit() {
    if [ -e "$ROOT$UNIT" ] && cmp -s "$UNIT_SRC" "$ROOT$UNIT"; then
        note "unit $ROOT$UNIT is up to date"
    else
        CHANGED=1
        run install -D -m 0644 -o root -g root "$UNIT_SRC" "$ROOT$UNIT"
        if systemd_running; then
            run systemctl daemon-reload
        fi
    fi
    if unit_enabled; then
        note "unit $SERVICE is enabled"
    else
        systemctl_ enable "$SERVICE"
    fi
    if ! systemd_running; then
        note "systemd is not running here (a chroot, a container, or --root): $SERVICE is installed and enabled but not started; it starts at the next boot"
    elif [ "$CHANGED" = 1 ]; then
        run systemctl try-restart "$SERVICE"
    fi
}

do_install() {
    [ -f "$UNIT_SRC" ] || die "$UNIT_SRC not found (run the script from the facegate source tree)"
    install_apt
    install_user
    install_dirs
    install_venv
    install_models
    install_config
    install_key
    install_unit
    note "done. Edit $ROOT$CONF (camera, mqtt, gpio), then: systemctl restart $SERVICE; journalctl -u $SERVICE -f"
}

# -- uninstall ------------------------------------------------------------------------
do_uninstall() {
    local pfx g groups=""
    pfx=$(shadow_prefix)
    if [ -e "$ROOT$UNIT" ]; then
        if systemd_running; then
            run systemctl disable --now "$SERVICE"
        else
            systemctl_ disable "$SERVICE"
        fi
        run rm -f "$ROOT$UNIT"
        if systemd_running; then
            run systemctl daemon-reload
        fi
    else
        note "unit $ROOT$UNIT not installed"
    fi
    if [ -e "$ROOT$PREFIX" ] || [ "$DRY_RUN" = 1 ]; then
        run rm -rf "$ROOT$PREFIX"
    fi
    if [ "$PURGE" = 1 ]; then
        if [ -f "$ROOT$CONF_DIR/groups-created" ]; then
            groups=$(sort -u "$ROOT$CONF_DIR/groups-created")
        fi
        run rm -rf "$ROOT$CONF_DIR" "$ROOT$STATE"
        if user_exists "$SVC_USER"; then
            run userdel ${pfx:+"$pfx"} "$SVC_USER"
        fi
        for g in $groups; do
            if group_exists "$g"; then
                run groupdel ${pfx:+"$pfx"} "$g"
            fi
        done
    else
        note "kept $ROOT$CONF_DIR (config, signing key), $ROOT$STATE (outbox) and user $SVC_USER; --purge removes them"
    fi
}

main() {
    parse_args "$@"
    if [ "$UNINSTALL" = 1 ]; then
        do_uninstall
    else
        do_install
    fi
}

# sourcing the script (tests) defines the functions without running anything
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    main "$@"
fi
