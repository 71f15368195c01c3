"""Signed results: each decision becomes a contract `Result` (contract/result.py), signed
as COSE_Sign1 for the topic it goes to (R/result, and the command's response topic when
it has a valid one) and stored in the outbox through Delivery, which publishes it."""
from __future__ import annotations

from collections.abc import Callable

from .config import Config
from .contract import Result, SigningKey, Topics, policy_hash
from .delivery import Delivery
from .policy import MatchPolicy


def decision_policy(cfg: Config, match: MatchPolicy) -> str:
    """What each result says of the policy that decided it: the match policy by name (its
    false-match-rate target, calibration table and embedding variant, or the operator's own
    threshold) and the hash of every setting that changes a decision, e.g.
    `fmr=1e-04 table=lfw5-1 int8 h=0123456789abcdef`."""
    return match.tag() + " h=" + policy_hash({
        "verify": cfg.verify.model_dump(), "liveness": cfg.liveness.model_dump(), "mode": cfg.daemon.liveness,
        "session_timeout_s": cfg.daemon.session_timeout_s, "precision": cfg.models.precision,
        "threshold": match.threshold})


class Results:
    """key(): the signing key now (SIGHUP replaces it); boot: this run's id; models: task ->
    sha256 of the files loaded; clock: wall time, seconds."""

    def __init__(self, cfg: Config, topics: Topics, key: Callable[[], SigningKey], boot: str,
                 models: dict[str, str], delivery: Delivery, clock: Callable[[], float], match: MatchPolicy):
        self.dev, self.topics, self.key, self.boot, self.models = cfg.device_id, topics, key, boot, models
        self.policy = decision_policy(cfg, match)
        self.delivery, self.clock = delivery, clock

    def emit(self, decision: str, reason: str | None, *, session: str | None = None,
             request_id: str | None = None, nonce: bytes | None = None, liveness: dict | None = None,
             quality: dict | None = None, response_topic: str | None = None,
             correlation: bytes | None = None, detail: str = "") -> int | None:
        """Sign the result and store it in the outbox (then it will be delivered); its
        seq, or None while it is held in memory until the disk has room."""
        def make(seq: int) -> list[tuple[str, bytes, bytes | None]]:
            key = self.key()
            result = Result.of(dev=self.dev, boot=self.boot, seq=seq, iat=self.clock(), session=session,
                               request_id=request_id, nonce=nonce, decision=decision, reason=reason,
                               liveness=liveness or {}, quality=quality or {}, models=self.models,
                               policy=self.policy, detail=detail)
            rows: list[tuple[str, bytes, bytes | None]] = [(self.topics.result, result.sign(key, self.topics.result),
                                                            None)]
            if response_topic and response_topic != self.topics.result:
                rows.append((response_topic, result.sign(key, response_topic), correlation))
            return rows
        return self.delivery.store(make)
