"""Model manifest, fetch and verification on real files; delegation of the real models."""
import shutil

import pytest

from facegate import modelstore
from facegate.adapters.litert import LiteRTRunner
from facegate.errors import ModelError


def test_manifest_lists_every_task_with_hashes():
    m = modelstore.load_manifest()
    tasks = {e.task for e in m}
    assert {"detect_short", "detect_full", "mesh", "iris", "embed", "pad_v2", "pad_v1se"} <= tasks
    assert {e.variant for e in m if e.task == "embed"} == {"fp32", "dynint8", "int8"}
    for e in m:
        assert len(e.sha256) == 64 and e.size > 0, e.file
        assert e.source in ("wheel", "package", "mirror") and e.license and e.input and e.output


def test_fetch_is_idempotent_and_refuses_tampered_files(tmp_path, model_dir):
    mirror = tmp_path / "mirror"
    shutil.copytree(model_dir, mirror / "embedding", ignore=shutil.ignore_patterns(".cache"))
    entry = next(e for e in modelstore.load_manifest() if e.task == "embed" and e.variant == "fp32")
    # a mirror whose fp32 embedding file was altered by one byte
    f = mirror / entry.mirror_path
    data = bytearray(f.read_bytes())
    data[1000] ^= 0xFF
    f.write_bytes(bytes(data))
    manifest = [entry]
    dest = tmp_path / "models"
    res = modelstore.fetch(dest, mirror, manifest)
    assert res[0].status == "refused" and "sha256" in res[0].detail
    assert not (dest / entry.file).exists()
    # the intact file installs, and a second fetch finds it present
    shutil.copy(model_dir / entry.file, f)
    assert modelstore.fetch(dest, mirror, manifest)[0].status == "installed"
    assert modelstore.fetch(dest, mirror, manifest)[0].status == "present"


def test_a_model_changed_on_disk_is_refused_at_load(tmp_path, model_dir):
    for e in modelstore.load_manifest():
        if e.task == "mesh":
            shutil.copy(model_dir / e.file, tmp_path / e.file)
            store = modelstore.ModelStore(tmp_path)
            assert store.path("mesh", "fp32")[0].exists()
            with open(tmp_path / e.file, "r+b") as fh:
                fh.seek(5000)
                fh.write(b"\0\0\0\0")
            with pytest.raises(ModelError, match="changed on disk"):
                modelstore.ModelStore(tmp_path).path("mesh", "fp32")
            assert modelstore.verify(tmp_path, [e])[0].status == "tampered"


def test_missing_model_says_how_to_install(tmp_path):
    with pytest.raises(ModelError, match="models fetch"):
        modelstore.ModelStore(tmp_path).path("embed", "fp32")


def test_installed_models_run_fully_inside_xnnpack(model_dir):
    """Every model a device loads by default runs with 0 nodes outside the delegate."""
    store = modelstore.ModelStore(model_dir)
    report = {}
    for e in store.manifest:
        if (model_dir / e.file).is_file() and e.variant in ("fp32", "int8"):
            report[e.file] = LiteRTRunner(model_dir / e.file).delegate_report()
    assert report
    for name, r in report.items():
        assert r.undelegated == 0 and r.partitions == 1, (name, r)


def test_optional_variants_need_all(tmp_path, model_dir):
    entry = next(e for e in modelstore.load_manifest() if e.optional)
    mirror = tmp_path / "mirror"
    (mirror / entry.mirror_path).parent.mkdir(parents=True)
    (mirror / entry.mirror_path).write_bytes(b"not the model")
    assert modelstore.fetch(tmp_path / "m", mirror, [entry]) == []
    res = modelstore.fetch(tmp_path / "m", mirror, [entry], include_optional=True)
    assert res[0].status == "refused"


def test_manifest_and_converted_models_come_from_the_package_resources():
    """The runtime reads the manifest and the project's models as package data of
    facegate.models (importlib.resources), in a checkout and in an installed wheel alike."""
    text = modelstore.resource("manifest.toml").read_text()
    assert "[[model]]" in text
    shipped = [e for e in modelstore.load_manifest() if e.source == "package"]
    assert {e.task for e in shipped} >= {"embed", "pad_v2", "pad_v1se"}
    for e in shipped:
        res = modelstore.resource(e.resource)
        assert res.is_file(), e.resource
        assert modelstore.sha256_bytes(res.read_bytes()) == e.sha256, e.resource


def test_fetch_installs_the_packaged_models_without_a_mirror(tmp_path):
    shipped = [e for e in modelstore.load_manifest() if e.source == "package"]
    res = modelstore.fetch(tmp_path, None, shipped)
    assert [r.status for r in res] == ["installed"] * len(shipped), [r.detail for r in res]
    assert all("package facegate.models/" in r.detail for r in res)


def test_no_runtime_code_locates_files_by_its_own_source_path():
    """No module of the package finds data relative to its own file (`__file__`,
    `.parents[...]`): an installed package has no checkout around it."""
    import ast
    from pathlib import Path

    pkg = Path(modelstore.__file__).resolve().parent
    offenders = []
    for path in sorted(pkg.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Name) and node.id == "__file__":
                offenders.append(f"{path.relative_to(pkg)}:{node.lineno}")
    assert not offenders, offenders


def test_pyproject_lists_every_subpackage():
    """pyproject.toml names its packages explicitly (facegate.models lives in models/):
    a new subpackage missing from the list would be absent from the wheel."""
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    st = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(st["packages"])
    on_disk = {".".join(p.parent.relative_to(root / "device").parts)
               for p in (root / "device" / "facegate").rglob("__init__.py")}
    # data folders are listed as packages too (else setuptools warns), each with its package-data
    data = {n for n in listed if n.startswith(("facegate.models.", "facegate.screen.static"))}
    assert data <= set(st["package-data"]), sorted(data - set(st["package-data"]))
    assert listed - data == on_disk | {"facegate.models"}
