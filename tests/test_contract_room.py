"""What a new result field touches: the contract room and the docs' table, no more
(issue 21). Two halves:
- no module outside device/facegate/contract/ decodes CBOR or reads a field of a message
  map by its key (the backend gets a typed `Result`, `Attest`, `HealthReport`), so nothing
  outside the room can need a change for a new field;
- a result type with one more field (made here, as a change to result.py would make it)
  round-trips, and today's backend believes and stores the newer terminal's result, the
  new field kept in the signed bytes of the audit row; left empty, the field changes no
  byte of what the terminal signs."""
from __future__ import annotations

import ast
import time
from dataclasses import field, fields, make_dataclass, replace
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from facegate.backend.store import KeyRow, ResultRow
from facegate.backend.trust import Keyring, check_result
from facegate.contract import Attest, Result, SigningKey, Topics
from facegate.contract.result import OMIT
from facegate.vocab import Verdict

PKG = Path(__file__).resolve().parents[1] / "device" / "facegate"
ROOM = PKG / "contract"
FIELDS = {f.name for f in fields(Result)} | {f.name for f in fields(Attest)} | {"pub", "sw", "challenge", "reference",
                                                                                  "exp", "outbox_depth"}
MAP_NAMES = {"payload", "p", "body", "result", "res", "msg_payload"}  # what a message map is called


def _receiver(node: ast.expr) -> str | None:
    """The last name of an expression: `v.payload` -> payload, `p` -> p."""
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Name):
        return node.id
    return None


def map_reads(source: str) -> list[str]:
    """`x["field"]` and `x.get("field")` where x is named like a message map and "field"
    is a contract field name."""
    found = []
    for node in ast.walk(ast.parse(source)):
        key, recv = None, None
        if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
            key, recv = node.slice.value, _receiver(node.value)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
              and node.args and isinstance(node.args[0], ast.Constant)):
            key, recv = node.args[0].value, _receiver(node.func.value)
        if key in FIELDS and recv in MAP_NAMES:
            found.append(f"{node.lineno}: {recv}[{key!r}]")
    return sorted(found)


def test_the_check_finds_what_the_old_backend_did():
    """The grep below is not blind: the old client's and worker's reads are caught."""
    old = 'p = v.payload\nif p["dev"] != device or p.get("nonce") != n:\n    seq = v.payload["seq"]\n'
    assert map_reads(old) == ["2: p['dev']", "2: p['nonce']", "3: payload['seq']"]
    assert map_reads('row = self._rows["dev"]\nh.get("outbox_depth")\ncfg["seq"]') == []


def test_no_module_outside_the_room_reads_a_message_map_or_decodes_cbor():
    problems = []
    for f in sorted(PKG.rglob("*.py")):
        if ROOM in f.parents:
            continue
        src = f.read_text()
        problems += [f"{f.relative_to(PKG)}:{hit}" for hit in map_reads(src)]
        for node in ast.walk(ast.parse(src)):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            problems += [f"{f.relative_to(PKG)}: imports {n}" for n in names if n.split(".")[0] == "cbor2"]
    assert problems == []


KEY = SigningKey(Ed25519PrivateKey.from_private_bytes(bytes(range(32))))
T = Topics.of("facegate/v1", "kiosk-1")

# result.py with one more field, as its author would add it: a default and its empty value
Newer = make_dataclass("Newer", [("temperature_c", "float | None", field(default=None, metadata={OMIT: None}))],
                       bases=(Result,), frozen=True)


def _result(cls: type[Result]) -> Result:
    return cls.of(dev="kiosk-1", boot="b", seq=3, iat=time.time(), session="s", request_id="r", nonce=b"n" * 16,
                  decision=Verdict.NO_MATCH, reason="different_person", liveness={}, quality={"frames": 3},
                  models={"embed": "ab"}, policy="fmr h=1")


def test_a_new_result_field_round_trips_and_the_backend_keeps_it_unchanged():
    old = _result(Result)
    new = replace(_result(Newer), iat=old.iat)
    assert new.sign(KEY, T.result) == old.sign(KEY, T.result)  # empty: not one byte differs
    warm = replace(new, temperature_c=21.5)
    message = warm.sign(KEY, T.result)
    back, _ = Newer.verify(message, KEY.private.public_key(), T.result)
    assert back == warm and back.temperature_c == 21.5  # type: ignore[attr-defined]
    ring = Keyring.of([KeyRow("kiosk-1", KEY.kid.hex(), KEY.public, "active", "enrol", None, 1.0, 1.0)])
    v = check_result(message, T.result, "facegate/v1", ring)  # today's backend, untouched
    assert v.accepted and v.result == old
    row = ResultRow.of(v.result, dev="kiosk-1", kid=KEY.kid.hex(), topic=T.result, message=message,
                       received_at=1.0, stored_at=1.0, worker="w")
    assert row.message == message and Newer.verify(row.message, KEY.private.public_key(), T.result)[0] == warm
