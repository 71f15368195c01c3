"""The match policy: the threshold in force comes from the calibration table of the embedding
model actually loaded, is named by its false-match rate, and an override is never silent."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from daemon_helpers import command, independent_verify
from facegate import config as config_mod
from facegate import daemon as daemon_mod
from facegate import policy
from facegate.adapters.fake_mqtt import FakePublisher
from facegate.config import VerifyConfig
from facegate.errors import ModelError
from facegate.imageio import decode_image
from facegate.modelstore import load_manifest
from facegate.vision.embed import Embedder
from facegate.vision.portrait import CHIP_SIZE, chip_portrait, jpeg_under

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import calibrate  # noqa: E402

EMBED = {e.variant: e.sha256 for e in load_manifest() if e.task == "embed"}
M = Embedder.METHOD


def test_the_shipped_table_calibrates_both_default_embedding_variants_with_enough_impostors():
    cal = policy.load_calibration()
    for variant in ("int8", "fp32"):
        row = cal.rows[EMBED[variant]]
        assert row.variant == variant and row.method == calibrate.POLICY_METHOD
        assert row.impostor_pairs > 10_000_000
        fmrs = [p.fmr for p in row.points]
        assert 1e-3 in fmrs and 1e-4 in fmrs and fmrs == sorted(fmrs, reverse=True)
        for p in row.points:  # a point is offered only with >= 100 impostor matches behind it
            assert p.impostor_matches >= calibrate.MIN_MATCHES
            assert p.impostor_matches == int(p.fmr * row.impostor_pairs)
        ts = [p.threshold for p in row.points]
        assert ts == sorted(ts)  # a lower FMR never has a lower threshold


def test_each_variant_gets_its_own_threshold_at_the_default_target():
    cal = policy.load_calibration()
    got = {v: policy.resolve(VerifyConfig(), EMBED[v], M, cal) for v in ("int8", "fp32")}
    for v, pol in got.items():
        point = next(p for p in cal.rows[EMBED[v]].points if p.fmr == 1e-4)
        assert pol.threshold == point.threshold and pol.target_fmr == 1e-4 and pol.variant == v
        assert not pol.overridden and pol.tag() == f"fmr=1e-04 table={cal.version} {v}"
    assert got["int8"].threshold != got["fp32"].threshold


def test_a_target_between_two_points_takes_the_stricter_one():
    cal = policy.load_calibration()
    row = cal.rows[EMBED["int8"]]
    pol = policy.resolve(VerifyConfig(target_fmr=2e-4), EMBED["int8"], M, cal)
    p1e4 = next(p for p in row.points if p.fmr == 1e-4)
    assert pol.point_fmr == 1e-4 and pol.threshold == p1e4.threshold and "table point 1e-04" in pol.describe()


def test_a_target_below_what_the_table_supports_is_refused():
    cal = policy.load_calibration()
    lowest = cal.rows[EMBED["int8"]].points[-1].fmr
    with pytest.raises(ModelError, match="below the lowest false-match rate"):
        policy.resolve(VerifyConfig(target_fmr=lowest / 10), EMBED["int8"], M, cal)


def test_a_table_measured_with_another_comparison_method_is_refused():
    cal = policy.load_calibration()
    with pytest.raises(ModelError, match="measured with method"):
        policy.resolve(VerifyConfig(), EMBED["int8"], "plain" if M != "plain" else "flip", cal)


def test_mirrored_embedding_is_the_unit_mean_of_the_crop_and_its_mirror(verifier, lfw):
    from facegate.imageio import read_image

    face = verifier.analyze(read_image(lfw / "Abel_Pacheco" / "Abel_Pacheco_0001.jpg")).face
    a = verifier.embedder.embed(face.crop)
    b = verifier.embedder.embed(np.ascontiguousarray(face.crop[:, ::-1]))
    m = verifier.embedder.embed_mirrored(face.crop)
    assert np.allclose(m, (a + b) / np.linalg.norm(a + b), atol=1e-6) and np.allclose(face.embedding, m, atol=1e-6)
    assert 0.5 < float(a @ b) < 0.9999  # the mirror image is another view, not the same vector


def test_a_target_above_1e3_is_a_config_error(tmp_path):
    with pytest.raises(Exception, match="target_fmr"):
        config_mod.parse("[verify]\ntarget_fmr = 0.01\n")


def test_an_embedding_model_without_calibration_is_refused_with_one_line():
    with pytest.raises(ModelError) as exc:
        policy.resolve(VerifyConfig(), "ab" * 32, M, policy.load_calibration())
    assert "no calibrated match policy" in str(exc.value) and "\n" not in str(exc.value)
    # with a threshold of the operator's own it runs, and says so
    pol = policy.resolve(VerifyConfig(match_threshold=0.5), "ab" * 32, M, policy.load_calibration())
    assert pol.overridden and pol.threshold == 0.5 and "override" in pol.tag()


def test_the_cli_refuses_to_verify_with_an_uncalibrated_embedding(tmp_path, monkeypatch, lfw, capsys):
    """The loaded int8 model's row removed from the table: `verify` exits 2, one line."""
    from facegate.cli import main

    cal = policy.load_calibration()
    stripped = policy.Calibration(cal.version, cal.data, {})
    monkeypatch.setattr(policy, "load_calibration", lambda path=None: stripped)
    a = lfw / "Abel_Pacheco" / "Abel_Pacheco_0001.jpg"
    code = main(["verify", "--reference", str(a), "--probe", str(a)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "no calibrated match policy" in err[0], err


def test_verify_prints_the_threshold_in_force_and_why(lfw):
    a, b = lfw / "Abel_Pacheco" / "Abel_Pacheco_0001.jpg", lfw / "Abel_Pacheco" / "Abel_Pacheco_0004.jpg"
    out = subprocess.run([sys.executable, "-m", "facegate.cli", "verify", "--reference", str(a), "--probe", str(b)],
                         capture_output=True, text=True, timeout=120)
    doc = json.loads(out.stdout)
    assert out.returncode == 0 and doc["decision"] == "match"
    pol = policy.resolve(VerifyConfig(), EMBED[doc["precision"]], M)
    assert doc["threshold"] == pol.threshold and "false-match rate <= 1e-04" in doc["policy"]


def test_config_check_says_when_the_threshold_overrides_the_policy(tmp_path):
    cfg = tmp_path / "f.toml"
    cfg.write_text("[camera]\nsource = \"v4l2\"\n[verify]\nmatch_threshold = 0.4\n")
    out = subprocess.run([sys.executable, "-m", "facegate.cli", "config", "check", str(cfg)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "overrides the calibrated match policy" in out.stdout
    cfg.write_text("[camera]\nsource = \"v4l2\"\n[verify]\ntarget_fmr = 1e-5\n")
    out = subprocess.run([sys.executable, "-m", "facegate.cli", "config", "check", str(cfg)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "overrides" not in out.stdout


@pytest.mark.parametrize("override", [None, 0.5])
def test_status_and_every_result_name_the_policy(tmp_path, faces, backend_key, model_dir, override):
    verify = f"match_threshold = {override}" if override is not None else ""
    cfg = config_mod.parse(f'''
device_id = "pol-1"
[camera]
source = "file"
path = "{faces["video"]}"
realtime = false
[daemon]
state_dir = "{tmp_path}"
liveness = "none"
[verify]
fusion_frames = 2
{verify}
[mqtt]
enabled = true
trusted_keys = ["{backend_key.public.hex()}"]
''')
    root = "facegate/v1/pol-1"
    pub = FakePublisher()
    d = daemon_mod.build(cfg, publisher=pub)
    t = threading.Thread(target=d.run, daemon=True)
    t.start()
    try:
        pub.wait_for(lambda p: f"{root}/health" in p.retained, 30)
        msg, _ = command(backend_key, faces["ref"], topic=f"{root}/cmd/verify")
        assert pub.receive(f"{root}/cmd/verify", msg)
        pub.wait_for(lambda p: len(p.on(f"{root}/result")) >= 1, 60)
        result = independent_verify(pub.on(f"{root}/result")[0], d.key.public, f"{root}/result")
        doc = json.loads((tmp_path / "status.json").read_text())
    finally:
        d.request_stop()
        t.join(30)
    mp = doc["match_policy"]
    if override is None:
        assert not mp["overridden"] and mp["target_fmr"] == 1e-4 and result["policy"].startswith("fmr=1e-04 table=")
        assert mp["threshold"] == policy.resolve(VerifyConfig(), d.models["embed"], M).threshold
    else:
        assert mp["overridden"] and mp["threshold"] == 0.5 and "verify.match_threshold" in mp["why"]
        assert result["policy"].startswith("threshold=0.5000 override h=")
    assert result["decision"] == "match"


# -- the calibration's own arithmetic and its references ----------------------------------------
def test_the_threshold_admits_at_most_fmr_times_n_impostors():
    rng = np.random.default_rng(1)
    top = np.sort(rng.normal(0, 0.1, 200_000).astype(np.float32))[::-1]
    c = calibrate.Curve(impostors=len(top), genuines=3, top=top, genuine=np.array([0.9, 0.5, -np.inf]))
    for fmr in (1e-3, 5e-3):
        thr = c.threshold(fmr)
        assert np.sum(top >= thr) <= fmr * len(top) < np.sum(top >= np.nextafter(thr, np.float32(-1)) - 1e-6)
    assert c.threshold(1e-4) is None  # 20 matches: fewer than 100 behind it, not offered
    assert c.fnmr(0.6) == pytest.approx(2 / 3)  # a missing face (-inf) is a non-match


def test_stack_of_cards_counts_people_not_images():
    ids = np.array([0, 0, 1, 2, 3])
    e = np.eye(5, 4, dtype=np.float32)
    e[4] = e[0]  # person 3's card is a lookalike of person 0
    st = calibrate.stack_of_cards(e, e, ids, 0.99)
    # N=10 > 3 other people: every card is tried. Person 0's two probe images: one matches
    # person 3's card, one nothing (0.5); persons 1 and 2: nothing; person 3 matches person 0's
    # card (1); the mean over people, not over images
    assert st[10] == pytest.approx((0.5 + 0 + 0 + 1) / 4)
    assert st[0] == pytest.approx(2 / 5)  # probe images with any matching card


def test_chip_portraits_are_passport_sized_and_within_budget(lfw):
    from facegate.imageio import read_image

    img = read_image(lfw / "Abel_Pacheco" / "Abel_Pacheco_0001.jpg")
    for budget in (3000, 1500):
        data = chip_portrait(img, (80.0, 80.0, 170.0, 180.0), budget)
        assert len(data) <= budget and decode_image(data).shape == (CHIP_SIZE[1], CHIP_SIZE[0], 3)
    data, q = jpeg_under(img, 1_000_000)
    assert q == 95
