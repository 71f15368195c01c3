"""The device registry: a terminal is trusted by its Ed25519 public key, and only after an
operator said so. `enrol` takes the key from `facegate keys show` output (an out-of-band
approval); an `R/attest` seen on the broker only makes a *pending* key, and so does a key
rotation; `approve` makes a pending key the device's active one (the previous one is
retired: results it signed before the rotation are still accepted, up to a bound on seq);
`revoke` refuses a device's keys from then on. An attestation flood keeps only a device's
newest PENDING_KEEP pending keys (the rest are counted in devices.keys_dropped)."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

from ..contract import kid_of
from ..errors import FacegateError
from .store import KeyRow, Store
from .trust import DEVICE_ID, Attestation, Keyring

# A retired key vouches only for seq <= the device's highest stored seq at the rotation +
# RETIRED_SEQ_WINDOW (results it signed before the rotation but had not delivered yet),
# and, once the new key's first result is stored, only for seq below that one.
RETIRED_SEQ_WINDOW = 32
PENDING_KEEP = 3  # pending keys kept per device (the newest)


class RegistryError(FacegateError):
    """An enrolment, approval or revocation that cannot be done (the message says why)."""


@dataclass(frozen=True)
class Pending:
    """A key waiting for approval; `rotation` when the device already has an active key."""

    key: KeyRow
    rotation: bool


def parse_key_show(text: str) -> tuple[bytes, str | None]:
    """(raw public key, device id or None) from `facegate keys show` output: its text
    lines (`public_key <hex>`, optionally `kid <hex>`, `device <id>`), its `--json`, or a
    bare 64-digit hex key. A kid that does not belong to the key is refused."""
    fields: dict = {}
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            fields = json.loads(stripped)
        except ValueError:
            raise RegistryError("the key file is neither JSON from 'facegate keys show --json' nor its text") from None
        if not isinstance(fields, dict):
            raise RegistryError("the key file's JSON is not an object")
    elif re.fullmatch(r"[0-9a-fA-F]{64}", stripped):
        fields = {"public_key": stripped}
    else:
        for line in stripped.splitlines():
            parts = line.split(None, 1)
            if len(parts) == 2:
                fields[parts[0]] = parts[1].strip()
    hexkey = fields.get("public_key")
    if not isinstance(hexkey, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", hexkey.strip()):
        raise RegistryError("no 'public_key' of 64 hex digits in the key file (expected 'facegate keys show' output)")
    pub = bytes.fromhex(hexkey.strip())
    kid = fields.get("kid")
    if kid is not None and str(kid).strip().lower() != kid_of(pub).hex():
        raise RegistryError(f"the file's kid {kid} does not belong to its public key (kid {kid_of(pub).hex()})")
    dev = fields.get("device") or fields.get("device_id")
    return pub, dev if isinstance(dev, str) else None


class Registry:
    def __init__(self, store: Store):
        self.store = store

    def keyring(self) -> Keyring:
        return Keyring.of(self.store.keys())

    def enrol(self, dev: str, pub: bytes, now: float, replace: bool = False) -> KeyRow:
        """Trust `pub` for `dev` now. A device that has another active key needs
        replace=True (that key is then retired); a revoked key stays revoked."""
        if not DEVICE_ID.fullmatch(dev):
            raise RegistryError(f"bad device id {dev!r} (letters, digits, '_', '.', '-'; at most 64)")
        if len(pub) != 32:
            raise RegistryError("an Ed25519 public key is 32 bytes")
        kid = kid_of(pub).hex()
        with self.store.transaction():
            theirs = [r for r in self.store.keys() if r.kid == kid and r.dev != dev and r.state != "pending"]
            if theirs:
                raise RegistryError(f"key {kid} is {theirs[0].dev}'s ({theirs[0].state}): a terminal's key belongs "
                                    f"to one device; is --device {dev} right? ('facegate keys show' on {dev} gives "
                                    "its own)")
            rows = [r for r in self.store.keys(dev)]
            mine = next((r for r in rows if r.kid == kid), None)
            if mine and mine.state == "revoked":
                raise RegistryError(f"key {kid} of {dev} was revoked; a revoked key is never trusted again")
            others = [r for r in rows if r.state == "active" and r.kid != kid]
            if others and not replace:
                raise RegistryError(f"{dev} already has the active key {others[0].kid}; give --replace to retire it")
            for r in others:
                self._retire(dev, r.kid, now)
            if mine:
                self.store.set_key_state(dev, kid, "active", now)
            else:
                self.store.add_key(KeyRow(dev, kid, pub, "active", "enrol", None, now, now))
        return next(r for r in self.store.keys(dev) if r.kid == kid)

    def _retire(self, dev: str, kid: str, now: float) -> None:
        self.store.set_key_state(dev, kid, "retired", now, (self.store.highest_seq(dev) or 0) + RETIRED_SEQ_WINDOW)

    def observe_attest(self, att: Attestation, now: float) -> bool:
        """Record an attestation: its key becomes pending unless already known for the
        device (in any state); of the device's pending keys only the PENDING_KEEP newest
        stay. True when a new pending key was recorded."""
        with self.store.transaction():
            self.store.device_attest(att.dev, att.sw, att.boot, now)
            new = self.store.add_key(KeyRow(att.dev, att.kid.hex(), att.pub, "pending", "attest", att.sw, now, now))
            if new:
                self.store.prune_pending(att.dev, PENDING_KEEP)
            return new

    def pending(self) -> list[Pending]:
        rows = self.store.keys()
        active = {r.dev for r in rows if r.state == "active"}
        return [Pending(r, r.dev in active) for r in rows if r.state == "pending"]

    def approve(self, dev: str, now: float, kid: str | None = None) -> KeyRow:
        """Make `dev`'s pending key (the one with `kid` when several) its active key; the
        previous active key is retired."""
        with self.store.transaction():
            rows = self.store.keys(dev)
            pend = [r for r in rows if r.state == "pending" and (kid is None or r.kid == kid.lower())]
            if not pend:
                raise RegistryError(f"no pending key for {dev}" + (f" with kid {kid}" if kid else "")
                                    + " ('facegate backend devices pending' lists them)")
            if len(pend) > 1:
                raise RegistryError(f"{dev} has {len(pend)} pending keys ({', '.join(r.kid for r in pend)}); "
                                    "give --kid")
            for r in rows:
                if r.state == "active":
                    self._retire(dev, r.kid, now)
            self.store.set_key_state(dev, pend[0].kid, "active", now)
        return next(r for r in self.store.keys(dev) if r.kid == pend[0].kid)

    def revoke(self, dev: str, now: float, kid: str | None = None) -> list[KeyRow]:
        """Refuse `dev`'s keys (only `kid` when given) from now on; returns those revoked."""
        with self.store.transaction():
            rows = [r for r in self.store.keys(dev) if r.state != "revoked" and (kid is None or r.kid == kid.lower())]
            if not rows:
                raise RegistryError(f"{dev} has no key to revoke" + (f" with kid {kid}" if kid else ""))
            for r in rows:
                self.store.set_key_state(dev, r.kid, "revoked", now)
        return rows
