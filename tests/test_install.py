"""scripts/install.sh: shellcheck-clean; --dry-run prints the whole plan and runs nothing
(every command that could change the machine is a logging stub first in PATH; the
read-only queries are stubs too, so the plan does not depend on this machine)."""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from facegate import config as config_mod

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "install.sh"
MUTATING = ["apt-get", "systemctl", "useradd", "groupadd", "usermod", "userdel", "install", "rm",
            "python3", "chown", "chmod", "mkdir", "cp", "mv", "ln", "tee", "pip", "mktemp"]


def _stub(bin_dir: Path, name: str, body: str) -> None:
    p = bin_dir / name
    p.write_text("#!/bin/sh\n" + body + "\n")
    p.chmod(p.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def _dry_run(tmp_path: Path, *args: str, present: bool = False) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run the script with stubs; present = user, groups and packages already installed."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    log = tmp_path / "executed.log"
    log.write_text("")
    for name in MUTATING:
        _stub(bin_dir, name, f'echo "{name} $*" >> "{log}"; exit 0')
    if present:
        _stub(bin_dir, "dpkg-query", 'printf "install ok installed"')
        _stub(bin_dir, "getent", 'echo "$2:x:44:"')
        _stub(bin_dir, "id", 'if [ "$1" = -nG ]; then echo "facegate video"; else echo 999; fi')
    else:
        _stub(bin_dir, "dpkg-query", "exit 1")
        _stub(bin_dir, "getent", '[ "$2" = video ]')  # video exists, gpio does not
        _stub(bin_dir, "id", "exit 1")  # no facegate user
    _stub(bin_dir, "apt-cache", '[ "$2" = python3-picamera2 ]')  # only picamera2 available
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    r = subprocess.run(["bash", str(SCRIPT), "--dry-run", *args], capture_output=True, text=True,
                       env=env, timeout=30)
    return r, log.read_text().splitlines()


def _index(lines: list[str], needle: str) -> int:
    for i, ln in enumerate(lines):
        if needle in ln:
            return i
    raise AssertionError(f"{needle!r} not in plan:\n" + "\n".join(lines))


def test_shellcheck_clean():
    exe = shutil.which("shellcheck")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("shellcheck is not installed")
        pytest.skip("shellcheck is not installed")
    r = subprocess.run([exe, "--shell=bash", str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_dry_run_prints_the_whole_plan_and_does_nothing(tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    r, executed = _dry_run(tmp_path, "--models-from", str(mirror), "--camera", "v4l2")
    assert r.returncode == 0, r.stderr
    assert executed == []  # not one mutating command ran
    plan = r.stdout.splitlines()
    assert plan[0] == "# dry run: nothing is changed"
    steps = [
        "+ apt-get update",
        "apt-get install -y --no-install-recommends python3 python3-venv python3-pip python3-picamera2",
        "+ groupadd --system gpio",
        "+ useradd --system --user-group --groups video,gpio --home-dir /var/lib/facegate",
        "+ install -d -m 0750 -o root -g facegate /etc/facegate",
        "+ install -d -m 0750 -o facegate -g facegate /var/lib/facegate",
        f"+ copy pyproject.toml README.md device models of {REPO} to <temporary directory>",
        "+ /opt/facegate/venv/bin/pip install --upgrade '<temporary directory>[daemon,pi]'",
        f"facegate models fetch --dir /opt/facegate/models --from {mirror}",
        "/etc/facegate/facegate.toml",
        "/etc/facegate/signing.key",
        f"+ install -D -m 0644 -o root -g root {REPO}/systemd/facegate.service /etc/systemd/system/facegate.service",
        "+ systemctl enable facegate.service",
    ]
    if Path("/run/systemd/system").is_dir():  # systemd runs here: restarted if it was running
        steps.append("+ systemctl try-restart facegate.service")
    else:  # a chroot or a container: installed and enabled, not started, and it says so
        steps.append("# systemd is not running here")
    at = [_index(plan, s) for s in steps]
    assert at == sorted(at), "plan out of order"
    assert "# apt: python3-lgpio is not available here, skipped" in plan
    assert "# apt: mosquitto-clients is not available here, skipped" in plan
    assert "# group video exists" in plan and "+ groupadd --system video" not in plan
    assert "--comment 'facegate daemon'" in plan[_index(plan, "useradd")]  # quoted as a command line
    if not Path("/opt/facegate/venv/bin/python").exists():
        assert "+ python3 -m venv --system-site-packages /opt/facegate/venv" in plan
    if not Path("/etc/facegate/facegate.toml").exists():
        assert 'camera.source = "v4l2"' in plan[_index(plan, "config example >")]
    if not Path("/etc/facegate/signing.key").exists():
        assert "(mode 0600 root:root)" in plan[_index(plan, "signing.key")]


def test_second_run_skips_what_is_there(tmp_path):
    r, executed = _dry_run(tmp_path, "--camera", "picamera2", present=True)
    assert r.returncode == 0, r.stderr
    assert executed == []
    plan = r.stdout.splitlines()
    assert "# apt: all packages present" in plan and not any("apt-get" in ln for ln in plan)
    assert "# user facegate exists" in plan and not any("useradd" in ln for ln in plan)
    assert "+ usermod --append --groups gpio facegate" in plan  # only the missing group
    assert not any("groupadd" in ln for ln in plan)
    assert not any("--from" in ln for ln in plan)


def test_uninstall_plan(tmp_path):
    r, executed = _dry_run(tmp_path, "--uninstall")
    assert r.returncode == 0 and executed == []
    plan = r.stdout.splitlines()
    assert "+ rm -rf /opt/facegate" in plan
    assert any(ln.startswith("# kept /etc/facegate") for ln in plan)
    actions = [ln for ln in plan if ln.startswith("+")]
    assert not any("userdel" in ln or "/etc/facegate" in ln or "/var/lib/facegate" in ln for ln in actions)

    r, executed = _dry_run(tmp_path, "--uninstall", "--purge", present=True)
    assert r.returncode == 0 and executed == []
    plan = r.stdout.splitlines()
    assert "+ rm -rf /etc/facegate /var/lib/facegate" in plan and "+ userdel facegate" in plan
    unit_installed = Path("/etc/systemd/system/facegate.service").exists()
    assert ("+ systemctl disable --now facegate.service" in plan) == unit_installed


def test_bad_options_stop_before_doing_anything(tmp_path):
    for args in (["--purge"], ["--camera", "usb"], ["--models-from", str(tmp_path / "none")], ["--frobnicate"]):
        r, executed = _dry_run(tmp_path, *args)
        assert r.returncode == 2 and r.stderr.startswith("install.sh: "), (args, r.stderr)
        assert executed == [] and "+ " not in r.stdout


def _sourced(script: str, **env) -> subprocess.CompletedProcess:
    """Run bash code with the script's functions and variables defined (main does not run)."""
    return subprocess.run(["bash", "-c", f'source "{SCRIPT}"; {script}'], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=60)


def test_config_written_is_the_example_with_camera_and_models_dir(tmp_path):
    venv = Path(sys.executable).parent.parent
    r = _sourced(f'VENV="{venv}"; CAMERA=v4l2; MODELS=/opt/facegate/models; config_text')
    assert r.returncode == 0, r.stderr
    cfg = config_mod.parse(r.stdout)
    assert cfg.camera.source == "v4l2" and cfg.models.dir == "/opt/facegate/models"
    assert cfg.daemon.key_file == ""  # the daemon takes the systemd credential


def test_signing_key_is_ed25519_pkcs8_0600_and_never_overwritten(tmp_path):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    key = tmp_path / "signing.key"
    r = _sourced(f'"{sys.executable}" -c "$KEYGEN_PY" "{key}"')
    assert r.returncode == 0, r.stderr
    assert "public key" in r.stdout
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    pem = key.read_bytes()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8, unencrypted
    assert isinstance(load_pem_private_key(pem, None), Ed25519PrivateKey)
    r = _sourced(f'"{sys.executable}" -c "$KEYGEN_PY" "{key}"')
    assert r.returncode != 0 and key.read_bytes() == pem


# -- for real, into a root directory (useradd --prefix, systemctl --root) ---------------------
def _tree(root: Path) -> dict[str, tuple]:
    """Every path under root: (type, mode, uid, gid, sha256 or link target); the shadow
    tools' backups (passwd- ...) excluded."""
    import hashlib

    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if rel in ("etc/passwd-", "etc/group-", "etc/shadow-", "etc/gshadow-"):
                continue
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                what = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                what = ("dir", "")
            else:
                what = ("file", hashlib.sha256(p.read_bytes()).hexdigest())
            out[rel] = (*what, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
    return out


def _fake_root(root: Path) -> None:
    """A root directory like a system's: its account files, /opt, /var/lib, and a unit
    folder another service is enabled in (systemctl disable removes an emptied one)."""
    wants = root / "etc" / "systemd" / "system" / "multi-user.target.wants"
    wants.mkdir(parents=True)
    (wants / "ssh.service").symlink_to("/lib/systemd/system/ssh.service")
    for d in ("opt", "var/lib"):
        (root / d).mkdir(parents=True)
    for name in ("passwd", "group", "shadow", "gshadow", "login.defs"):
        shutil.copy2(Path("/etc") / name, root / "etc" / name)


def _owner(root: Path, db: str, name: str) -> int:
    for line in (root / "etc" / db).read_text().splitlines():
        f = line.split(":")
        if f[0] == name:
            return int(f[2])
    raise AssertionError(f"{name} not in {db}")


def test_install_for_real_twice_then_purge_leaves_nothing(tmp_path, data_dir):
    """A real install (no stubs) into a root directory: the package non-editable in the venv,
    models fetched from the mirror, config, key, unit installed and enabled but not started
    (no systemd here); a second run changes no file; --uninstall --purge restores the root."""
    from timeouts import timeout_s

    if os.geteuid() != 0:
        msg = "a real install needs root (useradd, chown)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    root = tmp_path / "root"
    _fake_root(root)
    before = _tree(root)
    mirror = data_dir.parent / "models"
    work = tmp_path / "elsewhere"  # not the checkout: nothing may depend on the working directory
    work.mkdir()

    def install(*args: str) -> subprocess.CompletedProcess:
        r = subprocess.run(["bash", str(SCRIPT), "--root", str(root), *args], capture_output=True, text=True,
                           cwd=work, timeout=timeout_s(600))
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        return r

    first = install("--models-from", str(mirror), "--camera", "file")
    assert "facegate.service is installed and enabled but not started" in first.stdout
    venv = root / "opt" / "facegate" / "venv"
    code = ("import facegate, importlib.metadata as md; d = md.distribution('facegate'); "
            "print(facegate.__file__); print(d.read_text('direct_url.json') or '')")
    r = subprocess.run([venv / "bin" / "python", "-c", code], capture_output=True, text=True, cwd=work,
                       timeout=timeout_s(60))
    module, direct_url = r.stdout.split("\n", 1)
    assert Path(module).is_relative_to(venv) and '"editable": true' not in direct_url, r.stdout + r.stderr
    r = subprocess.run([venv / "bin" / "facegate", "models", "verify", "--dir", root / "opt/facegate/models"],
                       capture_output=True, text=True, cwd=work, timeout=timeout_s(120))
    assert r.returncode == 0, r.stdout + r.stderr
    cfg_path = root / "etc" / "facegate" / "facegate.toml"
    cfg = config_mod.parse(cfg_path.read_text())
    assert cfg.camera.source == "file" and cfg.models.dir == "/opt/facegate/models"
    gid = _owner(root, "group", "facegate")
    assert (stat.S_IMODE(cfg_path.stat().st_mode), cfg_path.stat().st_gid) == (0o640, gid)
    key = root / "etc" / "facegate" / "signing.key"
    assert (stat.S_IMODE(key.stat().st_mode), key.stat().st_uid) == (0o600, 0)
    state = root / "var" / "lib" / "facegate"
    assert state.stat().st_uid == _owner(root, "passwd", "facegate")
    unit = root / "etc" / "systemd" / "system" / "facegate.service"
    assert unit.read_bytes() == (REPO / "systemd" / "facegate.service").read_bytes()
    wants = root / "etc" / "systemd" / "system" / "multi-user.target.wants" / "facegate.service"
    assert os.readlink(wants) == "/etc/systemd/system/facegate.service"
    assert "gpio" in {ln.split(":")[0] for ln in (root / "etc" / "group").read_text().splitlines()}

    installed = _tree(root)
    second = install("--models-from", str(mirror), "--camera", "file")
    assert _tree(root) == installed, "a second run changed files"
    assert "package facegate is up to date" in second.stdout and "pip" not in second.stdout
    assert "unit facegate.service is enabled" in second.stdout

    install("--uninstall", "--purge")
    assert _tree(root) == before, "--uninstall --purge left something behind"
