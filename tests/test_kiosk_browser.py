"""scripts/kiosk-browser.sh, run for real against a throwaway home: the desktop's autostart
gets one line that waits for the daemon's page and starts Chromium in kiosk mode at nice 10
(the frame loop goes first when the CPU is short); running it again changes nothing,
--uninstall takes the line away, and a page off loopback is refused."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "kiosk-browser.sh"


def run(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
           "PATH": "/usr/bin:/bin"}  # no raspi-config here: the script says what to do instead
    return subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=30)


def test_autostart_line_is_niced_idempotent_and_removable(tmp_path):
    wayfire = tmp_path / ".config" / "wayfire.ini"
    wayfire.parent.mkdir(parents=True)
    wayfire.write_text("[core]\nplugins = autostart\n[autostart]\npanel = wfrespawn wf-panel-pi\n")
    first = run(tmp_path, "--url", "http://127.0.0.1:8090/")
    assert first.returncode == 0, first.stderr
    labwc = (tmp_path / ".config" / "labwc" / "autostart").read_text()
    assert labwc.count("# facegate kiosk") == 1
    assert "exec nice -n 10 " in labwc and "--kiosk" in labwc and "http://127.0.0.1:8090/" in labwc
    assert "/dev/tcp/127.0.0.1/8090" in labwc  # waits for the page before starting the browser
    ini = wayfire.read_text()
    assert ini.count("facegate_kiosk = ") == 1 and "panel = wfrespawn wf-panel-pi" in ini
    assert "screen blanking off" in first.stdout
    again = run(tmp_path, "--url", "http://127.0.0.1:8090/")
    assert again.returncode == 0, again.stderr
    assert (tmp_path / ".config" / "labwc" / "autostart").read_text() == labwc
    assert wayfire.read_text() == ini
    gone = run(tmp_path, "--uninstall")
    assert gone.returncode == 0, gone.stderr
    assert "facegate" not in (tmp_path / ".config" / "labwc" / "autostart").read_text()
    assert "facegate" not in wayfire.read_text() and "panel = wfrespawn wf-panel-pi" in wayfire.read_text()


def test_a_page_off_loopback_is_refused(tmp_path):
    r = run(tmp_path, "--url", "http://192.168.1.20:8080/")
    assert r.returncode == 2 and "loopback only" in r.stderr
    assert not (tmp_path / ".config").exists()
