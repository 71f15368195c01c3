"""One vocabulary: every place that still spells the contract's words (decisions, reasons,
steps, liveness modes, states) agrees with facegate.vocab, and every decision / refusal
the package builds from literal words is one vocab knows. Adoption is gradual (the enums
are strings), so these checks are what keeps the copies from drifting meanwhile."""
from __future__ import annotations

import ast
import typing
from enum import StrEnum
from pathlib import Path

import pytest
from pydantic import BaseModel

from facegate import config, messages, vocab
from facegate.vocab import COMMAND_FIELDS, REASONS, CameraSource, FaceReason, LivenessMode, Refusal, Step, Verdict

PKG = Path(vocab.__file__).parent
README = (PKG.parents[1] / "README.md").read_text()


def _literal_values(annotation) -> set[str]:
    """The strings of a Literal[...] annotation, also inside list[...]."""
    if typing.get_origin(annotation) is typing.Literal:
        return set(typing.get_args(annotation))
    return set().union(*(_literal_values(a) for a in typing.get_args(annotation)))


def _config_fields(name: str) -> list:
    models = [getattr(config, n) for n in dir(config)]
    return [m.model_fields[name].annotation for m in models
            if isinstance(m, type) and issubclass(m, BaseModel) and name in getattr(m, "model_fields", {})]


def test_the_words_spelled_elsewhere_are_vocab_s():
    """messages.DECISIONS / STATES / STEPS are tuple(enum): comparing them
    with their enum cannot fail (issue 25), so they are not. The page the words are promised
    in, docs/contract.md, is read against the code both ways in tests/test_contract_doc.py."""
    modes = [a for a in _config_fields("liveness") if isinstance(a, type) and issubclass(a, StrEnum)]
    assert modes == [LivenessMode]  # the enum itself, not a Literal re-spelling it
    assert not [a for a in _config_fields("liveness") + _config_fields("challenge_steps") + _config_fields("source")
                if _literal_values(a)]  # no Literal re-spells a word of the vocabulary
    assert config.LivenessConfig().challenge_steps == list(Step)
    assert config.CameraConfig().source == CameraSource.FILE


def test_the_cli_offers_the_liveness_modes_and_the_steps():
    from facegate.cli import _steps, build_parser

    parser = build_parser()
    subs = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices
    offered = [a.choices for sp in subs.values() for a in sp._actions if "--liveness" in a.option_strings]
    assert offered and all(set(c) == set(LivenessMode) for c in offered)
    assert _steps(",".join(Step)) == ",".join(Step)
    with pytest.raises(Exception, match="unknown challenge step"):
        _steps("blink,wink")


def test_liveness_modes_say_which_checks_run():
    from facegate import pipeline

    cfg = config.Config()
    for m in LivenessMode:
        tasks = set(pipeline.model_plan(cfg, m))
        assert (set(pipeline.PASSIVE_TASKS) <= tasks) == m.passive, m
        assert (set(pipeline.ACTIVE_TASKS) <= tasks) == m.active, m
        assert set(pipeline.VERIFIER_TASKS) <= tasks


def test_home_assistant_is_told_every_decision():
    topics = messages.Topics.of("facegate/v1", "k")
    event = next(p for t, p in messages.ha_discovery(topics, "k", "0", "homeassistant") if "/event/" in t)
    assert set(__import__("json").loads(event)["event_types"]) == set(Verdict)


def test_refusal_reasons_per_field_and_the_reason_table():
    assert {Refusal.missing(f) for f in COMMAND_FIELDS} | {Refusal.bad(f) for f in COMMAND_FIELDS} <= set(Refusal)
    with pytest.raises(ValueError):
        Refusal.missing("colour")
    assert FaceReason.TOO_DARK.of_reference() == "reference_too_dark"
    assert all(r.of_reference() in set(FaceReason) for r in FaceReason if not r.startswith("reference_")
               and r in REASONS[Verdict.NO_FACE] and r not in ("face_changed", "no_frames"))
    assert REASONS[Verdict.MATCH] == frozenset() and set(REASONS) == set(Verdict)
    assert all(isinstance(w, str) and w == w.value for e in (Verdict, Refusal, Step) for w in e)


def _calls(name: str):
    """(file, call node) for every call of `name` (a plain or attribute name) in the package."""
    for f in sorted(PKG.rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Call):
                fn = node.func
                if (isinstance(fn, ast.Name) and fn.id == name) or (isinstance(fn, ast.Attribute) and fn.attr == name):
                    yield f.relative_to(PKG), node


def _strings(node) -> list[str]:
    """The words an argument can take: a string constant, a member of a facegate.vocab enum
    (`Verdict.ERROR`) or either side of an `x if c else y`."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        enum = getattr(vocab, node.value.id, None)
        if isinstance(enum, type) and issubclass(enum, StrEnum):
            return [enum[node.attr].value]
    if isinstance(node, ast.IfExp):
        return _strings(node.body) + _strings(node.orelse)
    return []


def test_decisions_built_from_literal_words_pair_a_decision_with_one_of_its_reasons():
    seen = []
    for f, call in _calls("Decision"):
        if len(call.args) < 2 or not _strings(call.args[0]):
            continue
        for verdict in _strings(call.args[0]):
            assert verdict in set(Verdict), (f, call.lineno, verdict)
            for reason in _strings(call.args[1]):
                assert reason in REASONS[Verdict(verdict)], (f, call.lineno, verdict, reason)
                seen.append((verdict, reason))
    assert {("timeout", "no_face_in_time"), ("error", "cancelled")} <= set(seen)  # the session builds them


def test_refusals_raised_with_literal_words_are_refusals():
    seen = []
    for name in ("CommandRejected", "Refused", "Ignored"):  # messages' refusals; admission's answers and counters
        for f, call in _calls(name):
            for reason in _strings(call.args[0]) if call.args else []:
                assert reason in set(Refusal) | {"same_command"}, (f, call.lineno, reason)
                seen.append(reason)
    for f, call in _calls("SignatureError"):  # signing.verify's reasons become refusals
        for reason in _strings(call.args[0]) if call.args else []:
            if " " not in reason:
                assert reason in set(Refusal), (f, call.lineno, reason)
                seen.append(reason)
    assert {"too_large", "busy", "storage_full", "not_cose", "bad_signature"} <= set(seen)


def test_readme_names_every_refusal_and_decision():
    for r in Refusal:
        generic = "`missing_<field>`" if r.startswith("missing_") else "`bad_<field>`" if r.startswith("bad_") else None
        assert f"`{r}`" in README or (generic and generic in README), r
    for v in Verdict:
        assert f"`{v}`" in README, v
    for s in Step:
        assert f"`{s}`" in README, s
