#!/usr/bin/env python3
"""The guest side of scripts/vm-check.sh (test harness, not part of a terminal): on a virtio
serial port, one JSON request a line {"id", "cmd", "timeout"} -> runs `cmd` with bash as root
-> one JSON line {"id", "rc", "out"}. Says {"hello": boot_id, "uptime": s} when it starts, so
the host knows a boot reached it. Python's standard library only (the guest's python3)."""
import json
import os
import subprocess
import sys


def write_all(out, data: bytes) -> None:
    """The whole of `data`: a virtio console port takes at most 32 KiB a write (the kernel's
    virtio_console), and a raw unbuffered file returns how much it took. A reply of the whole
    journal (MBs) was cut after its first write, so the host never saw its newline."""
    view = memoryview(data)
    while view:
        n = out.write(view)
        view = view[n or 0:]


def main(path: str) -> None:
    fd = os.open(path, os.O_RDWR)
    out = os.fdopen(fd, "wb", buffering=0)
    inp = os.fdopen(os.dup(fd), "rb", buffering=0)

    def say(doc: dict) -> None:
        write_all(out, json.dumps(doc).encode() + b"\n")

    with open("/proc/sys/kernel/random/boot_id") as f:
        boot_id = f.read().strip()
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    say({"hello": boot_id, "uptime": uptime})
    buf = b""
    while True:
        chunk = inp.read(65536)
        if not chunk:  # the host side closed: wait for the next connection
            import time
            time.sleep(0.2)
            continue
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            if not line.strip():
                continue
            try:
                req = json.loads(line)
            except ValueError:
                say({"error": "bad request"})
                continue
            if req.get("cmd") == "hello":
                say({"id": req.get("id"), "hello": boot_id, "rc": 0, "out": ""})
                continue
            try:
                p = subprocess.run(["bash", "-c", req["cmd"]], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   timeout=req.get("timeout", 120), stdin=subprocess.DEVNULL)
                rc, text = p.returncode, p.stdout.decode(errors="replace")
            except subprocess.TimeoutExpired as exc:
                rc, text = 124, (exc.stdout or b"").decode(errors="replace") + "\n(timed out)"
            say({"id": req.get("id"), "rc": rc, "out": text})


if __name__ == "__main__":
    main(sys.argv[1])
