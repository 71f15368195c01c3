"""A real PostgreSQL server for tests: Debian's `postgresql` package (initdb, pg_ctl),
a throw-away cluster in a temporary directory on a free loopback port, run as an
unprivileged user (`nobody` when the tests run as root: PostgreSQL refuses root)."""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from broker import free_port, start_on_a_free_port


def pg_bin() -> Path | None:
    """The newest /usr/lib/postgresql/N/bin holding initdb, or where PATH has it."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    which = shutil.which("initdb")
    return Path(which).parent if which else None


class Postgres:
    def __init__(self, user: str = "nobody"):
        self.bin = pg_bin()
        if self.bin is None:
            raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql; scripts/dev.sh setup does)")
        self.as_root = os.geteuid() == 0
        self.user = user if self.as_root else pwd.getpwuid(os.geteuid()).pw_name
        self.dir = Path(tempfile.mkdtemp(prefix="facegate-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        if self.as_root:
            pw = pwd.getpwnam(self.user)
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        self.dir.chmod(0o755)

    def _run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        full = (["runuser", "-u", self.user, "--"] if self.as_root else []) + list(cmd)
        return subprocess.run(full, check=check, capture_output=True, text=True, cwd=self.dir, timeout=120)

    def start(self) -> Postgres:
        """Start and wait until it accepts connections, on another port when its port was
        taken (tests/broker.py's start_on_a_free_port, as the broker fixture does)."""
        if not (self.data / "PG_VERSION").exists():
            self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust",
                      "--no-sync", "-E", "UTF8")

        def attempt() -> str | None:
            log_from = self._log_size()
            r = self._start_once()
            return None if r.returncode == 0 else f"PostgreSQL did not start: {r.stderr} {self.log(log_from)}"

        def move() -> None:
            self.port = free_port()
        start_on_a_free_port(attempt, move, "PostgreSQL", getattr(self, "started", False))
        self.started = True
        return self

    def _start_once(self) -> subprocess.CompletedProcess:
        opts = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=on "
                "-c max_connections=50 -c shared_buffers=32MB")
        return self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "log"), "-o", opts,
                         "-w", "-t", "60", "start", check=False)

    def _log_size(self) -> int:
        try:
            return (self.dir / "log").stat().st_size
        except OSError:
            return 0

    def stop(self, mode: str = "fast") -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def log(self, start: int = 0) -> str:
        """The server's log from byte `start` on (its last 2000 characters)."""
        try:
            return (self.dir / "log").read_bytes()[start:].decode(errors="replace")[-2000:]
        except OSError:
            return ""

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def fresh_dsn(self) -> str:
        """A new empty database on this server, for one test."""
        name = f"t{os.urandom(6).hex()}"
        self._run(str(self.bin / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d",
                  "postgres", "-c", f"CREATE DATABASE {name}")
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def remove(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)
