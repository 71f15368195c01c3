"""messages.check_command / identify at every boundary README's table names ("What happens
to a command"): mutation testing found 117 of check_command's mutants and 16 of identify's
surviving the default tests (off-by-one bounds, `>` for `>=`, a reason swapped). Each row
is one field at or just past its limit."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from facegate import messages
from facegate.messages import CommandRejected
from facegate.signing import Verified

NOW, SKEW, MAX_AGE = 1_000_000.0, 30.0, 600.0
REF = cv2.imencode(".png", np.full((40, 30, 3), 128, np.uint8))[1].tobytes()


def payload(**over):
    p = {"request_id": "r-1", "nonce": b"n" * 16, "iat": NOW, "exp": NOW + 60, "reference": REF}
    p.update(over)
    return {k: v for k, v in p.items() if v is not None}


def check(p):
    return messages.check_command(Verified(b"k" * 8, p), NOW, max_bytes=100_000, max_age_s=MAX_AGE, skew_s=SKEW,
                                  max_pixels=1_000_000)


@pytest.mark.parametrize("over", [
    {}, {"iat": NOW + SKEW}, {"exp": NOW - SKEW, "iat": NOW - SKEW - 1}, {"iat": NOW, "exp": NOW + MAX_AGE},
    {"exp": NOW}, {"iat": NOW - 1, "exp": NOW - 1},
    {"challenge": []}, {"challenge": ["blink"] * 6}, {"challenge": ("turn_left", "turn_right")},
    {"request_id": "x" * messages.MAX_ID_CHARS}, {"nonce": b"n" * messages.MAX_NONCE_BYTES}, {"request_id": "r"},
    {"nonce": b"n"}, {"iat": int(NOW)}, {"exp": float(NOW + 1.5)},
])
def test_at_the_limit_it_is_accepted(over):
    c = check(payload(**over))
    p = payload(**over)
    assert (c.request_id, c.nonce, c.iat, c.exp) == (p["request_id"], p["nonce"], float(p["iat"]), float(p["exp"]))
    assert c.reference.shape == (40, 30, 3) and c.kid == b"k" * 8
    assert c.challenge == (None if "challenge" not in over else list(over["challenge"]))


@pytest.mark.parametrize("over,reason,ids", [
    ({"request_id": None}, "missing_request_id", (None, b"n" * 16)),
    ({"nonce": None}, "missing_nonce", ("r-1", None)),
    ({"request_id": ""}, "bad_request_id", (None, b"n" * 16)),
    ({"request_id": "x" * (messages.MAX_ID_CHARS + 1)}, "bad_request_id", (None, b"n" * 16)),
    ({"request_id": 7}, "bad_request_id", (None, b"n" * 16)),
    ({"nonce": b""}, "bad_nonce", ("r-1", None)),
    ({"nonce": b"n" * (messages.MAX_NONCE_BYTES + 1)}, "bad_nonce", ("r-1", None)),
    ({"nonce": "n" * 16}, "bad_nonce", ("r-1", None)),
    ({"iat": None}, "missing_iat", ("r-1", b"n" * 16)),
    ({"exp": None}, "missing_exp", ("r-1", b"n" * 16)),
    ({"reference": None}, "missing_reference", ("r-1", b"n" * 16)),
    ({"iat": True}, "bad_iat", ("r-1", b"n" * 16)),
    ({"iat": "now"}, "bad_iat", ("r-1", b"n" * 16)),
    ({"iat": math.nan}, "bad_iat", ("r-1", b"n" * 16)),
    ({"exp": math.inf}, "bad_exp", ("r-1", b"n" * 16)),
    ({"exp": 10 ** 400}, "bad_exp", ("r-1", b"n" * 16)),
    ({"iat": NOW + SKEW + 1}, "not_yet_valid", ("r-1", b"n" * 16)),
    ({"iat": NOW - 100, "exp": NOW - SKEW - 1}, "expired", ("r-1", b"n" * 16)),
    ({"iat": NOW - 1, "exp": NOW + MAX_AGE}, "lifetime_too_long", ("r-1", b"n" * 16)),
    ({"iat": NOW + 10, "exp": NOW + 5}, "bad_exp", ("r-1", b"n" * 16)),
    ({"challenge": ["blink"] * 7}, "bad_challenge", ("r-1", b"n" * 16)),
    ({"challenge": ["wink"]}, "bad_challenge", ("r-1", b"n" * 16)),
    ({"challenge": "blink"}, "bad_challenge", ("r-1", b"n" * 16)),
    ({"colour": "red"}, "bad_payload", ("r-1", b"n" * 16)),
    ({"reference": "a jpeg"}, "bad_reference", ("r-1", b"n" * 16)),
    ({"reference": b"\xff\xd8\xff not really"}, "bad_reference", ("r-1", b"n" * 16)),
])
def test_past_the_limit_it_is_refused_with_its_reason_and_ids(over, reason, ids):
    with pytest.raises(CommandRejected) as err:
        check(payload(**over))
    assert (err.value.reason, err.value.request_id, err.value.nonce) == (reason, *ids)
    assert str(err.value) == reason


def test_a_reference_that_is_not_bytes_says_so_in_its_detail():
    """The detail travels in the signed `rejected` answer (contract: `detail`, what is wrong)."""
    with pytest.raises(CommandRejected) as err:
        check(payload(reference="a jpeg"))
    assert (err.value.reason, err.value.detail) == ("bad_reference", "not bytes")


def test_identify_keeps_the_record_until_exp_plus_skew_and_names_the_missing_id():
    assert messages.identify(Verified(b"k", payload()), skew_s=SKEW) == messages.Identified("r-1", b"n" * 16,
                                                                                            NOW + 60 + SKEW)
    assert messages.identify(Verified(b"k", payload(exp="soon")), skew_s=SKEW).keep_until == math.inf
    assert messages.identify(Verified(b"k", payload(exp=None)), skew_s=SKEW).keep_until == math.inf
    for over, reason in (({"request_id": None}, "missing_request_id"), ({"request_id": ""}, "bad_request_id"),
                         ({"nonce": None}, "missing_nonce"), ({"nonce": 5}, "bad_nonce")):
        with pytest.raises(CommandRejected) as err:
            messages.identify(Verified(b"k", payload(**over)), skew_s=SKEW)
        assert err.value.reason == reason and err.value.request_id is None and err.value.nonce is None
