"""Debian's Chromium, headless, driven over its DevTools protocol (websocket-client): open
a page at a window size, evaluate JavaScript, take screenshots. A fresh profile per
browser, no network beyond what the page asks of its own server."""
from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import websocket

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--no-default-browser-check",
         "--hide-scrollbars", "--mute-audio", "--remote-debugging-port=0", "--remote-allow-origins=*"]


def proc_stat(pid: str) -> list[str]:
    """/proc/PID/stat's fields after the command name: [0] state, [1] ppid, [11] utime, [12] stime
    (PID may also be "self/task/TID": a thread's)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Browser:
    """nice: start it at that niceness (as scripts/kiosk-browser.sh does on a terminal);
    reduced_motion: ask the page for prefers-reduced-motion (stills and tests: no animation
    caught half-way), off to see what a kiosk with motion costs."""

    def __init__(self, width: int = 800, height: int = 480, nice: int = 0, reduced_motion: bool = True):
        exe = chromium_path()
        assert exe, "chromium is not installed (scripts/dev.sh setup installs it)"
        self.profile = tempfile.mkdtemp(prefix="facegate-chromium-")
        prefix = ["nice", "-n", str(nice)] if nice else []
        self.proc = subprocess.Popen([*prefix, exe, *FLAGS, f"--user-data-dir={self.profile}",
                                      f"--window-size={width},{height}", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not port_file.is_file() or not port_file.read_text().strip():
            assert time.monotonic() < deadline and self.proc.poll() is None, "chromium did not start"
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        pages = []
        while not pages:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
                pages = [p for p in json.load(r) if p.get("type") == "page"]
            assert time.monotonic() < deadline, "chromium has no page"
        self.ws = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=30, suppress_origin=True)
        self._ids = itertools.count(1)
        self.size(width, height)
        if reduced_motion:
            self.call("Emulation.setEmulatedMedia", features=[{"name": "prefers-reduced-motion", "value": "reduce"}])

    def call(self, method: str, **params) -> dict:
        mid = next(self._ids)
        self.ws.send(json.dumps({"id": mid, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == mid:
                assert "error" not in msg, (method, msg["error"])
                return msg.get("result", {})

    def size(self, width: int, height: int) -> None:
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def eval(self, expr: str):
        r = self.call("Runtime.evaluate", expression=expr, returnByValue=True)
        return r.get("result", {}).get("value")

    def wait(self, expr: str, timeout_s: float, what: str = ""):
        deadline = time.monotonic() + timeout_s
        while True:
            v = self.eval(expr)
            if v:
                return v
            assert time.monotonic() < deadline, f"timed out waiting for {what or expr}"
            time.sleep(0.05)

    def screenshot(self, path: Path, quality: int = 72) -> Path:
        """PNG for a .png path, else JPEG at `quality`."""
        fmt = {"format": "png"} if path.suffix == ".png" else {"format": "jpeg", "quality": quality}
        data = self.call("Page.captureScreenshot", **fmt)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def cpu_seconds(self) -> float:
        """CPU time (user + system) used so far by the browser and all its processes, seconds."""
        children: dict[int, list[int]] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    children.setdefault(int(proc_stat(entry.name)[1]), []).append(int(entry.name))
                except OSError:
                    pass
        total, todo = 0, [self.proc.pid]
        while todo:
            pid = todo.pop()
            try:
                st = proc_stat(str(pid))
                total += int(st[11]) + int(st[12])
            except OSError:
                pass
            todo += children.get(pid, [])
        return total / os.sysconf("SC_CLK_TCK")

    def close(self) -> None:
        try:
            self.ws.close()
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
