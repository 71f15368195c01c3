"""Host-side helpers of scripts/arm64-check.sh (run with the host's python3, stdlib only).

  arm64_check.py pairs LFW_DIR N OUT             write N LFW pairs (half same, half different
                                                  person, spread over pairs.txt) as
                                                  REFERENCE<TAB>PROBE lines
  arm64_check.py snapshot ROOT OUT PATH...       list every file under ROOT/PATH (type, mode,
                                                  owner, sha256 or link target) as JSON
  arm64_check.py same-tree A B                   exit 1 and print the differences unless the
                                                  two snapshots are equal
  arm64_check.py leftovers ROOT BEFORE AFTER     exit 1 and print what AFTER has beyond BEFORE
                                                  that no installed Debian package owns
  arm64_check.py compare-pairs CPU X86 ARM RC MODE
                                                  compare `facegate verify --pairs` outputs (ARM
                                                  exited RC): MODE "equal": every decision and the
                                                  model variant as on x86, similarity within 0.03;
                                                  MODE "equal-or-refused": the same decisions (any
                                                  variant), or a refusal (exit 2, no output); never
                                                  a match of two different people. Prints one line.
  arm64_check.py demo-result FILE                 `facegate demo --json`: one verified signed match
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import sys
from pathlib import Path

SIMILARITY_TOLERANCE = 0.03


def write_pairs(lfw: Path, n: int, out: Path) -> None:
    """pairs.txt (View 2): a header `folds n`, then per fold n same-person lines
    `Name i j` and n different-person lines `Name i Other j`. Takes every k-th of each kind
    so the pairs cover all folds; deterministic."""
    rows = [ln.split() for ln in (lfw / "pairs.txt").read_text().splitlines()[1:] if ln.strip()]
    same = [r for r in rows if len(r) == 3]
    diff = [r for r in rows if len(r) == 4]
    img = lambda name, i: lfw / "images" / name / f"{name}_{int(i):04d}.jpg"  # noqa: E731
    half = n // 2
    lines = []
    for k in range(half):
        s = same[k * len(same) // half]
        d = diff[k * len(diff) // (n - half)]
        lines.append(f"{img(s[0], s[1])}\t{img(s[0], s[2])}")
        lines.append(f"{img(d[0], d[1])}\t{img(d[2], d[3])}")
    for k in range(half, n - half):  # n odd: one more different pair
        d = diff[k * len(diff) // (n - half)]
        lines.append(f"{img(d[0], d[1])}\t{img(d[2], d[3])}")
    for line in lines:
        for p in line.split("\t"):
            if not Path(p).is_file():
                raise SystemExit(f"arm64_check: {p} (from {lfw / 'pairs.txt'}) does not exist")
    out.write_text("".join(x + "\n" for x in lines))


def _entry(path: Path) -> dict:
    st = path.lstat()
    e = {"mode": oct(stat.S_IMODE(st.st_mode)), "uid": st.st_uid, "gid": st.st_gid}
    if stat.S_ISLNK(st.st_mode):
        e["link"] = os.readlink(path)
    elif stat.S_ISDIR(st.st_mode):
        e["type"] = "dir"
    elif stat.S_ISREG(st.st_mode):
        h = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        e["sha256"] = h.hexdigest()
    else:
        e["type"] = "special"
    return e


def _mount_points() -> set[str]:
    """Every mount point of this mount namespace (a bind mount of a directory of the same
    file system has the same st_dev, so the device number cannot tell them)."""
    out = set()
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")  # \040 for a space
        out.add(os.path.normpath(point))
    return out


def snapshot(root: Path, paths: list[str]) -> dict:
    """Every file, directory and link under root/path, not descending into mount points
    (/proc, the bind-mounted data, caches), keyed by its path inside root."""
    mounts = _mount_points()
    out = {}
    for rel in paths:
        top = root / rel.lstrip("/")
        if not os.path.lexists(top) or os.path.normpath(top) in mounts:
            continue
        out["/" + rel.lstrip("/")] = _entry(top)
        if not top.is_dir() or top.is_symlink():
            continue
        for dirpath, dirnames, filenames in os.walk(top):
            keep = []
            for d in sorted(dirnames):
                p = Path(dirpath) / d
                if os.path.normpath(p) in mounts:
                    continue
                keep.append(d)
                out["/" + str(p.relative_to(root))] = _entry(p)
            dirnames[:] = keep
            for f in sorted(filenames):
                p = Path(dirpath) / f
                out["/" + str(p.relative_to(root))] = _entry(p)
    return out


def _differences(a: dict, b: dict) -> list[str]:
    lines = [f"  gone     {p}" for p in sorted(a.keys() - b.keys())]
    lines += [f"  new      {p}" for p in sorted(b.keys() - a.keys())]
    lines += [f"  changed  {p}: {a[p]} -> {b[p]}" for p in sorted(a.keys() & b.keys()) if a[p] != b[p]]
    return lines


# Files that the system itself rewrites when install.sh uses apt and the account tools: the
# dynamic linker's cache (ldconfig runs after apt installs libraries) and the shadow tools'
# backups of the account files (the account files themselves are compared exactly).
SYSTEM_REWRITTEN = {"/etc/ld.so.cache", "/etc/passwd-", "/etc/group-", "/etc/shadow-", "/etc/gshadow-"}
MERGED_USR = ("/bin/", "/sbin/", "/lib/", "/lib64/")  # symlinks into /usr in a bookworm root


def dpkg_owned(root: Path) -> set[str]:
    """The paths installed Debian packages own (their dpkg .list files), also under /usr
    for the merged-/usr links the walk goes through."""
    owned = set()
    for lst in (root / "var/lib/dpkg/info").glob("*.list"):
        for x in lst.read_text(errors="replace").splitlines():
            if x:
                owned.add(x)
                if x.startswith(MERGED_USR):
                    owned.add("/usr" + x)
    return owned


def maintainer_script_text(root: Path) -> str:
    """All installed packages' maintainer scripts: paths they create (python3's
    /etc/python3/debian_config, python3.11-minimal's /usr/local/lib/python3.11/...) are
    named there."""
    info = root / "var/lib/dpkg/info"
    return "\n".join(f.read_text(errors="replace") for ext in ("preinst", "postinst")
                     for f in info.glob(f"*.{ext}"))


def _package_made(path: str, owned: set[str], scripts: str) -> bool:
    """A file a Debian package owns or made when it was installed: the byte code that
    py3compile writes beside a packaged module (D/__pycache__/m.cpython-311.pyc for D/m.py,
    and D/__pycache__ itself), what a maintainer script names, or a directory holding that."""
    if path in owned or path in SYSTEM_REWRITTEN:
        return True
    p = Path(path)
    if p.name == "__pycache__":
        return str(p.parent) in owned
    if p.parent.name == "__pycache__":
        return str(p.parent.parent / (p.name.split(".", 1)[0] + ".py")) in owned
    return _named_in(path, scripts)


def _named_in(path: str, scripts: str) -> bool:
    """path, or a path below it, appears in the maintainer scripts (not as a prefix of
    another name: /etc/python3 is named by /etc/python3/debian_config, not by /etc/python3.11)."""
    return re.search(re.escape(path) + r"(?=[/\s\"';]|$)", scripts, re.M) is not None


def leftovers(root: Path, before: dict, after: dict) -> list[str]:
    """What `after` has that `before` had not (or changed), minus what a Debian package
    installed since owns (apt's packages stay on uninstall, by design)."""
    owned, scripts = dpkg_owned(root), maintainer_script_text(root)
    out = []
    for line in _differences(before, after):
        path = line.split(None, 1)[1].split(":", 1)[0]
        if line.lstrip().startswith(("new", "changed")) and _package_made(path, owned, scripts):
            continue
        out.append(line)
    return out


def _json_lines(path: Path) -> list[dict]:
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except ValueError:
                raise SystemExit(f"FAIL {path} line {n} is not JSON: {line[:80]!r}") from None
    return out


def compare_pairs(cpu: str, x86: Path, arm: Path, rc: str, mode: str) -> bool:
    """One summary line on stdout, details on stderr; True when the arm run is acceptable.
    The arm run may answer fewer pairs than x86 (the first ones of the same file)."""
    ref, got = _json_lines(x86), _json_lines(arm)
    if not got and rc == "2" and mode == "equal-or-refused":
        print(f"{cpu}: refused by the models' self-test (exit 2), no decision made: allowed at this core")
        return True
    if rc != "0" or not got:
        print(f"{cpu}: FAIL exit {rc}, {len(got)} pair(s) answered")
        return False
    ref = ref[:len(got)]
    bad, worst, false_match = [], 0.0, 0
    for r, g in zip(ref, got):
        if (r["reference"], r["probe"]) != (g["reference"], g["probe"]):
            bad.append(f"pair order differs: {r['probe']} vs {g['probe']}")
            continue
        different_person = Path(r["reference"]).parent.name != Path(r["probe"]).parent.name
        if different_person and g["decision"] == "match":
            false_match += 1
        # the 0.03 bound holds for the same model variant; another one (the self-test
        # refused int8 here) must still give the same decision
        same_variant = r.get("precision") == g.get("precision")
        if g["decision"] != r["decision"]:
            bad.append(f"{r['reference']} / {r['probe']}: {g['decision']} (x86 {r['decision']}), "
                       f"similarity {g['similarity']} (x86 {r['similarity']})")
        elif (r["similarity"] is None) != (g["similarity"] is None):
            bad.append(f"{r['probe']}: similarity {g['similarity']} (x86 {r['similarity']})")
        elif r["similarity"] is not None:
            delta = abs(r["similarity"] - g["similarity"])
            worst = max(worst, delta)
            if same_variant and delta > SIMILARITY_TOLERANCE:
                bad.append(f"{r['probe']}: similarity {g['similarity']} vs x86 {r['similarity']} "
                           f"(more than {SIMILARITY_TOLERANCE} apart)")
    for line in bad:
        print(f"  {cpu}: {line}", file=sys.stderr)
    n_same = sum(Path(r["reference"]).parent.name == Path(r["probe"]).parent.name for r in ref)
    variants = lambda rows: ",".join(sorted({x.get("precision") or "-" for x in rows}))  # noqa: E731
    ok = not bad and not false_match and (mode != "equal" or variants(got) == variants(ref))
    print(f"{cpu}: {len(ref) - len(bad)}/{len(ref)} pairs decided as on x86 ({n_same} same, "
          f"{len(ref) - n_same} different person), max |similarity - x86| {worst:.4f}, embed "
          f"{variants(got)} (x86 {variants(ref)}), false matches {false_match}")
    return ok


def demo_result(path: Path) -> bool:
    """`facegate demo --json` output: exactly one session, its signature verified by the
    demo, decided match; one line about it."""
    runs = _json_lines(path)
    if len(runs) != 1 or not runs[0].get("verified") or runs[0]["payload"].get("decision") != "match":
        print(f"expected one verified signed match, got {runs}")
        return False
    r = runs[0]
    print(f"decision {r['payload']['decision']}, seq {r['payload']['seq']}, {len(bytes.fromhex(r['message']))} "
          f"bytes COSE_Sign1 for {r['topic']}, signature verified (kid {r['kid']})")
    return True


def main(argv: list[str]) -> int:
    cmd, args = argv[0], argv[1:]
    if cmd == "pairs":
        write_pairs(Path(args[0]), int(args[1]), Path(args[2]))
    elif cmd == "snapshot":
        Path(args[1]).write_text(json.dumps(snapshot(Path(args[0]), args[2:]), indent=0, sort_keys=True))
    elif cmd == "same-tree":
        diff = _differences(*(json.loads(Path(p).read_text()) for p in args))
        print("\n".join(diff) if diff else "  no differences")
        return 1 if diff else 0
    elif cmd == "leftovers":
        left = leftovers(Path(args[0]), *(json.loads(Path(p).read_text()) for p in args[1:]))
        print("\n".join(left) if left else "  nothing left behind")
        return 1 if left else 0
    elif cmd == "compare-pairs":
        return 0 if compare_pairs(args[0], Path(args[1]), Path(args[2]), args[3], args[4]) else 1
    elif cmd == "demo-result":
        return 0 if demo_result(Path(args[0])) else 1
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
