"""Import direction: rooms import only from rooms above them; only adapters import
hardware and runtime libraries."""
import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "device" / "facegate"
ADAPTER_ONLY = {"ai_edge_litert", "tflite_runtime", "paho", "gpiozero", "picamera2", "lgpio", "systemd"}
# room -> rooms it must not import
FORBIDDEN = {
    # the plug-in families (camera sources, challenge steps, publishers): names -> factories, vocab only
    "registry": {"events", "guidance", "screen", "sinks", "types", "errors", "config", "ports", "vision", "liveness", "decide", "pipeline", "session", "adapters", "daemon", "demo", "cli", "selftest", "delivery", "feed", "messages", "signing", "outbox", "imageio", "modelstore", "admission", "kiosk", "announce", "results"},
    "vocab": {"registry", "events", "guidance", "screen", "sinks", "types", "errors", "config", "ports", "vision", "liveness", "decide", "pipeline", "session", "adapters", "daemon", "demo", "cli", "selftest", "delivery", "feed", "messages", "signing", "outbox", "imageio", "modelstore", "admission", "kiosk", "announce", "results"},
    "types": {"events", "guidance", "screen", "sinks", "config", "ports", "vision", "liveness", "decide", "pipeline", "session", "adapters", "daemon", "demo", "cli", "selftest", "delivery", "feed", "kat", "admission", "kiosk", "announce", "results"},
    "errors": {"events", "guidance", "screen", "sinks", "config", "ports", "vision", "liveness", "decide", "pipeline", "session", "adapters", "daemon", "demo", "cli", "selftest", "delivery", "feed", "kat", "admission", "kiosk", "announce", "results"},
    "config": {"events", "guidance", "screen", "sinks", "vision", "liveness", "pipeline", "session", "adapters", "daemon", "demo", "cli", "selftest", "delivery", "feed", "kat", "admission", "kiosk", "announce", "results"},
    "ports": {"events", "guidance", "screen", "sinks", "vision", "liveness", "decide", "pipeline", "session", "adapters", "daemon", "demo", "cli", "selftest", "delivery", "feed", "kat", "admission", "kiosk", "announce", "results"},
    "vision": {"events", "guidance", "screen", "sinks", "liveness", "decide", "pipeline", "session", "adapters", "daemon", "demo", "cli", "selftest", "delivery", "feed", "kat", "admission", "kiosk", "announce", "results"},
    "liveness": {"events", "guidance", "screen", "sinks", "pipeline", "session", "adapters", "daemon", "demo", "cli", "selftest", "delivery", "feed", "kat", "admission", "kiosk", "announce", "results"},
    "decide": {"events", "guidance", "screen", "sinks", "vision", "liveness", "pipeline", "session", "adapters", "daemon", "demo", "cli", "selftest", "delivery", "feed", "kat", "admission", "kiosk", "announce", "results"},
    # known-answer self-tests: run the vision / liveness model classes on shipped inputs;
    # the pipeline, the daemon and the selftest load their models through it
    "kat": {"events", "guidance", "screen", "sinks", "pipeline", "session", "adapters", "daemon", "demo", "cli", "selftest", "delivery", "feed", "admission", "kiosk", "announce", "results"},
    # a process's lock naming its pid: stdlib only
    "pidlock": {"types", "errors", "config", "ports", "vision", "liveness", "decide", "pipeline", "session", "adapters",
                "daemon", "demo", "cli", "selftest", "delivery", "feed", "kat", "admission", "kiosk", "announce", "results",
                "outbox", "backend", "messages", "signing"},
    # the match policy: the calibration table shipped with the models, read for the config's target
    "policy": {"events", "guidance", "screen", "sinks", "vision", "liveness", "decide", "pipeline", "session", "adapters",
               "daemon", "demo", "cli", "selftest", "delivery", "feed", "kat", "admission", "kiosk", "announce", "results"},
    "pipeline": {"events", "screen", "sinks", "adapters", "daemon", "demo", "cli", "selftest", "delivery", "feed", "admission", "kiosk", "announce", "results"},
    "session": {"events", "screen", "sinks", "adapters", "daemon", "demo", "cli", "selftest", "delivery", "feed", "admission", "kiosk", "announce", "results"},
    "adapters": {"events", "guidance", "screen", "sinks", "pipeline", "session", "daemon", "demo", "cli", "selftest", "delivery", "feed", "admission", "kiosk", "announce", "results"},
    # command admission: a message in, a typed answer out (the contract, signing, the outbox's replay record)
    "admission": {"events", "guidance", "screen", "sinks", "vision", "liveness", "decide", "pipeline", "session", "adapters", "daemon", "demo", "cli", "selftest",
                  "delivery", "feed", "kat", "kiosk", "announce", "results"},
    # the status document and health counters: written by the daemon, read by the CLI and the soak
    "status": {"events", "guidance", "screen", "sinks", "types", "config", "ports", "vision", "liveness", "decide", "pipeline", "session", "adapters", "daemon",
               "demo", "cli", "selftest", "delivery", "feed", "kat", "admission", "messages", "outbox", "signing", "kiosk", "announce", "results"},
    # the daemon's parts: what goes to the broker besides results; signed results; one request's session and answer
    "announce": {"vision", "liveness", "decide", "pipeline", "session", "adapters", "daemon", "demo", "cli", "selftest",
                 "delivery", "feed", "kat", "admission", "outbox", "kiosk", "results"},
    "results": {"vision", "liveness", "decide", "pipeline", "session", "adapters", "daemon", "demo", "cli", "selftest",
                "feed", "kat", "admission", "kiosk", "announce"},
    "kiosk": {"sinks", "screen", "adapters", "daemon", "demo", "cli", "selftest", "delivery", "feed", "outbox"},
    # guidance for the person: pure, frame time in, hints out
    "guidance": {"pipeline", "session", "adapters", "daemon", "demo", "cli", "selftest", "delivery", "feed",
                 "admission", "kiosk", "announce", "results", "events", "sinks", "screen", "vision", "liveness"},
    # the terminal's events, and their audiences: one module per sink; the kiosk screen
    "events": {"pipeline", "session", "adapters", "daemon", "demo", "cli", "selftest", "kiosk", "announce",
               "results", "sinks", "screen"},
    "sinks": {"adapters", "daemon", "demo", "cli", "selftest", "kiosk", "screen", "session", "pipeline"},
    "screen": {"adapters", "daemon", "demo", "cli", "selftest", "kiosk", "sinks", "announce", "results", "session",
               "pipeline", "admission", "delivery", "outbox", "signing"},
    "daemon": {"demo", "cli", "selftest"},
    "demo": {"cli", "selftest"},
    "selftest": {"demo", "cli"},  # beside the daemon (it may import it); only the CLI imports it
    # rooms outside the chain above: nothing imports the daemon, the demo, the selftest or the CLI
    "imageio": {"events", "guidance", "screen", "sinks", "daemon", "demo", "cli", "selftest", "kat", "admission", "kiosk", "announce", "results"},
    "modelstore": {"events", "guidance", "screen", "sinks", "daemon", "demo", "cli", "selftest", "kat", "admission", "kiosk", "announce", "results"},
    "messages": {"events", "guidance", "screen", "sinks", "daemon", "demo", "cli", "selftest", "admission", "kiosk", "announce", "results"},
    "outbox": {"events", "guidance", "screen", "sinks", "pipeline", "adapters", "delivery", "feed", "daemon", "demo", "cli", "selftest", "admission", "kiosk", "announce", "results"},
    "signing": {"events", "guidance", "screen", "sinks", "pipeline", "adapters", "delivery", "feed", "daemon", "demo", "cli", "selftest", "admission", "kiosk", "announce", "results"},
    "quiet": {"events", "guidance", "screen", "sinks", "types", "config", "ports", "vision", "liveness", "pipeline", "adapters", "daemon", "demo", "cli", "admission", "kiosk", "announce", "results"},
    # the daemon's machinery: results to the broker, the newest camera frame
    "delivery": {"events", "guidance", "screen", "sinks", "pipeline", "vision", "liveness", "adapters", "feed", "daemon", "demo", "cli", "selftest", "admission", "kiosk", "announce", "results"},
    "feed": {"events", "guidance", "screen", "sinks", "pipeline", "vision", "liveness", "adapters", "delivery", "daemon", "demo", "cli", "selftest", "admission", "kiosk", "announce", "results"},
    # the other end of the contract: the contract (messages, signing, config, errors) and nothing of the daemon
    "backend": {"events", "guidance", "screen", "sinks", "types", "ports", "vision", "liveness", "decide", "pipeline", "session", "adapters", "outbox",
                "delivery", "feed", "daemon", "demo", "cli", "selftest", "quiet", "modelstore", "admission", "kiosk", "announce", "results"},
}
# inside the backend, one module per outside library
BACKEND_ONLY = {"paho": "mqtt.py", "psycopg": "store.py", "sqlite3": "store.py", "prometheus_client": "metrics.py"}


def _rooms() -> set[str]:
    """The rooms that exist: each module and each package of device/facegate/."""
    return {p.stem for p in PKG.glob("*.py") if p.stem != "__init__"} | {
        p.name for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").exists()}


def test_the_rules_name_only_rooms_that_exist():
    """A rule about a room that does not exist guards nothing (a typo or a room renamed)."""
    named = set(FORBIDDEN) | set().union(*FORBIDDEN.values())
    assert named <= _rooms(), sorted(named - _rooms())


def test_every_room_has_a_rule():
    assert _rooms() - set(FORBIDDEN) <= {"cli"}, sorted(_rooms() - set(FORBIDDEN))


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


def _room(path: Path) -> str:
    rel = path.relative_to(PKG)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def test_rooms_and_adapter_only_imports():
    problems = []
    for f in PKG.rglob("*.py"):
        room = _room(f)
        for mod, level in _imports(f):
            top = mod.split(".")[0]
            if level == 0 and top in ADAPTER_ONLY and room != "adapters" and not (room == "backend" and top == "paho"):
                problems.append(f"{f.relative_to(PKG)} imports {mod}")
            target = None
            if level:  # relative import inside the package
                parts = f.relative_to(PKG).parts
                base = parts[: len(parts) - level]
                target = (list(base) + mod.split("."))[0] if (base or mod) else None
            elif top == "facegate":
                target = mod.split(".")[1] if "." in mod else None
            if target and target in FORBIDDEN.get(room, set()):
                problems.append(f"{f.relative_to(PKG)} ({room}) imports {target}")
    assert not problems, problems


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
