#!/usr/bin/env bash
# Show facegate's kiosk page full screen on the terminal's own display: Chromium in kiosk
# mode started with the desktop session (Raspberry Pi OS Bookworm: labwc, or wayfire on
# older images), screen blanking off. Run it as the desktop user (pi) after
# scripts/install.sh; it changes nothing system-wide except blanking (raspi-config).
#
#   scripts/kiosk-browser.sh [--url URL] [--dry-run]
#   scripts/kiosk-browser.sh --uninstall [--dry-run]
#
# URL: the daemon's page, default http://127.0.0.1:8080/ ([screen] listen). The browser
# starts once the page answers (the daemon loads its models first), and the page follows
# the daemon across restarts by itself. Idempotent: the autostart line is replaced, never
# added twice.
set -euo pipefail

URL=http://127.0.0.1:8080/
DRY_RUN=0
UNINSTALL=0
MARK="# facegate kiosk"

while [ $# -gt 0 ]; do
    case "$1" in
        --url) URL=${2:?--url needs a value}; shift 2 ;;
        --dry-run) DRY_RUN=1; shift ;;
        --uninstall) UNINSTALL=1; shift ;;
        -h | --help) sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) printf 'kiosk-browser.sh: unknown argument %s\n' "$1" >&2; exit 2 ;;
    esac
done
case "$URL" in
    http://127.0.0.1:* | http://localhost:* | http://\[::1\]:*) ;;
    *) printf 'kiosk-browser.sh: the page is served on loopback only, not %s\n' "$URL" >&2; exit 2 ;;
esac
hostport=${URL#http://}
hostport=${hostport%%/*}
host=${hostport%:*}
port=${hostport##*:}
browser=$(command -v chromium-browser || command -v chromium || echo chromium-browser)
flags="--kiosk --noerrdialogs --disable-infobars --no-first-run --disable-session-crashed-bubble --disable-features=Translate --ozone-platform-hint=auto --password-store=basic"
# wait until the daemon serves the page, then open it (bash's /dev/tcp: no curl needed)
# nice 10: when the CPU is short, the daemon's frame loop (the verification) goes before the
# preview's drawing (scripts/screen_bench.py measures both; docs/measurements.md)
cmd="bash -c 'until (exec 3<>/dev/tcp/${host//[\[\]]/}/$port) 2>/dev/null; do sleep 2; done; exec nice -n 10 $browser $flags $URL'"

say() { printf '%s\n' "$*"; }

# replace_line FILE: drop our old lines, then (unless uninstalling) append LINE
replace_line() {
    local file=$1 line=$2
    say "+ $file: ${line:-(remove facegate kiosk lines)}"
    [ "$DRY_RUN" = 1 ] && return 0
    mkdir -p "$(dirname "$file")"
    touch "$file"
    grep -v -F "$MARK" "$file" > "$file.tmp" || true
    [ -n "$line" ] && printf '%s\n' "$line" >> "$file.tmp"
    mv "$file.tmp" "$file"
}

cfg=${XDG_CONFIG_HOME:-$HOME/.config}
if [ "$UNINSTALL" = 1 ]; then
    replace_line "$cfg/labwc/autostart" ""
    [ -f "$cfg/wayfire.ini" ] && replace_line "$cfg/wayfire.ini" ""
    say "kiosk browser removed from the desktop's autostart"
    exit 0
fi

# labwc (Bookworm since late 2024): a shell script run at login
replace_line "$cfg/labwc/autostart" "$cmd & $MARK"
# wayfire (Bookworm before): [autostart] entries, name = command
if [ -f "$cfg/wayfire.ini" ]; then
    if grep -q '^\[autostart\]' "$cfg/wayfire.ini"; then
        say "+ $cfg/wayfire.ini: [autostart] facegate_kiosk"
        if [ "$DRY_RUN" = 0 ]; then
            grep -v -F "$MARK" "$cfg/wayfire.ini" \
                | sed "/^\[autostart\]/a facegate_kiosk = $cmd $MARK" > "$cfg/wayfire.ini.tmp"
            mv "$cfg/wayfire.ini.tmp" "$cfg/wayfire.ini"
        fi
    else
        say "+ $cfg/wayfire.ini: [autostart] facegate_kiosk"
        [ "$DRY_RUN" = 1 ] || printf '[autostart]\nfacegate_kiosk = %s %s\n' "$cmd" "$MARK" >> "$cfg/wayfire.ini"
    fi
fi
# the display stays on: a kiosk's screen must not blank
if command -v raspi-config > /dev/null; then
    say "+ sudo raspi-config nonint do_blanking 1"
    [ "$DRY_RUN" = 1 ] || sudo raspi-config nonint do_blanking 1
else
    say "# no raspi-config: turn screen blanking off in the desktop's settings"
fi
say "kiosk browser: $URL full screen at the next login (log out and in, or reboot)"
