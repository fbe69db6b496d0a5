"""The simulation environment: one object owns the random streams (no module globals).

Every engine takes an :class:`Environment`; streams are spawned from one seed by name, so
the same seed gives the same result and adding a stream does not shift the others.
"""

from __future__ import annotations

import hashlib

import numpy as np

__all__ = ["Environment"]


class Environment:
    """Named, independent numpy random streams derived from one ``seed``."""

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)
        self._streams: dict[str, np.random.Generator] = {}

    def stream(self, name: str) -> np.random.Generator:
        """The generator named ``name`` (created on first use, then the same object)."""
        g = self._streams.get(name)
        if g is None:
            key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big")
            g = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, key])))
            self._streams[name] = g
        return g

    def seed_bytes(self, name: str, n: int = 32) -> bytes:
        """Deterministic bytes for ``name`` (keys, epoch seeds)."""
        return hashlib.sha256(f"{self.seed}/{name}".encode()).digest()[:n]

    def __repr__(self) -> str:
        return f"Environment(seed={self.seed}, streams={sorted(self._streams)})"
