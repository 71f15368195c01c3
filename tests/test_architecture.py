"""Import direction: rooms import only from rooms above them; only adapters import
hardware and runtime libraries."""
import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "device" / "facegate"
ADAPTER_ONLY = {"ai_edge_litert", "tflite_runtime", "paho", "gpiozero", "picamera2", "lgpio", "systemd"}
# The rooms, lowest first: a room imports only rooms of the tiers before its own -- never a
# room of its own tier (siblings), never one further down this list. A new room is one entry
# at its place (as the tier ("contract",) below everything that makes or reads a message).
LAYERS: list[tuple[str, ...]] = [
    ("vocab", "quiet", "pidlock", "status"),  # the words; stdlib-only helpers; the status document
    ("registry",),  # the plug-in families: names -> factories (vocab only)
    ("types", "errors"),
    ("config",),
    ("ports", "imageio", "modelstore"),
    ("contract",),  # the typed messages that cross MQTT, their CBOR, checks and COSE signing: both ends import it
    ("signing", "outbox"),
    ("vision", "policy", "messages"),  # the match policy: the calibration shipped with the models
    ("liveness", "decide"),
    ("kat",),  # known-answer self-tests of the vision / liveness model classes; models load through it
    ("pipeline", "guidance"),  # guidance for the person: pure, frame time in, hints out
    ("session", "events"),  # the terminal's events: what its audiences are told
    ("delivery", "feed"),  # the daemon's machinery: results to the broker, the newest camera frame
    ("admission", "results", "announce"),  # a command in, a typed answer out; signed results; the rest
    ("adapters", "sinks", "screen", "kiosk"),  # hardware and libraries; the audiences; the kiosk page
    ("daemon",),
    ("selftest", "demo", "backend"),  # beside each other; only the CLI imports them
    ("cli",),
]
# Rooms beside the chain: at their place in LAYERS, but importing only what is named here.
BESIDE = {
    "adapters": {"vocab", "quiet", "registry", "types", "errors", "config", "ports", "imageio"},  # implement ports
    "backend": {"vocab", "pidlock", "errors", "config", "imageio", "contract", "signing", "messages"},  # the contract's other end
}
TIER = {room: n for n, tier in enumerate(LAYERS) for room in tier}


def may_import(room: str, target: str) -> bool:
    """Whether `room` may import `target` (both rooms of LAYERS)."""
    if room in BESIDE:
        return target in BESIDE[room]
    return TIER[target] < TIER[room]


# inside the backend, one module per outside library
BACKEND_ONLY = {"paho": "mqtt.py", "psycopg": "store.py", "sqlite3": "store.py", "prometheus_client": "metrics.py"}


def _rooms() -> set[str]:
    """The rooms that exist: each module and each package of device/facegate/."""
    return {p.stem for p in PKG.glob("*.py") if p.stem != "__init__"} | {
        p.name for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").exists()}


def test_the_list_names_every_room_once_and_only_rooms_that_exist():
    """A rule about a room that does not exist guards nothing (a typo or a room renamed);
    a room missing from the list has no place in it."""
    listed = [room for tier in LAYERS for room in tier]
    assert len(listed) == len(set(listed)), sorted(r for r in listed if listed.count(r) > 1)
    assert set(listed) == _rooms(), (sorted(set(listed) - _rooms()), sorted(_rooms() - set(listed)))
    assert set().union(*BESIDE.values()) | set(BESIDE) <= _rooms()


def _imports(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, 0
        elif isinstance(node, ast.ImportFrom):
            if node.module is None:  # `from . import x` / `from .. import x`: the names are the modules
                for a in node.names:
                    yield a.name, node.level
            else:
                yield node.module, node.level


def _room(path: Path, pkg: Path = PKG) -> str:
    rel = path.relative_to(pkg)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _violations(pkg: Path = PKG) -> list[str]:
    problems = []
    for f in pkg.rglob("*.py"):
        room = _room(f, pkg)
        for mod, level in _imports(f):
            top = mod.split(".")[0]
            if level == 0 and top in ADAPTER_ONLY and room != "adapters" and not (room == "backend" and top == "paho"):
                problems.append(f"{f.relative_to(pkg)} imports {mod}")
            target = None
            if level:  # relative import inside the package
                parts = f.relative_to(pkg).parts
                base = parts[: len(parts) - level]
                target = (list(base) + mod.split("."))[0] if (base or mod) else None
            elif top == "facegate":
                target = mod.split(".")[1] if "." in mod else None
            if target and target != room and target in TIER and not may_import(room, target):
                problems.append(f"{f.relative_to(pkg)} ({room}) imports {target}")
    return problems


def test_rooms_and_adapter_only_imports():
    assert not _violations(), _violations()


@pytest.mark.parametrize("room_file, line", [
    ("vision/detect.py", "from ..pipeline import Verifier"),  # back up the list
    ("decide.py", "from .liveness.check import LivenessCheck"),  # a sibling of its tier
    ("config.py", "import facegate.daemon"),  # by its absolute name
    ("pipeline.py", "from .adapters.cameras import open_camera"),  # the core never reaches the adapters
    ("adapters/files.py", "from ..pipeline import Verifier"),  # beside the chain: only what BESIDE names
    ("backend/store.py", "from ..outbox import Outbox"),
    ("vision/embed.py", "import paho.mqtt.client"),  # a library only adapters import
])
def test_an_import_running_back_up_the_list_fails(tmp_path, room_file, line):
    """The rule bites: each import planted in a copy of the package is reported, and the
    copy without it is clean."""
    import shutil

    pkg = tmp_path / "facegate"
    shutil.copytree(PKG, pkg, ignore=shutil.ignore_patterns("__pycache__", "static"))
    assert not _violations(pkg)
    target = pkg / room_file
    target.write_text(target.read_text() + "\n" + line + "\n")
    found = _violations(pkg)
    assert len(found) == 1 and found[0].startswith(room_file), found


def test_backend_is_its_own_room():
    """Only the CLI imports the backend; inside it, only backend/mqtt.py imports paho and
    only backend/store.py a database driver."""
    problems = []
    for f in PKG.rglob("*.py"):
        room, rel = _room(f), f.relative_to(PKG)
        for mod, level in _imports(f):
            top = mod.split(".")[0]
            if room == "backend" and level == 0 and top in BACKEND_ONLY and f.name != BACKEND_ONLY[top]:
                problems.append(f"{rel} imports {mod} (only backend/{BACKEND_ONLY[top]} may)")
            parts = rel.parts
            target = ((list(parts[: len(parts) - level]) + mod.split("."))[0] if level
                      else mod.split(".")[1] if top == "facegate" and "." in mod else None)
            if target == "backend" and room not in ("backend", "cli"):
                problems.append(f"{rel} ({room}) imports the backend")
    assert not problems, problems


def test_nothing_imports_the_cli():
    """The CLI (the package device/facegate/cli/) is the top: no other room imports it, by
    any spelling (`from .cli`, `from .. import cli`, `facegate.cli`)."""
    problems = []
    for f in PKG.rglob("*.py"):
        room, rel = _room(f), f.relative_to(PKG)
        if room == "cli":
            continue
        for mod, level in _imports(f):
            parts = rel.parts
            target = ((list(parts[: len(parts) - level]) + mod.split("."))[0] if level
                      else mod.split(".")[1] if mod.split(".")[0] == "facegate" and "." in mod else None)
            if target == "cli":
                problems.append(f"{rel} ({room}) imports the CLI")
    assert (PKG / "cli" / "__init__.py").is_file() and (PKG / "cli" / "__main__.py").is_file()
    assert not problems, problems


def _prints(path: Path) -> bool:
    return any(isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "print"
               for n in ast.walk(ast.parse(path.read_text())))


def test_only_the_cli_prints():
    """Everything else reports through return values, exceptions, callbacks and logging;
    the CLI (and the backend's command group, backend/cli.py) prints."""
    printing = {str(f.relative_to(PKG)) for f in PKG.rglob("*.py") if _prints(f)}
    allowed = {p for p in printing if p.startswith("cli/") or p == "backend/cli.py"}
    assert printing - allowed == set(), sorted(printing - allowed)
    assert any(p.startswith("cli/") for p in printing)  # the check sees the CLI's prints
