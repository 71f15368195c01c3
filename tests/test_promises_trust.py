"""What the backend believes (backend/trust.py), pure and fast, for mutation testing (issue
25): a result is stored only when signed for its very topic by an approved key of the device
the topic names, with the contract's payload; each refusal has its own reason; a retired key
vouches only up to its bound; an attestation is only what the key inside it signed for that
device. Keys are KeyRows as the store holds them; messages are built by the package's
contract code (tests/terminals.py)."""
from __future__ import annotations

import math

import cbor2
import pytest

from facegate import signing
from facegate.backend import limits
from facegate.backend.store import KeyRow
from facegate.backend.trust import Keyring, Verdict, check_attest, check_result, topic_device
from facegate.contract.result import payload_problem
from terminals import PREFIX, Terminal


def row(t: Terminal, state: str = "active", key: signing.SigningKey | None = None, max_seq: int | None = None,
        dev: str | None = None) -> KeyRow:
    k = key or t.key
    return KeyRow(dev or t.dev, k.kid.hex(), k.public, state, "enrol", None, 0.0, 0.0, max_seq)


def test_a_topic_names_a_device_only_as_prefix_device_leaf():
    assert topic_device(f"{PREFIX}/kiosk-1/result", PREFIX, "result") == "kiosk-1"
    assert topic_device(f"{PREFIX}/kiosk-1/result", PREFIX + "/", "result") == "kiosk-1"  # the prefix's slash
    assert topic_device(f"{PREFIX}/A_b.c-9/attest", PREFIX, "attest") == "A_b.c-9"
    assert topic_device(f"{PREFIX}/{'d' * 64}/result", PREFIX, "result") == "d" * 64
    assert topic_device("acme/X/kiosk-1/result", "acme/X", "result") == "kiosk-1"  # only the slash is stripped
    for bad in (f"{PREFIX}/{'d' * 65}/result", f"{PREFIX}//result", f"{PREFIX}/a/b/result", f"{PREFIX}/a b/result",
                f"{PREFIX}/kiosk-1/attest", f"{PREFIX}x/kiosk-1/result", f"other/{PREFIX}/kiosk-1/result",
                f"{PREFIX}/kiosk-1/resultx", f"{PREFIX}/kiosk-1/xresult", "kiosk-1/result", f"{PREFIX}/result"):
        assert topic_device(bad, PREFIX, "result") is None, bad


def test_the_keyring_knows_approved_devices_and_the_retired_keys_bound():
    a, b, c = Terminal("a"), Terminal("b"), Terminal("c")
    old1, old2 = signing.SigningKey.generate(), signing.SigningKey.generate()
    ring = Keyring.of([row(a), row(b, "pending"), row(c, "revoked"), row(a, "retired", old1, max_seq=7),
                       row(a, "retired", old2, max_seq=3), row(b, "retired", old1, dev="b")])
    assert ring.devices == frozenset({"a", "b"})  # active or retired; c only revoked
    assert ring.retired_bound == {"a": 7, "b": limits.INT63}  # the highest; unbounded: 2^63-1
    assert set(ring.public_keys("a")) == {a.key.kid}
    assert set(ring.public_keys("a", ("retired",))) == {old1.kid, old2.kid}
    assert set(ring.public_keys("b", ("pending",))) == {b.key.kid} and ring.public_keys("c") == {}
    assert set(ring.by_kid[old1.kid]) == {row(a, "retired", old1, max_seq=7), row(b, "retired", old1, dev="b")}
    assert ring.rows == (row(a), row(b, "pending"), row(c, "revoked"), row(a, "retired", old1, max_seq=7),
                         row(a, "retired", old2, max_seq=3), row(b, "retired", old1, dev="b"))
    assert Keyring.of([row(a, "retired", old1, max_seq=0)]).retired_bound == {"a": 0}  # nothing above seq 0
    assert Keyring.of([]).devices == frozenset() and Keyring.of([]).retired_bound == {}


def test_each_refusal_has_its_reason():
    a, b, stranger = Terminal("kiosk-a"), Terminal("kiosk-b"), Terminal("kiosk-x")
    pend, rev = Terminal("kiosk-p"), Terminal("kiosk-r")
    ring = Keyring.of([row(a), row(b), row(pend, "pending"), row(rev, "revoked")])

    def reason(t: Terminal, m: bytes, topic: str | None = None) -> str | None:
        v = check_result(m, topic or t.topics.result, PREFIX, ring)
        assert v.accepted == (v.reason is None)
        return v.reason

    _, good = a.result()
    v = check_result(good, a.topics.result, PREFIX, ring)
    assert (v.accepted, v.dev, v.kid, v.result.seq, v.retired) == (True, "kiosk-a", a.key.kid, 1, False)
    assert reason(b, good) == "wrong_topic"  # a's result copied to b's topic
    assert check_result(good, f"{PREFIX}/kiosk-a/event", PREFIX, ring).dev is None
    assert reason(a, good, f"{PREFIX}/kiosk-a/event") == "wrong_topic"
    assert reason(stranger, stranger.result()[1]) == "unknown_device"
    assert reason(a, stranger.result(topic=a.topics.result)[1]) == "unknown_key"  # a known device, a stranger's key
    assert reason(a, b.result(topic=a.topics.result)[1]) == "wrong_device"  # b's key signing for a's topic
    assert reason(a, a.result(dev="kiosk-b")[1]) == "wrong_device"  # a's key, b's name inside
    assert reason(pend, pend.result()[1]) == "unapproved_key"
    assert reason(rev, rev.result()[1]) == "revoked_key"
    tampered = bytearray(good)
    tampered[-5] ^= 0x40
    assert reason(a, bytes(tampered)) == "bad_signature"
    # each refusal names the topic's device, and the key when one verified (the quarantine row's dev / kid)
    full = [(a, good, b.topics.result, Verdict(False, "kiosk-b", "wrong_topic")),
            (stranger, stranger.result()[1], None, Verdict(False, "kiosk-x", "unknown_device")),
            (a, stranger.result(topic=a.topics.result)[1], None, Verdict(False, "kiosk-a", "unknown_key")),
            (a, b.result(topic=a.topics.result)[1], None, Verdict(False, "kiosk-a", "wrong_device", b.key.kid)),
            (a, a.result(dev="kiosk-b")[1], None, Verdict(False, "kiosk-a", "wrong_device", a.key.kid)),
            (pend, pend.result()[1], None, Verdict(False, "kiosk-p", "unapproved_key", pend.key.kid)),
            (rev, rev.result()[1], None, Verdict(False, "kiosk-r", "revoked_key", rev.key.kid)),
            (a, bytes(tampered), None, Verdict(False, "kiosk-a", "bad_signature")),
            (a, a.result(seq=-1)[1], None, Verdict(False, "kiosk-a", "bad_payload", a.key.kid))]
    for t, m, topic, want in full:
        assert check_result(m, topic or t.topics.result, PREFIX, ring) == want, want
    # a payload naming no device (a slash in it) is no copy from another device's topic
    odd = Terminal("kiosk-a/x", key=a.key)
    assert reason(a, odd.result()[1], a.topics.result) == "bad_signature"
    assert reason(a, b"\x00garbage") == "not_cose"
    assert reason(a, a.result(seq=-1)[1]) == "bad_payload"
    # a signature that fails on b's topic too stays bad_signature even when it names another device
    forged_b = bytearray(b.result()[1])
    forged_b[-5] ^= 0x40
    assert reason(a, bytes(forged_b), a.topics.result) == "bad_signature"


def test_a_retired_key_vouches_up_to_its_bound_and_never_for_the_newest():
    t = Terminal("kiosk-1")
    old = t.key
    t.key = signing.SigningKey.generate()
    by_old = Terminal("kiosk-1", key=old)
    for bound, seq, ok in ((5, 5, True), (5, 6, False), (None, 10**12, True), (0, 0, True), (0, 1, False)):
        ring = Keyring.of([row(t), row(t, "retired", old, max_seq=bound)])
        by_old.seq = seq - 1
        v = check_result(by_old.result()[1], t.topics.result, PREFIX, ring)
        want = Verdict(True, "kiosk-1", None, old.kid, v.result, retired=True) if ok else \
            Verdict(False, "kiosk-1", "retired_key", old.kid)
        assert v == want and (v.result is None) == (not ok), (bound, seq)
        if ok:
            assert v.result.seq == seq and v.result.dev == "kiosk-1"
    ring = Keyring.of([row(t), row(t, "retired", old, max_seq=5)])
    v = check_result(t.result()[1], t.topics.result, PREFIX, ring)  # the active key: not retired, any seq
    assert v.accepted and not v.retired
    # the retired key's payload is checked like any other
    by_old.seq = 0
    assert check_result(by_old.result(decision_="maybe")[1], t.topics.result, PREFIX, ring).reason == "bad_payload"


def payload(**over) -> dict:
    t = Terminal("kiosk-1")
    p = cbor2.loads(cbor2.loads(t.result()[1]).value[2])
    p.update(over)
    return {k: v for k, v in p.items() if v is not ...}


@pytest.mark.parametrize("over,ok", [
    ({}, True),
    ({"seq": 0}, True), ({"seq": limits.INT63}, True), ({"seq": -1}, False), ({"seq": limits.INT63 + 1}, False),
    ({"seq": 1.0}, False), ({"seq": True}, False), ({"seq": ...}, False),
    ({"v": 2}, False), ({"v": ...}, False),
    ({"dev": "d" * 64}, True), ({"dev": "d" * 65}, False), ({"dev": 7}, False), ({"dev": ...}, False),
    ({"decision": "maybe"}, False), ({"decision": ...}, False), ({"decision": "spoof"}, True),
    ({"iat": 1.5}, True), ({"iat": math.nan}, False), ({"iat": math.inf}, False), ({"iat": "now"}, False),
    ({"iat": ...}, False),
    ({"reason": None}, True), ({"reason": ...}, True), ({"reason": "x" * 256}, True), ({"reason": "x" * 257}, False),
    ({"reason": "a\x00b"}, False), ({"request_id": 5}, False), ({"session": b"s"}, False), ({"boot": "x" * 257}, False),
    ({"policy": ["p"]}, False),
    ({"liveness": ...}, True), ({"liveness": []}, False), ({"quality": "q"}, False), ({"models": 3}, False),
    ({"quality": {"a": {"b": 1}}}, True), ({"liveness": {"x": math.nan}}, False),
])
def test_a_payload_fits_the_contract_and_its_columns(over, ok):
    assert payload_problem(payload(**over)) == (None if ok else "bad_payload"), over


def test_an_attestation_is_what_the_key_inside_signed_for_that_device():
    t = Terminal("kiosk-1")
    att = check_attest(t.attest(), t.topics.attest, PREFIX)
    assert att is not None
    assert (att.dev, att.pub, att.kid, att.sw, att.boot) == ("kiosk-1", t.key.public, t.key.kid, "0.1.0", t.boot)
    assert att.models and isinstance(att.iat, int)
    assert check_attest(t.attest(), f"{PREFIX}/kiosk-2/attest", PREFIX) is None  # signed for kiosk-1's topic
    assert check_attest(t.attest(), t.topics.result, PREFIX) is None
    assert check_attest(b"\x00", t.topics.attest, PREFIX) is None

    def signed(**over) -> bytes:
        body = cbor2.loads(cbor2.loads(t.attest()).value[2])
        body.update(over)
        body = {k: v for k, v in body.items() if v is not ...}
        return signing.sign(body, t.key, t.topics.attest)

    other = signing.SigningKey.generate()
    assert check_attest(signed(dev="kiosk-2"), t.topics.attest, PREFIX) is None
    assert check_attest(signed(kid=other.kid), t.topics.attest, PREFIX) is None
    assert check_attest(signed(pub=other.public), t.topics.attest, PREFIX) is None  # not signed by the key inside
    assert check_attest(signed(sw="1\x00"), t.topics.attest, PREFIX) is None
    assert check_attest(signed(boot="b" * 257), t.topics.attest, PREFIX) is None
    assert check_attest(signed(iat=math.nan), t.topics.attest, PREFIX) is None
    assert check_attest(signed(models=[1]), t.topics.attest, PREFIX) is None
    deep: dict = {}
    for _ in range(limits.MAX_DEPTH + 2):
        deep = {"x": deep}
    assert check_attest(signed(models=deep), t.topics.attest, PREFIX) is None  # no column holds it
    bare = check_attest(signed(sw=..., boot=..., iat=..., models=...), t.topics.attest, PREFIX)
    assert bare is not None and (bare.sw, bare.boot, bare.iat, bare.models) == (None, None, None, {})
    assert check_attest(signed(iat=1.5), t.topics.attest, PREFIX).iat == 1.5
