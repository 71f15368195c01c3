"""signing.verify, reason by reason, on COSE_Sign1 messages built by hand with cbor2 and
cryptography (not with signing.sign): mutation testing found 36 of verify's mutants
surviving - nothing in the default test set walked its refusals one by one. Also the
Sig_structure and kid rules of RFC 9052 / docs/contract.md checked against the bytes."""
from __future__ import annotations

import hashlib

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from facegate import signing
from facegate.signing import SignatureError

TOPIC = "facegate/v1/kiosk-1/cmd/verify"


def _raw(pub) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def build(priv: Ed25519PrivateKey, payload=None, *, topic=TOPIC, hdr=None, tag=18, unprotected=None,
          body: bytes | None = None, protected: bytes | None = None, sig: bytes | None = None, parts=None) -> bytes:
    kid = hashlib.sha256(_raw(priv.public_key())).digest()[:8]
    protected = protected if protected is not None else cbor2.dumps(hdr if hdr is not None else {1: -8, 4: kid})
    body = body if body is not None else cbor2.dumps(payload if payload is not None else {"request_id": "r"})
    sig = sig if sig is not None else priv.sign(cbor2.dumps(["Signature1", protected, topic.encode(), body]))
    value = parts if parts is not None else [protected, {} if unprotected is None else unprotected, body, sig]
    return cbor2.dumps(cbor2.CBORTag(tag, value))


@pytest.fixture(scope="module")
def key():
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def keys(key):
    raw = _raw(key.public_key())
    return {hashlib.sha256(raw).digest()[:8]: key.public_key()}


def test_a_good_message_verifies_by_kid_and_by_single_key(key, keys):
    m = build(key, {"request_id": "r", "n": 1})
    v = signing.verify(m, keys, TOPIC)
    assert v.payload == {"request_id": "r", "n": 1} and v.kid == next(iter(keys))
    assert signing.verify(bytearray(m), key.public_key(), TOPIC).payload["n"] == 1
    assert signing.kid_of(_raw(key.public_key())) == v.kid


@pytest.mark.parametrize("case,reason", [
    ("not bytes", "not_cose"), ("garbage", "not_cose"), ("untagged", "not_cose"), ("wrong tag", "not_cose"),
    ("three parts", "not_cose"), ("five parts", "not_cose"), ("not a list", "not_cose"),
    ("protected not bytes", "not_cose"), ("unprotected not a map", "not_cose"), ("body not bytes", "not_cose"),
    ("signature not bytes", "not_cose"), ("too large", "not_cose"),
    ("protected garbage", "bad_header"), ("protected not a map", "bad_header"), ("alg missing", "bad_header"),
    ("alg ES256", "bad_header"), ("kid missing", "bad_header"), ("kid not bytes", "bad_header"),
    ("unknown kid", "unknown_key"), ("other single key", "unknown_key"),
    ("other topic", "bad_signature"), ("body changed", "bad_signature"), ("signature flipped", "bad_signature"),
    ("signed by another key under this kid", "bad_signature"),
    ("payload garbage", "bad_payload"), ("payload a list", "bad_payload"),
])
def test_each_refusal_has_its_reason(key, keys, case, reason):
    other = Ed25519PrivateKey.generate()
    kid = next(iter(keys))
    good = build(key)
    target: object = keys
    m: object
    if case == "not bytes":
        m = "a string"
    elif case == "garbage":
        m = b"\xff\x00garbage"
    elif case == "untagged":
        m = cbor2.dumps(cbor2.loads(good).value)
    elif case == "wrong tag":
        m = build(key, tag=98)
    elif case in ("three parts", "five parts", "not a list"):
        p = list(cbor2.loads(good).value)
        m = build(key, parts=p[:3] if case == "three parts" else p + [b""] if case == "five parts" else {"a": 1})
    elif case == "protected not bytes":
        p = list(cbor2.loads(good).value)
        m = build(key, parts=[{1: -8}, *p[1:]])
    elif case == "unprotected not a map":
        m = build(key, unprotected=[])
    elif case == "body not bytes":
        p = list(cbor2.loads(good).value)
        m = build(key, parts=[p[0], p[1], "text", p[3]])
    elif case == "signature not bytes":
        p = list(cbor2.loads(good).value)
        m = build(key, parts=[*p[:3], None])
    elif case == "too large":
        m = build(key, body=b"\x00" * (signing.MAX_MESSAGE_BYTES + 1))
    elif case == "protected garbage":
        m = build(key, protected=b"\xff\xff")
    elif case == "protected not a map":
        m = build(key, protected=cbor2.dumps([1, -8]))
    elif case == "alg missing":
        m = build(key, hdr={4: kid})
    elif case == "alg ES256":
        m = build(key, hdr={1: -7, 4: kid})
    elif case == "kid missing":
        m = build(key, hdr={1: -8})
    elif case == "kid not bytes":
        m = build(key, hdr={1: -8, 4: kid.hex()})
    elif case == "unknown kid":
        m = build(other)
    elif case == "other single key":
        m, target = good, other.public_key()
    elif case == "other topic":
        m = build(key, topic=TOPIC + "x")
    elif case == "body changed":
        p = list(cbor2.loads(good).value)
        m = build(key, parts=[p[0], p[1], cbor2.dumps({"request_id": "s"}), p[3]])
    elif case == "signature flipped":
        p = list(cbor2.loads(good).value)
        m = build(key, parts=[*p[:3], bytes([p[3][0] ^ 1]) + p[3][1:]])
    elif case == "signed by another key under this kid":
        m = build(other, hdr={1: -8, 4: kid})
    elif case == "payload garbage":
        m = build(key, body=b"\xff\xfe")
    elif case == "payload a list":
        m = build(key, body=cbor2.dumps(["request_id", "r"]))
    with pytest.raises(SignatureError) as err:
        signing.verify(m, target, TOPIC)  # type: ignore[arg-type]
    assert str(err.value) == reason


def test_sign_writes_what_the_contract_says(key):
    """alg EdDSA (-8) and kid = sha256(raw public key)[:8] in the protected header, an empty
    unprotected map, external_aad = the topic: checked by rebuilding the Sig_structure."""
    from cryptography.hazmat.primitives import serialization

    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    sk = signing.SigningKey(serialization.load_pem_private_key(pem, None))  # type: ignore[arg-type]
    m = signing.sign({"a": 1}, sk, TOPIC)
    tag = cbor2.loads(m)
    assert tag.tag == 18
    protected, unprotected, body, sig = tag.value
    assert cbor2.loads(protected) == {1: -8, 4: hashlib.sha256(_raw(key.public_key())).digest()[:8]}
    assert unprotected == {} and cbor2.loads(body) == {"a": 1}
    key.public_key().verify(sig, cbor2.dumps(["Signature1", protected, TOPIC.encode(), body]))


def test_a_key_is_saved_into_a_directory_that_does_not_exist_yet(tmp_path):
    """Survivor: save_key's mkdir without parents=True (a fresh /var/lib/facegate)."""
    path = tmp_path / "var" / "lib" / "facegate" / "signing.key"
    k = signing.SigningKey.generate()
    signing.save_key(k, path)
    assert path.stat().st_mode & 0o777 == 0o600 and signing.load_key(path).public == k.public
    (path.parent / "x").write_text("no key")
    with pytest.raises(SignatureError, match="not an unencrypted PEM"):
        signing.load_key(path.parent / "x")
    with pytest.raises(SignatureError, match="a public key is 64 hex digits"):
        signing.public_from_hex("abcd")
