"""The kiosk's words for the person, in every language, from one table (static/strings.json,
served to the page as it is): hints, step prompts, screens and the short safe reason of a
result. The demo's narrator reads the same table."""
from __future__ import annotations

import json
from functools import cache
from importlib import resources

from ..vocab import FaceReason, Failure, Hint, LivenessReason, Verdict

LANGUAGES = ("en", "zh")


@cache
def table() -> dict[str, dict[str, str]]:
    """language -> key -> text."""
    return json.loads(resources.files(__package__).joinpath("static", "strings.json").read_text("utf-8"))


def text(key: str, lang: str = "en") -> str:
    """The text of `key` in `lang` (English when that language lacks it; the key itself when both do)."""
    t = table()
    return t.get(lang, {}).get(key) or t["en"].get(key, key)


def hint_key(hint: Hint | str) -> str:
    return f"hint.{Hint(hint).value}"


SAFE_REASONS = frozenset({FaceReason.DIFFERENT_PERSON, FaceReason.NO_FACE_IN_TIME, LivenessReason.CHALLENGE_INCOMPLETE,
                          LivenessReason.TIMEOUT, LivenessReason.FACE_CHANGED, LivenessReason.PRESENTATION_ATTACK})


def result_keys(decision: str, reason: str | None) -> tuple[bool, str, str]:
    """(passed, headline key, reason key) of a session's result screen: a short safe
    sentence for each reason, never a score; reasons that would tell nothing useful to
    the person share one sentence."""
    if decision == Verdict.MATCH:
        return True, "result.passed", "result.passed_sub"
    if decision == Verdict.ERROR:
        return (False, "result.cancelled", "reason.cancelled") if reason == Failure.CANCELLED else (
            False, "result.error", "reason.error")
    r = str(reason or "")
    if r in SAFE_REASONS:
        return False, "result.retry", f"reason.{r}"
    if r.startswith("reference_"):
        return False, "result.retry", "reason.reference"
    return False, "result.retry", "reason.no_face"
