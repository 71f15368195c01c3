"""docs/contract.md read against the code, both ways (issue 25: the old check compared
messages.DECISIONS, built from Verdict, with Verdict - a tautology - and never read the
page README says it checks). Each list the page spells is parsed from its text and must
equal the code's: a word the code gained that the page lacks fails, and so does a word
the page spells that the code no longer has.
Mutations checked by hand: a new Verdict member; `spoof` removed from the page's decision
list; `waiting_face` renamed on the page; a made-up reason `bad_vibes` added to the
commands paragraph; a HealthDoc key dropped from the page - each fails a test here."""
from __future__ import annotations

import re
import typing
from pathlib import Path

from facegate import config, messages, vocab
from facegate.status import HealthDoc
from facegate.vocab import COMMAND_FIELDS, Refusal, State, Verdict

REPO = Path(vocab.__file__).resolve().parents[2]
CONTRACT = (REPO / "docs" / "contract.md").read_text()
README = (REPO / "README.md").read_text()


def _between(text: str, start: str, end: str) -> str:
    i = text.index(start)
    return text[i:text.index(end, i)]


def _ticked(text: str) -> set[str]:
    return set(re.findall(r"`([^`]+)`", text))


def _config_keys() -> set[str]:
    """Every setting's name, bare and dotted with its section (`mqtt.trusted_keys`)."""
    keys: set[str] = set()

    def walk(model, prefix: str) -> None:
        for name, field in model.model_fields.items():
            keys.add(name)
            keys.add(prefix + name)
            ann = field.annotation
            if isinstance(ann, type) and issubclass(ann, config.BaseModel):
                walk(ann, f"{prefix}{name}.")
    walk(config.Config, "")
    return keys


def test_the_result_s_decisions_are_verdict_both_ways():
    para = _between(CONTRACT, "`decision` (", ")")
    spelled = set(re.findall(r"`(\w+)`", para)) - {"decision"}
    assert spelled == {v.value for v in Verdict}


def test_the_state_topic_s_states_are_state_both_ways():
    row = next(line for line in CONTRACT.splitlines() if line.startswith("| `R/state`"))
    spelled = set(re.findall(r'"(\w+)"(?!:)', row))
    assert spelled == {s.value for s in State}


def test_the_result_s_fields_are_the_payload_s_both_ways():
    para = _between(CONTRACT, "Payload: a CBOR map", "Never a similarity")
    built = messages.result_payload(dev="d", boot="b", seq=1, iat=0, session=None, request_id=None, nonce=None,
                                    decision=Verdict.MATCH, reason=None, liveness={}, quality={}, models={},
                                    policy="p", detail="x")  # detail: only when there is one (rejected)
    spelled = set(re.findall(r"`(\w+)`", para))
    liveness_keys = {"steps", "active_pass", "passive_pass"}
    assert set(built) <= spelled, set(built) - spelled
    # the page may name the words a field takes (decisions, refusals such as bad_reference)
    assert spelled - {v.value for v in Verdict} - {r.value for r in Refusal} - liveness_keys <= set(built)


def test_every_refusal_is_on_the_page_and_every_reason_the_page_spells_is_one():
    para = _between(CONTRACT, "**Commands**", "**Nothing lost.**")
    for r in Refusal:
        generic = "missing_…" if r.startswith("missing_") else "bad_…" if r.startswith("bad_") else None
        assert r.value in _ticked(para) or f"`{generic}`" in para or f"`{r.value}`" in CONTRACT, r
    known = ({r.value for r in Refusal} | {v.value for v in Verdict} | set(COMMAND_FIELDS) | {"challenge"}
             | _config_keys() | set(HealthDoc.__annotations__) | {"missing_…", "bad_…", "missing_<field>",
                                                                  "bad_<field>"})
    words = {w for w in _ticked(para) if re.fullmatch(r"[a-z_…<>]+(\.[a-z_]+)?", w)}
    assert words <= known, words - known


def test_every_health_figure_is_documented_and_every_documented_one_is_sent():
    row = next(line for line in CONTRACT.splitlines() if line.startswith("| `R/health`"))
    spelled = {w for w in re.findall(r"`(\w+)`", row) if w not in ("health_interval_s",)}
    keys = set(typing.get_type_hints(HealthDoc))
    assert spelled <= keys, spelled - keys
    assert keys <= spelled, keys - spelled


def test_the_topic_table_is_the_topics_the_daemon_uses():
    rows = {m.group(1) for m in re.finditer(r"^\| `R/([\w/]+)`", CONTRACT, re.M)}
    t = messages.Topics.of("p", "d")
    used = {getattr(t, name)[len(t.root) + 1:] for name in ("status", "attest", "state", "guide", "health", "event",
                                                           "result", "cmd_verify")}
    assert rows == used


def test_readme_and_contract_name_the_same_decisions():
    for v in Verdict:
        assert f"`{v.value}`" in README and f"`{v.value}`" in CONTRACT, v
