"""Workloads as node factories and behaviours for the runtime (picklable, built on the node).

``WorkloadFactory("mlp", threads=1, batched=True)`` is what :class:`posp.runtime.Cluster`
ships to a node actor: calling it on the node builds the model once and returns a runner
``inputs -> outputs``. ``cheater(name, cheat, rate)`` is a node behaviour that answers a
fraction ``rate`` of its jobs (of every kind: it cannot tell them apart) with a cheat
from the catalogue, built lazily on the node the first time it is needed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from posp.node import CheatRate

from .registry import get

__all__ = ["CheatSubstitute", "WorkloadFactory", "cheater"]


class WorkloadFactory:
    """Picklable: builds workload ``name`` on the node and returns its batch runner."""

    def __init__(self, name: str, *, threads: int = 1, batched: bool = True) -> None:
        get(name)  # fail early, on the coordinator, for an unknown name
        self.name = name
        self.threads = threads
        self.batched = batched

    def __call__(self) -> Callable[[Sequence[np.ndarray]], list[Any]]:
        w = get(self.name)
        runner = w.build(self.threads, batched=self.batched)

        def run(inputs: Sequence[np.ndarray]) -> list[Any]:
            return list(w.run(runner, list(inputs)))

        return run

    def comparator(self) -> Any:
        """The comparator the Cluster uses by default: the shipped calibration's
        per-profile-pair tolerances, falling back to the workload's default."""
        from .calibration import builtin_calibration

        w = get(self.name)
        try:
            return builtin_calibration(self.name, workload=w).comparator_for
        except Exception:  # no shipped calibration: the conservative default
            return w.comparator

    def check_profile(self, profile: Any) -> None:
        """Raise UnsupportedProfile for a node profile this workload cannot serve
        (called by the Cluster at registration)."""
        from .calibration import check_profile

        check_profile(get(self.name), profile)

    def __repr__(self) -> str:
        return f"WorkloadFactory({self.name!r}, threads={self.threads}, batched={self.batched})"


class CheatSubstitute:
    """Picklable: the cheat's cheap outputs, its model built on first use on the node."""

    def __init__(self, name: str, cheat: str, *, seed: int = 0, threads: int = 1) -> None:
        w = get(name)
        if cheat not in w.cheats:
            from posp.errors import ConfigError

            raise ConfigError(
                f"unknown cheat {cheat!r} for {name}; choose from {sorted(w.cheats)}",
                key="cheat",
            )
        self.name = name
        self.cheat = cheat
        self.seed = seed
        self.threads = threads
        self._fn: Callable[[Sequence[np.ndarray]], list[np.ndarray]] | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_fn"] = None
        return state

    def __call__(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        if self._fn is None:
            w = get(self.name)
            runner = w.build(self.threads, batched=True)
            self._fn = w.cheats[self.cheat].bind(w, runner, seed=self.seed)
        return list(self._fn(list(inputs)))


def cheater(name: str, cheat: str, rate: float, *, seed: int = 0, threads: int = 1) -> CheatRate:
    """A node behaviour cheating with ``cheat`` on a fraction ``rate`` of its jobs."""
    return CheatRate(rate, CheatSubstitute(name, cheat, seed=seed, threads=threads), seed=seed)
