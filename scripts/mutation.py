#!/usr/bin/env python3
"""Mutation testing of the modules that carry the contract's promises (issue 25), with
mutmut 3 (`pip install -e '.[mutation]'`). Not part of CI: it is long (minutes per module
on one core). Prints one line per module and the total:

    mutation: modules=outbox,signing mutants=412 killed=380 survived=32 score=92.2%

mutmut imports the mutated code from `mutants/src`, so the script builds a throw-away
copy of the package laid out that way (device/facegate -> src/facegate, models linked in,
tests, docs and README copied) in --work/MODULE, writes the [tool.mutmut] section there and
runs `mutmut run`, one module at a time; the repository itself is never touched. Each
module is checked against the tests named for it below (the ones that exercise it; the data
tests need ../shared/data). `--survivors` lists the surviving mutants; `mutmut show NAME`
in --work/MODULE shows one.

Score = killed / (killed + survived); timeouts count as killed (the mutant hung the test),
"no tests" mutants (code no selected test reaches) count as survived. A survivor judged
equivalent (no test can tell it from the original: it changes nothing the module promises)
is listed with its reason in scripts/mutation_equivalent.txt and counted as `equivalent`,
outside the score; a listed name that is no survivor any more (killed, or renumbered after
an edit of the module) is reported as stale."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EQUIVALENT = Path(__file__).with_name("mutation_equivalent.txt")

# module (under device/facegate) -> the tests that exercise it. Not the tests that parse the
# package's source (test_vocab, test_architecture): under mutmut every mutant is in the file.
TESTS: dict[str, list[str]] = {
    "outbox": ["tests/test_outbox.py", "tests/test_promises_outbox.py", "tests/test_admission.py"],
    "admission": ["tests/test_admission.py", "tests/test_promises_admission.py", "tests/test_promises_intake.py"],
    "signing": ["tests/test_signing.py", "tests/test_promises_signing.py", "tests/test_promises_keys.py"],
    "decide": ["tests/test_vision_pure.py", "tests/test_session.py", "tests/test_promises_decide.py"],
    "messages": ["tests/test_signing.py", "tests/test_admission.py", "tests/test_contract_doc.py",
                 "tests/test_promises_commands.py", "tests/test_promises_signing.py", "tests/test_promises_messages.py"],
    "delivery": ["tests/test_delivery_inprocess.py", "tests/test_promises_delivery.py"],  # not test_delivery.py: daemons
    "backend/trust": ["tests/test_promises_trust.py"],
    "backend/store": ["tests/test_backend.py"],
    "backend/worker": ["tests/test_backend.py"],
    "kat": ["tests/test_kat.py", "tests/test_kat_edges.py", "tests/test_promises_kat.py"],
}
# the contract room (issue 21) holds what messages.py and signing.py's COSE part held: the same
# tests, plus the room's own round trips and golden bytes
CONTRACT_TESTS = [*TESTS["messages"], "tests/test_contract.py", "tests/test_contract_golden.py", "tests/test_promises_contract.py",
                  "tests/test_promises_keys.py"]
for _m in ("command", "result", "telemetry", "cose", "attest", "topics"):
    TESTS[f"contract/{_m}"] = CONTRACT_TESTS
DEFAULT = ["outbox", "admission", "signing", "decide", "contract/command", "contract/result", "contract/telemetry",
           "contract/cose", "delivery", "kat", "backend/trust"]
KILLED = {1, 3, 24, -24, 36, 152, 255}  # failed, pytest internal error, timeouts
SURVIVED = {0, 5, 33}  # passed, or no test reached it


def build(work: Path, modules: list[str], extra_pytest: list[str]) -> None:
    if work.exists():
        shutil.rmtree(work)
    (work / "src").mkdir(parents=True)
    shutil.copytree(REPO / "device" / "facegate", work / "src" / "facegate",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (work / "src" / "facegate" / "models").symlink_to(REPO / "models")
    for name in ("tests", "docs", "scripts"):
        shutil.copytree(REPO / name, work / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(REPO / "README.md", work / "README.md")
    tests = sorted({t for m in modules for t in TESTS[m]})
    lst = lambda xs: "[" + ", ".join(json.dumps(x) for x in xs) + "]"  # noqa: E731
    (work / "pyproject.toml").write_text(
        "[tool.pytest.ini_options]\ntestpaths = [\"tests\"]\naddopts = \"-q -p no:randomly\"\n\n"
        "[tool.mutmut]\nsource_paths = [\"src\"]\n"
        f"only_mutate = {lst([f'src/facegate/{m}.py' for m in modules])}\n"
        f"also_copy = {lst(['tests', 'docs', 'scripts', 'README.md'])}\n"
        f"tests_dir = {lst(tests)}\n"
        f"pytest_add_cli_args = {lst(extra_pytest)}\n")


def equivalents(path: Path) -> dict[str, str]:
    """mutant name -> why it is equivalent (one per line: `name  reason`, # comments)."""
    out: dict[str, str] = {}
    if path.exists():
        for raw in path.read_text().splitlines():
            text = raw.split("#", 1)[0].strip() if raw.lstrip().startswith("#") else raw.strip()
            if text:
                name, _, why = text.partition(" ")
                out[name] = why.strip()
    return out


def module_dir(work: Path, module: str) -> Path:
    """Each module is mutated in a scratch copy of its own, against its own tests."""
    return work / module.replace("/", "_")


def tally(work: Path, modules: list[str], equivalent: dict[str, str] | None = None) -> dict[str, dict[str, list[str]]]:
    out: dict[str, dict[str, list[str]]] = {}
    for m in modules:
        meta = module_dir(work, m) / "mutants" / "src" / "facegate" / f"{m}.py.meta"
        try:
            codes = json.loads(meta.read_text())["exit_code_by_key"]
        except (OSError, ValueError, KeyError):  # not written yet, or being written
            codes = {}
        t: dict[str, list[str]] = {"killed": [], "survived": [], "equivalent": [], "other": []}
        for name, code in codes.items():
            kind = "killed" if code in KILLED else "survived" if code in SURVIVED else "other"
            if kind == "survived" and name in (equivalent or {}):
                kind = "equivalent"
            t[kind].append(name)
        out[m] = t
    return out


def line(label: str, t: dict[str, list[str]]) -> str:
    k, s, e = len(t["killed"]), len(t["survived"]), len(t["equivalent"])
    score = f"{100 * k / (k + s):.1f}%" if k + s else "n/a"
    other = f" unchecked={len(t['other'])}" if t["other"] else ""
    return (f"mutation: modules={label} mutants={k + s + e + len(t['other'])} killed={k} survived={s} equivalent={e}"
            f"{other} score={score}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("modules", nargs="*", default=DEFAULT,
                    help=f"modules under device/facegate (known: {', '.join(TESTS)})")
    ap.add_argument("--work", type=Path, default=Path("/tmp/facegate-mutation"))
    ap.add_argument("--max-children", type=int, default=1, help="mutants tested at once (CPU cores)")
    ap.add_argument("--survivors", action="store_true", help="list the surviving mutants")
    ap.add_argument("--tally-only", action="store_true", help="count an earlier run in --work")
    ap.add_argument("--equivalent", type=Path, default=EQUIVALENT, help="the survivors judged equivalent")
    args = ap.parse_args()
    unknown = [m for m in args.modules if m not in TESTS]
    if unknown:
        ap.error(f"unknown module(s): {', '.join(unknown)}")
    if not args.tally_only:
        env = {**os.environ, "FACEGATE_SHARED": os.environ.get("FACEGATE_SHARED", str(REPO.parent / "shared"))}
        mutmut = Path(sys.executable).with_name("mutmut")
        for m in args.modules:  # one at a time, each with only its own tests: minutes, not hours
            work = module_dir(args.work, m)
            build(work, [m], [])
            run = subprocess.run([str(mutmut), "run", "--max-children", str(args.max_children)], cwd=work,
                                 env=env, stdout=subprocess.DEVNULL)
            if run.returncode not in (0, 1):
                print(f"mutation: mutmut run failed ({run.returncode}) in {work}", file=sys.stderr)
                return 2
    eq = equivalents(args.equivalent)
    per = tally(args.work, args.modules, eq)
    total: dict[str, list[str]] = {"killed": [], "survived": [], "equivalent": [], "other": []}
    for m, t in per.items():
        print(line(m, t))
        for key in total:
            total[key] += t[key]
        if args.survivors:
            for name in sorted(t["survived"]):
                print(f"  survived: {name}")
        prefix = "facegate." + m.replace("/", ".") + "."
        known = set(t["killed"]) | set(t["survived"]) | set(t["equivalent"]) | set(t["other"])
        stale = sorted(n for n in eq if n.startswith(prefix) and n not in t["equivalent"]) if known else []
        if stale:
            print(f"  stale equivalents ({m}): {', '.join(stale)}")
    print(line(",".join(args.modules), total))
    return 0


if __name__ == "__main__":
    sys.exit(main())
