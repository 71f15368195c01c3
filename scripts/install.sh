#!/usr/bin/env bash
# Install facegate as a systemd service on a Raspberry Pi (Raspberry Pi OS Bookworm,
# Pi 4 or Pi 5), or remove it again.
#
#   sudo scripts/install.sh [--models-from DIR] [--camera picamera2|v4l2|file] [--no-apt]
#   sudo scripts/install.sh --uninstall [--purge]
#   scripts/install.sh --dry-run ...      print every action, do nothing (no root needed)
#
# Idempotent: run it again to upgrade. Existing config and signing key are never
# overwritten; the service is restarted only if it was running.
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
UNINSTALL=0
PURGE=0
APT=1
MODELS_FROM=""
CAMERA=picamera2

usage() {
    sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
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

install_apt() {
    if [ "$APT" = 0 ]; then
        note "apt: skipped (--no-apt)"
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

install_user() {
    local g
    for g in $GROUPS_NEEDED; do
        if getent group "$g" >/dev/null; then
            note "group $g exists"
        else
            run groupadd --system "$g"
        fi
    done
    if id -u "$SVC_USER" >/dev/null 2>&1; then
        note "user $SVC_USER exists"
        for g in $GROUPS_NEEDED; do
            case " $(id -nG "$SVC_USER") " in
                *" $g "*) ;;
                *) run usermod --append --groups "$g" "$SVC_USER" ;;
            esac
        done
    else
        run useradd --system --user-group --groups "${GROUPS_NEEDED// /,}" --home-dir "$STATE" \
            --no-create-home --shell /usr/sbin/nologin --comment "facegate daemon" "$SVC_USER"
    fi
}

install_dirs() {
    run install -d -m 0755 -o root -g root "$PREFIX"
    run install -d -m 0750 -o root -g "$SVC_USER" "$CONF_DIR"
    run install -d -m 0750 -o "$SVC_USER" -g "$SVC_USER" "$STATE"
}

install_venv() {
    if [ -x "$VENV/bin/python" ]; then
        note "venv $VENV exists"
    else
        run python3 -m venv --system-site-packages "$VENV"
    fi
    run "$VENV/bin/pip" install --upgrade "${SRC_DIR}[daemon,pi]"
}

install_models() {
    local from=()
    if [ -n "$MODELS_FROM" ]; then
        from=(--from "$MODELS_FROM")
    fi
    run env FACEGATE_MODEL_DIR="$MODELS" "$VENV/bin/facegate" models fetch --dir "$MODELS" "${from[@]}"
}

config_text() {  # the example config with this machine's camera and model directory
    "$VENV/bin/facegate" config example |
        sed -e "/^\[camera\]/,/^\[/ s|^source = .*|source = \"$CAMERA\"|" \
            -e "/^\[models\]/,/^\[/ s|^dir = .*|dir = \"$MODELS\"|"
}

write_config() {
    local tmp
    tmp=$(mktemp)
    config_text >"$tmp"
    install -m 0640 -o root -g "$SVC_USER" "$tmp" "$CONF"
    rm -f "$tmp"
}

install_config() {
    if [ -e "$CONF" ]; then
        note "config $CONF exists, kept"
    else
        printf '+ %s\n' "$VENV/bin/facegate config example > $CONF (camera.source = \"$CAMERA\", models.dir = \"$MODELS\"; mode 0640 root:$SVC_USER)"
        if [ "$DRY_RUN" = 0 ]; then
            write_config
        fi
    fi
    if ! run "$VENV/bin/facegate" config check "$CONF"; then
        note "WARNING: $CONF does not validate; fix it before starting the service"
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
    if [ -e "$KEY" ]; then
        note "signing key $KEY exists, kept"
        return
    fi
    printf '+ %s\n' "$VENV/bin/python -c <make an Ed25519 key, PEM PKCS#8 unencrypted> $KEY (mode 0600 root:root)"
    if [ "$DRY_RUN" = 0 ]; then
        (umask 077 && "$VENV/bin/python" -c "$KEYGEN_PY" "$KEY")
        chown root:root "$KEY"
    fi
}

install_unit() {
    if [ -e "$UNIT" ] && cmp -s "$UNIT_SRC" "$UNIT"; then
        note "unit $UNIT is up to date"
    else
        run install -m 0644 -o root -g root "$UNIT_SRC" "$UNIT"
        run systemctl daemon-reload
    fi
    run systemctl enable "$SERVICE"
    run systemctl try-restart "$SERVICE"
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
    note "done. Edit $CONF (camera, mqtt, gpio), then: systemctl restart $SERVICE; journalctl -u $SERVICE -f"
}

# -- uninstall ------------------------------------------------------------------------
do_uninstall() {
    if [ -e "$UNIT" ]; then
        run systemctl disable --now "$SERVICE"
        run rm -f "$UNIT"
        run systemctl daemon-reload
    else
        note "unit $UNIT not installed"
    fi
    if [ -e "$PREFIX" ] || [ "$DRY_RUN" = 1 ]; then
        run rm -rf "$PREFIX"
    fi
    if [ "$PURGE" = 1 ]; then
        run rm -rf "$CONF_DIR" "$STATE"
        if id -u "$SVC_USER" >/dev/null 2>&1; then
            run userdel "$SVC_USER"
        fi
    else
        note "kept $CONF_DIR (config, signing key), $STATE (outbox) and user $SVC_USER; --purge removes them"
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
