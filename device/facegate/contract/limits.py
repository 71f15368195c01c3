"""What a terminal-supplied field must be before anything reaches a database: every
field a terminal (or anybody who can publish on its topics) supplies is type- and
range-checked here, the same for SQLite and PostgreSQL. Integers fit in 63 bits (a
BIGINT), numbers are finite, strings hold no NUL (PostgreSQL's TEXT cannot) and are
bounded, nesting is bounded, and JSON is parsed only after its depth was counted (the
json module recurses). Pure functions, no I/O."""
from __future__ import annotations

import json
import math

INT63 = 2**63 - 1
MAX_TEXT = 256  # characters of one terminal-supplied string stored in a column (reason, session, sw, ...)
MAX_DEPTH = 8  # nesting of the JSON-like maps a terminal sends (liveness, quality, models, health)
MAX_NODES = 2000  # values in one such map, all levels together
MAX_HEALTH_BYTES = 16384  # a health message; the daemon's is well under 1 KiB
QUARANTINE_KEEP_BYTES = 1024  # what a quarantine row keeps of a message it cannot use (with its digest)


def int63(v: object) -> bool:
    """An int (not a bool) that a BIGINT column holds."""
    return isinstance(v, int) and not isinstance(v, bool) and -INT63 - 1 <= v <= INT63


def number(v: object) -> bool:
    """A finite int or float that a DOUBLE PRECISION column holds."""
    if isinstance(v, bool):
        return False
    if isinstance(v, int):
        return -INT63 - 1 <= v <= INT63
    return isinstance(v, float) and math.isfinite(v)


def text(v: object, max_len: int = MAX_TEXT) -> bool:
    """A str without NUL and without lone surrogates, at most max_len characters."""
    if not isinstance(v, str) or len(v) > max_len or "\x00" in v:
        return False
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def opt_text(v: object, max_len: int = MAX_TEXT) -> bool:
    return v is None or text(v, max_len)


def tree_problem(obj: object, max_depth: int = MAX_DEPTH, max_nodes: int = MAX_NODES) -> str | None:
    """None when `obj` (a decoded CBOR / JSON map) can be stored as JSON text: str keys,
    values None / bool / 63-bit int / finite float / bounded NUL-free str / bytes (stored
    as hex) / lists and maps, at most max_depth levels and max_nodes values. Else why not.
    Iterative: a deep structure costs no recursion."""
    stack: list[tuple[object, int]] = [(obj, 1)]
    nodes = 0
    while stack:
        v, depth = stack.pop()
        nodes += 1
        if nodes > max_nodes:
            return "too_many_values"
        if isinstance(v, dict):
            if depth > max_depth:
                return "too_deep"
            for k, x in v.items():
                if not text(k):
                    return "bad_key"
                stack.append((x, depth + 1))
        elif isinstance(v, (list, tuple)):
            if depth > max_depth:
                return "too_deep"
            stack.extend((x, depth + 1) for x in v)
        elif v is None or isinstance(v, bool) or int63(v) or number(v) or text(v, 4 * MAX_TEXT):
            continue
        elif isinstance(v, bytes) and len(v) <= MAX_TEXT:
            continue
        else:
            return "bad_value"
    return None


def json_depth(data: bytes, limit: int) -> int:
    """The nesting depth of JSON text (brackets outside strings), counting stops past `limit`."""
    depth = deepest = 0
    in_str = escaped = False
    for c in data:
        if in_str:
            if escaped:
                escaped = False
            elif c == 0x5C:  # backslash
                escaped = True
            elif c == 0x22:
                in_str = False
        elif c == 0x22:
            in_str = True
        elif c in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    return deepest
        elif c in (0x5D, 0x7D):
            depth -= 1
    return deepest


def parse_json_map(data: bytes, max_bytes: int = MAX_HEALTH_BYTES, max_depth: int = MAX_DEPTH
                   ) -> tuple[dict | None, str | None]:
    """(the JSON object, None) or (None, why not): size and depth are checked before the
    parser sees it, the values after."""
    if len(data) > max_bytes:
        return None, "too_large"
    if json_depth(data, max_depth) > max_depth:
        return None, "too_deep"
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError):
        return None, "not_json"
    if not isinstance(obj, dict):
        return None, "not_an_object"
    problem = tree_problem(obj)
    return (None, problem) if problem else (obj, None)
