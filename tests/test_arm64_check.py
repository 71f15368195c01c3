"""scripts/arm64-check.sh's judgements (scripts/arm64_check.py): what counts as "decided as
on x86", a refusal, a false match, and a file left behind by --uninstall --purge. The
emulated run itself is .ci/run's (minutes under qemu); these check its rules, fast."""
from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("arm64_check", REPO / "scripts" / "arm64_check.py")
arm64_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(arm64_check)

SAME = ("/lfw/Ann/Ann_0001.jpg", "/lfw/Ann/Ann_0002.jpg")
DIFF = ("/lfw/Ann/Ann_0001.jpg", "/lfw/Bob/Bob_0001.jpg")


def _rows(path: Path, *rows: tuple) -> Path:
    path.write_text("".join(json.dumps({"reference": r[0], "probe": r[1], "decision": d, "similarity": s,
                                        "precision": prec}) + "\n" for r, d, s, prec in rows))
    return path


@pytest.fixture
def x86(tmp_path):
    return _rows(tmp_path / "x86.jsonl", (SAME, "match", 0.70, "int8"), (DIFF, "no_match", 0.10, "int8"))


def test_pairs_decided_as_on_x86_pass(tmp_path, x86, capsys):
    arm = _rows(tmp_path / "arm.jsonl", (SAME, "match", 0.72, "int8"), (DIFF, "no_match", 0.08, "int8"))
    assert arm64_check.compare_pairs("cortex-a76", x86, arm, "0", "equal")
    assert "2/2 pairs decided as on x86" in capsys.readouterr().out


@pytest.mark.parametrize("rows,why", [
    (((SAME, "no_match", 0.30, "int8"), (DIFF, "no_match", 0.10, "int8")), "a decision differs"),
    (((SAME, "match", 0.75, "int8"), (DIFF, "no_match", 0.10, "int8")), "similarity 0.05 from x86's"),
    (((SAME, "match", 0.70, "fp32"), (DIFF, "no_match", 0.10, "fp32")), "another variant than x86 at a Pi core"),
])
def test_pairs_not_as_on_x86_fail_at_a_pi_core(tmp_path, x86, rows, why):
    arm = _rows(tmp_path / "arm.jsonl", *rows)
    assert not arm64_check.compare_pairs("cortex-a76", x86, arm, "0", "equal"), why


def test_at_max_another_variant_may_differ_in_similarity_but_not_in_decision(tmp_path, x86):
    arm = _rows(tmp_path / "arm.jsonl", (SAME, "match", 0.75, "fp32"), (DIFF, "no_match", 0.05, "fp32"))
    assert arm64_check.compare_pairs("max", x86, arm, "0", "equal-or-refused")
    arm = _rows(tmp_path / "arm.jsonl", (SAME, "match", 1.0, "int8"), (DIFF, "match", 1.0, "int8"))
    assert not arm64_check.compare_pairs("max", x86, arm, "0", "equal-or-refused")  # the false match


def test_a_refusal_is_allowed_only_at_max(tmp_path, x86):
    empty = tmp_path / "arm.jsonl"
    empty.write_text("")
    assert arm64_check.compare_pairs("max", x86, empty, "2", "equal-or-refused")
    assert not arm64_check.compare_pairs("cortex-a72", x86, empty, "2", "equal")
    assert not arm64_check.compare_pairs("max", x86, empty, "1", "equal-or-refused")  # a crash is no refusal


def test_a_truncated_output_line_fails_with_one_line(tmp_path, x86):
    arm = _rows(tmp_path / "arm.jsonl", (SAME, "match", 0.72, "int8"))
    arm.write_text(arm.read_text() + '{"reference": "/lfw/Ann')
    with pytest.raises(SystemExit, match="line 2 is not JSON"):
        arm64_check.compare_pairs("cortex-a76", x86, arm, "0", "equal")


def test_purge_leftovers_are_what_no_package_made(tmp_path):
    root = tmp_path / "root"
    info = root / "var/lib/dpkg/info"
    info.mkdir(parents=True)
    (info / "libfoo1:arm64.list").write_text("/.\n/lib\n/lib/aarch64-linux-gnu/libfoo.so.1\n/usr/lib/python3.11\n"
                                             "/usr/lib/python3.11/json.py\n")
    (info / "python3.postinst").write_text("cat > /etc/python3/debian_config <<EOF\n")
    before = {"/etc": {"type": "dir"}}
    after = dict(before)
    made_by_apt = ["/usr/lib/aarch64-linux-gnu/libfoo.so.1", "/etc/python3", "/etc/python3/debian_config",
                   "/usr/lib/python3.11/__pycache__", "/usr/lib/python3.11/__pycache__/json.cpython-311.pyc",
                   "/etc/ld.so.cache", "/etc/passwd-"]
    left_by_facegate = ["/etc/facegate", "/etc/facegate/facegate.toml", "/etc/python3.11-facegate",
                        "/usr/lib/python3.11/__pycache__/facegate.cpython-311.pyc"]
    for p in made_by_apt + left_by_facegate:
        after[p] = {"sha256": "x"}
    left = arm64_check.leftovers(root, before, after)
    assert sorted(line.split()[1] for line in left) == sorted(left_by_facegate)
    assert arm64_check.leftovers(root, before, before) == []


def test_arm64_check_sh_is_shellcheck_clean():
    exe = shutil.which("shellcheck")
    if exe is None:
        pytest.fail("shellcheck is not installed (scripts/dev.sh installs it)")
    # -x: follows the sourced scripts/lib/root.sh (shared with scripts/vm-check.sh)
    r = subprocess.run([exe, "-x", str(REPO / "scripts" / "arm64-check.sh")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout
