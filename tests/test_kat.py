"""Known-answer self-tests (facegate.kat): every installed model passes on this machine with
the real runtime; a runner that returns garbage (a constant, random numbers, NaN) is refused
with a one-line reason, "auto" falls back to the next variant that passes, and when no
variant of a required task passes, verify and the daemon exit 2 and selftest fails."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from facegate import cli, kat, modelstore, status
from facegate import config as config_mod
from facegate.adapters import litert
from facegate.errors import ModelError
from facegate.pipeline import Verifier, build_passive
from facegate.vocab import RunningMode


class GarbageRunner:
    """An explicit fake Runner: the real model's tensor specs, garbage outputs.
    mode: "constant" (the same numbers for every input: the qemu `max` failure), "random"
    or "nan"."""

    def __init__(self, real, mode: str, seed: int = 0):
        self.inputs, self.outputs, self.mode = real.inputs, real.outputs, mode
        self.rng = np.random.default_rng(seed)
        self.const = [np.random.default_rng(seed).standard_normal(o.shape).astype(np.float32) for o in real.outputs]

    def run(self, *arrays):
        if self.mode == "constant":
            return [c.copy() for c in self.const]
        if self.mode == "nan":
            return [np.full(o.shape, np.nan, np.float32) for o in self.outputs]
        return [self.rng.standard_normal(o.shape).astype(np.float32) * 10 for o in self.outputs]

    def delegate_report(self):
        raise NotImplementedError


def garbage_for(files: set[str], mode: str = "constant"):
    """A RunnerFactory: garbage for the named model files, the real runtime for the others."""
    def make(path, num_threads):
        real = litert.make_runner(path, num_threads)
        return GarbageRunner(real, mode) if path.name in files else real
    return make


def _entry(store, task, variant):
    return next(e for e in store.variants(task) if e.variant == variant)


def test_every_installed_variant_passes_here(model_dir):
    store = modelstore.ModelStore(model_dir)
    tested = []
    for e in store.manifest:
        if not (model_dir / e.file).is_file():
            continue
        r = kat.check(e.task, litert.make_runner(model_dir / e.file, 1), e)
        assert r.ok, (e.file, r.detail)
        tested.append(e.task)
    assert set(modelstore.REQUIRED_TASKS) <= set(tested)


def test_every_manifest_model_has_known_answers():
    _, answers = kat.shipped()
    for e in modelstore.load_manifest():
        assert e.sha256 in answers, f"{e.file}: run scripts/record_kat.py"
        assert answers[e.sha256]["task"] == e.task


@pytest.mark.parametrize("task,variant", [("detect_short", "fp32"), ("detect_full", "fp32"), ("mesh", "fp32"),
                                          ("iris", "fp32"), ("embed", "int8"), ("embed", "fp32"),
                                          ("pad_v2", "int8"), ("pad_v1se", "fp32")])
@pytest.mark.parametrize("mode", ["constant", "random", "nan"])
def test_garbage_is_refused_with_one_line_reason(model_dir, task, variant, mode):
    store = modelstore.ModelStore(model_dir)
    e = _entry(store, task, variant)
    r = kat.check(task, GarbageRunner(litert.make_runner(model_dir / e.file, 1), mode), e)
    assert not r.ok
    assert r.detail and "\n" not in r.detail and "unusable" not in r.detail, r.detail
    if mode == "nan":
        assert "non-finite" in r.detail
    if mode == "constant" and task.startswith("pad"):  # what the int8 MiniFASNets do at qemu's `max` core
        assert r.detail.startswith("outputs barely depend on the input"), r.detail


def test_a_constant_embedding_is_caught_as_collapse(model_dir):
    """The qemu `max` failure: every input gives the same vector, whatever it is."""
    store = modelstore.ModelStore(model_dir)
    e = _entry(store, "embed", "int8")
    ins, answers = kat.shipped()
    face = answers[e.sha256]["outputs"]["face"]

    class SameVector(GarbageRunner):  # the one right answer, for every input
        def run(self, *arrays):
            return [np.float32(face).reshape(o.shape) for o in self.outputs]

    r = kat.check("embed", SameVector(litert.make_runner(model_dir / e.file, 1), "constant"), e)
    assert not r.ok and "distinct inputs collapse" in r.detail, r.detail


def test_a_model_without_known_answers_is_refused(model_dir):
    store = modelstore.ModelStore(model_dir)
    e = _entry(store, "mesh", "fp32")
    r = kat.check("mesh", litert.make_runner(model_dir / e.file, 1), dataclasses.replace(e, sha256="0" * 64))
    assert not r.ok and "no known answers recorded" in r.detail


def test_auto_falls_back_to_the_next_variant_that_passes(model_dir, lfw):
    from facegate.imageio import read_image

    store = modelstore.ModelStore(model_dir)
    cfg = config_mod.Config()
    v = Verifier.from_store(store, cfg, garbage_for({"sface_int8.tflite"}))
    c = v.chosen["embed"]
    assert c.entry.variant == "fp32" and c.precision == "auto"
    assert len(c.refused) == 1 and c.refused[0].startswith("int8 refused: distinct inputs collapse"), c.refused
    assert "int8 refused" in c.why and "fp32" in c.why
    assert v.models["embed"] == c.entry.sha256
    # the fallback verifies for real: same person matches, different people do not
    a, b = (read_image(lfw / "Aaron_Sorkin" / f"Aaron_Sorkin_000{i}.jpg") for i in (1, 2))
    stranger = read_image(lfw / "Akhmed_Zakayev" / "Akhmed_Zakayev_0001.jpg")
    assert v.verify(a, b, RunningMode.IMAGE)[0].decision == "match"
    assert v.verify(a, stranger, RunningMode.IMAGE)[0].decision == "no_match"
    # PAD: int8 garbage, fp32 real
    _, chosen = build_passive(store, cfg, garbage_for({"minifasnet_v2_s2.7_int8.tflite"}, "random"))
    assert chosen["pad_v2"].entry.variant == "fp32"
    assert chosen["pad_v1se"].entry.variant == "int8" and not chosen["pad_v1se"].refused


def test_an_explicit_precision_that_fails_is_refused(model_dir):
    cfg = config_mod.Config(models={"precision": "int8"})
    with pytest.raises(ModelError, match=r"no embed model passes its known-answer self-test.*int8 refused"):
        Verifier.from_store(modelstore.ModelStore(model_dir), cfg, garbage_for({"sface_int8.tflite"}))


ALL_EMBED = {"sface_int8.tflite", "sface_fp32.tflite", "sface_dynint8.tflite"}


@pytest.fixture
def all_embed_garbage(monkeypatch):
    """Every embedding variant returns a constant, through the adapter the CLI uses."""
    real = litert.make_runner

    def make(path, num_threads):
        r = real(path, num_threads)
        return GarbageRunner(r, "constant") if path.name in ALL_EMBED else r
    monkeypatch.setattr(litert, "make_runner", make)


def test_verify_exits_2_when_no_embedding_passes(model_dir, lfw, all_embed_garbage, capsys):
    a = lfw / "Aaron_Sorkin" / "Aaron_Sorkin_0001.jpg"
    stranger = lfw / "Akhmed_Zakayev" / "Akhmed_Zakayev_0001.jpg"
    assert cli.main(["verify", "--reference", str(a), "--probe", str(stranger)]) == 2
    err = capsys.readouterr().err
    assert "no embed model passes its known-answer self-test" in err
    assert "int8 refused" in err and "fp32 refused" in err


def test_daemon_refuses_to_start_when_no_embedding_passes(tmp_path, model_dir, all_embed_garbage, capsys):
    conf = tmp_path / "facegate.toml"
    conf.write_text(f'[daemon]\nstate_dir = "{tmp_path}"\n[mqtt]\nenabled = false\n')
    assert cli.main(["run", "--config", str(conf)]) == 2
    assert "no embed model passes its known-answer self-test" in capsys.readouterr().err
    assert not (tmp_path / "status.json").exists()


def test_selftest_fails_the_embed_line(tmp_path, model_dir, all_embed_garbage, capsys):
    conf = tmp_path / "facegate.toml"
    conf.write_text(f'[daemon]\nstate_dir = "{tmp_path}"\nliveness = "none"\n[mqtt]\nenabled = false\n')
    assert cli.main(["selftest", "--config", str(conf), "--json"]) == 1
    checks = {c["name"]: c for c in json.loads(capsys.readouterr().out)["checks"]}
    assert not checks["model embed"]["ok"]
    assert "no embed model passes its known-answer self-test" in checks["model embed"]["detail"]
    assert checks["model mesh"]["ok"] and "known answers" in checks["model mesh"]["detail"]


def test_status_says_which_variant_and_why(tmp_path, model_dir, faces, monkeypatch, capsys):
    """The daemon built with the int8 SFace computing garbage runs on fp32 and says so in
    its status file and in `facegate status`."""
    from facegate import daemon as daemon_mod

    real = litert.make_runner
    monkeypatch.setattr(litert, "make_runner",
                        lambda path, n: GarbageRunner(real(path, n), "constant") if path.name == "sface_int8.tflite"
                        else real(path, n))
    conf = tmp_path / "facegate.toml"
    conf.write_text(f'[camera]\nsource = "file"\npath = "{faces["video"]}"\n'
                    f'[daemon]\nstate_dir = "{tmp_path}"\nliveness = "passive"\n[mqtt]\nenabled = false\n')
    d = daemon_mod.build(config_mod.load(conf))
    d._write_status()
    doc = status.read(tmp_path)
    sel = doc["model_selftest"]
    assert set(sel) == {"detect_short", "detect_full", "mesh", "embed", "pad_v2", "pad_v1se"}
    assert sel["embed"]["variant"] == "fp32" and sel["embed"]["refused"][0].startswith("int8 refused: distinct")
    assert doc["models"]["embed"] == sel["embed"]["sha256"]
    assert sel["pad_v2"]["variant"] == "int8" and sel["pad_v2"]["kat_ms"] > 0
    assert cli.main(["status", "--config", str(conf)]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("selftest"))
    assert "embed=fp32 passed" in line and "ms; int8 refused: distinct inputs collapse" in line
    d.outbox.close()


def test_the_plan_names_what_is_loaded_by_the_self_tests_choice(model_dir, tmp_path):
    """pipeline.model_plan is the one list of models a configuration loads; loaded_models
    names them by the sha256 of the variant the self-tests chose (a garbage int8 SFace: fp32)."""
    from facegate.pipeline import build_liveness, loaded_models, model_plan

    cfg = config_mod.Config(models={"dir": str(model_dir)}, daemon={"liveness": "both"})
    store = modelstore.ModelStore(model_dir)
    runner = garbage_for({"sface_int8.tflite"})
    v = Verifier.from_store(store, cfg, runner)
    plan = build_liveness(store, cfg, runner, "both")
    assert plan is not None
    models = loaded_models({**v.chosen, **plan.chosen})
    assert list(models) == list(model_plan(cfg, "both"))
    assert models["embed"] == _entry(store, "embed", "fp32").sha256
    assert models["iris"] == _entry(store, "iris", "fp32").sha256
    assert set(model_plan(cfg, "none")) == {"detect_short", "detect_full", "mesh", "embed"}
