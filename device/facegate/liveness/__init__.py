"""Liveness: passive presentation-attack scoring and (next) the active challenge."""
