#!/usr/bin/env bash
# facegate developer entry point for a Debian 12 / Raspberry Pi OS machine.
#   scripts/dev.sh demo   - install what is missing, then run the demo
#   scripts/dev.sh test   - install what is missing, then run the test suite
#   scripts/dev.sh check  - install what is missing, then the static checks (ruff, mypy)
#   scripts/dev.sh setup  - only install (apt packages, .venv, package, models)
# Every step is idempotent: a second run installs nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${FACEGATE_VENV:-$ROOT/.venv}
SHARED_MODELS=${FACEGATE_MODEL_MIRROR:-$ROOT/../shared/models}
APT_PKGS=(python3 python3-venv python3-pip mosquitto mosquitto-clients openssl shellcheck systemd postgresql chromium fonts-noto-cjk prometheus)

log() { printf '== %s\n' "$*" >&2; }

apt_setup() {
  local missing=()
  for p in "${APT_PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    log "apt: installing ${missing[*]}"
    local sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

venv_setup() {
  if [ ! -x "$VENV/bin/python" ]; then
    log "venv: creating $VENV"
    # system site packages: on a Pi, picamera2 and lgpio come from apt
    python3 -m venv --system-site-packages "$VENV"
  fi
  local stamp="$VENV/.facegate-installed" want
  want=$(sha256sum pyproject.toml | cut -c1-16)
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    log "venv: installing facegate and its extras"
    "$VENV/bin/pip" install -q --disable-pip-version-check --upgrade pip
    "$VENV/bin/pip" install -q --disable-pip-version-check -e ".[daemon,backend,dev]"
    echo "$want" > "$stamp"
  fi
}

models_setup() {
  local from=()
  [ -d "$SHARED_MODELS" ] && from=(--from "$SHARED_MODELS")
  if ! "$VENV/bin/facegate" models verify >/dev/null 2>&1; then
    log "models: fetching ${from[*]}"
    "$VENV/bin/facegate" models fetch "${from[@]}"
  else
    # installed and intact; still pick up variants added to the manifest since
    "$VENV/bin/facegate" models fetch "${from[@]}" >/dev/null
  fi
}

setup() { apt_setup; venv_setup; models_setup; }

cmd=${1:-}
case "$cmd" in
  setup) setup ;;
  demo)
    setup
    shift
    log "demo: the daemon with a video as its camera, no broker; signed results printed and verified"
    # the evaluation data beside the checkout, when present, gives the demo a real person
    if [ -z "${FACEGATE_SHARED:-}" ] && [ -d "$ROOT/../shared/data" ]; then
      FACEGATE_SHARED=$(cd "$ROOT/../shared" && pwd)
      export FACEGATE_SHARED
    fi
    "$VENV/bin/facegate" demo "$@"
    ;;
  test)
    setup
    shift
    # fixed order by default; FACEGATE_RANDOM_ORDER=1 shuffles (pytest-randomly, printed seed)
    order=(-p no:randomly)
    [ "${FACEGATE_RANDOM_ORDER:-0}" = 1 ] && order=()
    "$VENV/bin/python" -m pytest "${order[@]}" "$@"
    ;;
  check)
    setup
    log "ruff check (rules in pyproject.toml: E W F I B UP) and mypy on device/facegate: zero errors"
    "$VENV/bin/ruff" check .
    "$VENV/bin/mypy"
    ;;
  *) echo "usage: scripts/dev.sh setup|demo|test [pytest args]|check" >&2; exit 2 ;;
esac
