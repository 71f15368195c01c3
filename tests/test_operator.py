"""docs/operator.md, run as written: every `$ ` command of its console blocks in order (its
`toml file=…` blocks written first), each expected output line found in order in what the
command printed (`…` = anything), on a Mosquitto made by scripts/broker-setup.sh, a real
PostgreSQL and the real daemon with a video as its camera. The page's machine names and
paths are mapped to this machine's (SUBST); nothing else is changed."""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from broker import free_port
from postgres import Postgres
from timeouts import timeout_s

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "operator.md"
# commands whose answer changes while the daemon and the worker settle: asked again until it fits
RETRIED = ("facegate status", "facegate backend devices --config", "psql ")


def parse(text: str) -> list[tuple[str, object]]:
    """[("file", (path, body)) | ("run", (command, [expected lines]))] in page order."""
    steps: list[tuple[str, object]] = []
    for lang, info, body in re.findall(r"^```(\w+)([^\n]*)\n(.*?)^```", text, flags=re.S | re.M):
        if lang == "toml" and "file=" in info:
            steps.append(("file", (info.split("file=", 1)[1].strip(), body)))
        elif lang == "console":
            for line in body.splitlines():
                if line.startswith("$ "):
                    steps.append(("run", (line[2:], [])))
                elif line.strip() and steps and steps[-1][0] == "run":
                    steps[-1][1][1].append(line)  # type: ignore[index]
    return steps


def pattern(expected: str) -> re.Pattern:
    parts = [re.escape(p) for p in expected.strip().split("…")]
    return re.compile(r"\s*" + ".*".join(re.sub(r"(\\ )+", r"\\s+", p) for p in parts) + r"\s*")


def missing(expected: list[str], output: str) -> str | None:
    """The first expected line not found (in order) in output, or None."""
    lines = output.splitlines()
    i = 0
    for want in expected:
        pat = pattern(want)
        while i < len(lines) and not pat.fullmatch(lines[i]):
            i += 1
        if i == len(lines):
            return want
        i += 1
    return None


@pytest.fixture
def machine(tmp_path, faces):
    """Where the page's machines live here, and what its names become."""
    root = Path(tempfile.mkdtemp(prefix="facegate-operator-"))  # the broker's own user must read it
    root.chmod(0o755)
    pg = Postgres().start()
    (root / "terminal" / "etc").mkdir(parents=True)
    (root / "backend").mkdir()
    (root / "backend" / "id.jpg").write_bytes(faces["ref"])
    port = free_port()
    subst = [("scripts/broker-setup.sh", str(REPO / "scripts" / "broker-setup.sh")),
             ("/etc/facegate-broker", str(root / "broker")), ("broker.example", "localhost"), ("8883", str(port)),
             ("/etc/facegate/", str(root / "terminal" / "etc") + "/"),
             ("/var/lib/facegate", str(root / "terminal" / "state")),
             ("/srv/facegate/entrance.webm", str(faces["video"])),
             ("postgresql://facegate@db/facegate", pg.fresh_dsn()),
             ("ssh kiosk-7 ", ""), ("scp broker:", "cp "), ("sudo ", "")]
    yield root, subst, port
    pg.remove()
    shutil.rmtree(root, ignore_errors=True)


def test_the_first_day_page_runs_as_written(machine, model_dir):
    root, subst, port = machine
    text = DOC.read_text()
    for a, b in subst:
        text = text.replace(a, b)
    cwd = root / "backend"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "TZ": "UTC"}
    background: list[tuple[str, subprocess.Popen]] = []
    done: list[str] = []
    try:
        for kind, step in parse(text):
            if kind == "file":
                path, body = step  # type: ignore[misc]
                if "<public_key of backend.pem>" in body:
                    shown = subprocess.run(["facegate", "keys", "show", "--path", "backend.pem"], cwd=cwd, env=env,
                                           capture_output=True, text=True, check=True).stdout
                    body = body.replace("<public_key of backend.pem>", re.search(r"public_key\s+(\w+)", shown)[1])
                (cwd / path).write_text(body)
                continue
            cmd, expected = step  # type: ignore[misc]
            if cmd.endswith(" &"):
                log = open(root / f"bg{len(background)}.log", "w")
                proc = subprocess.Popen(["bash", "-c", f"exec {cmd[:-2]}"], cwd=cwd, env=env, stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
                background.append((cmd, proc))
                if cmd.startswith("mosquitto"):
                    _wait_port(port)
                time.sleep(1)
                assert proc.poll() is None, f"{cmd} ended: {(root / f'bg{len(background) - 1}.log').read_text()}"
                done.append(cmd)
                continue
            deadline = time.monotonic() + (timeout_s(120) if cmd.startswith(RETRIED) else 0)
            while True:
                r = subprocess.run(["bash", "-c", cmd], cwd=cwd, env=env, capture_output=True, text=True,
                                   timeout=timeout_s(300))
                gap = missing(expected, r.stdout + r.stderr)
                if (r.returncode == 0 and gap is None) or time.monotonic() > deadline:
                    break
                time.sleep(1)
            logs = "\n".join(f"--- {c}\n{(root / f'bg{i}.log').read_text()[-3000:]}"
                             for i, (c, _) in enumerate(background))
            assert r.returncode == 0 and gap is None, (
                f"after {done}:\n$ {cmd}\nexit {r.returncode}; expected line not found: {gap!r}\n"
                f"stdout:\n{r.stdout}\nstderr:\n{r.stderr}\n{logs}")
            done.append(cmd)
    finally:
        for _, proc in reversed(background):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
    assert any(c.startswith("psql") for c in done)  # the page got to its audit row


def _wait_port(port: int) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing listens on {port}")


def test_the_page_parser_finds_commands_expectations_and_files():
    steps = parse(DOC.read_text())
    runs = [s[1][0] for s in steps if s[0] == "run"]  # type: ignore[index]
    assert runs[0].startswith("sudo scripts/broker-setup.sh init") and runs[-1].startswith("psql")
    assert [s[1][0] for s in steps if s[0] == "file"] == ["backend.toml", "/etc/facegate/facegate.toml"]  # type: ignore[index]
    assert missing(["kiosk-7: match  request …  seq …"], "kiosk-7: match  request 3f0c  seq 118  sig") is None
    assert missing(["a", "b"], "b\na") == "b"  # in order
