"""Node strategies: what a simulated node does with each job it receives.

The interface (public API)
--------------------------
A strategy is a small class with::

    cheater: bool              # counted among the cheaters in the metrics
    crash_rate: float          # chance a job crashes (never slashed); default 0
    rejoins: bool              # after ejection, rejoin under a new identity paying the bond
    guess_accuracy: float      # chance a skipped job's guess is right anyway; default 0

    def skip_rate(self, view: NodeView) -> np.ndarray
        # per node of ``view``: the chance it does not compute the next job (cheats).
    def theory_skip_rate(self, s: Scenario) -> float | None
        # the stationary skip rate the theory uses, or None (no closed form)

A node cannot tell job kinds apart (blind validation), so ``skip_rate`` sees only the
node's own state: jobs received, stake, consecutive unsampled own jobs, slashes. A
skipped job returns a wrong output unless the guess happens to be right; wrong outputs of
different nodes never agree unless the nodes are in the collusion ring. The same class
drives every engine: the Monte-Carlo engine calls ``skip_rate`` on arrays of nodes, the
event and Ray engines on one node at a time, inside a node :class:`~posp.node.Behaviour`.

A user adds a strategy without editing ``sim/``: write the class anywhere importable and
name it as ``strategy = "package.module:ClassName"`` in a scenario (constructor keyword
arguments come from ``cheat_rate`` and the ``[options]`` table).
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from posp.economics import nash_threshold
from posp.errors import ConfigError

from .scenario import Scenario, check_int, check_unit

__all__ = [
    "STRATEGIES",
    "AdaptiveCheater",
    "Cheater",
    "CrashProne",
    "Honest",
    "LazyValidator",
    "NodeView",
    "RationalCheater",
    "Strategy",
    "SybilCheater",
    "make_strategy",
]


@dataclass
class NodeView:
    """What nodes know about themselves (arrays, one entry per node)."""

    jobs: np.ndarray  # jobs received so far
    stake: np.ndarray  # current stake
    unsampled_run: np.ndarray  # own first executions in a row that were not sampled
    slashes: np.ndarray  # times slashed


@runtime_checkable
class Strategy(Protocol):
    cheater: bool
    crash_rate: float
    rejoins: bool
    guess_accuracy: float

    def skip_rate(self, view: NodeView) -> np.ndarray: ...

    def theory_skip_rate(self, s: Scenario) -> float | None: ...


class _Base:
    cheater = False
    crash_rate = 0.0
    rejoins = False
    guess_accuracy = 0.0
    rate = 0.0

    def skip_rate(self, view: NodeView) -> np.ndarray:
        return np.full(len(view.jobs), self.rate)

    def theory_skip_rate(self, s: Scenario) -> float | None:
        return self.rate

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.rate})"


class Honest(_Base):
    """Computes every job."""

    def __init__(self, **_: Any) -> None:
        pass


class CrashProne(_Base):
    """An honest node whose jobs crash with probability ``crash_rate`` (never slashed)."""

    def __init__(self, crash_rate: float = 0.05, **_: Any) -> None:
        self.crash_rate = check_unit(crash_rate, "options.crash_rate")


class Cheater(_Base):
    """Skips a fraction ``cheat_rate`` (q) of every kind of job it receives."""

    cheater = True

    def __init__(self, cheat_rate: float = 1.0) -> None:
        # checked here too: [options] may set it past the scenario's own check
        self.rate = check_unit(cheat_rate, "options.cheat_rate")


class LazyValidator(Cheater):
    """Guesses instead of computing on a fraction q of its jobs; a guess is right with
    probability ``guess_accuracy`` (e.g. a classifier's majority class)."""

    def __init__(self, cheat_rate: float = 1.0, guess_accuracy: float = 0.0) -> None:
        super().__init__(cheat_rate)
        self.guess_accuracy = check_unit(guess_accuracy, "options.guess_accuracy")


class RationalCheater(Cheater):
    """Cheats on every job while the core's economics say it pays (p < p*), else never.

    It believes the scenario's figures: p* from :func:`posp.economics.nash_threshold`
    with its cost, reward, slash (capped at the bond), collusion, validators and arbiters.
    """

    def __init__(self, cheat_rate: float = 1.0) -> None:
        super().__init__(cheat_rate)
        self._decided: float | None = None

    def bind(self, s: Scenario) -> None:
        p_star = nash_threshold(s.cost, s.reward, s.slash, s.collusion, s.validators,
                                min_bond=s.bond, arbiters=s.arbiters)
        self._decided = self.rate if s.sample_rate < p_star else 0.0

    def skip_rate(self, view: NodeView) -> np.ndarray:
        if self._decided is None:
            raise RuntimeError("RationalCheater.bind(scenario) was not called")
        return np.full(len(view.jobs), self._decided)

    def theory_skip_rate(self, s: Scenario) -> float | None:
        self.bind(s)
        return self._decided


class AdaptiveCheater(Cheater):
    """Cheats at ``cheat_rate`` normally, at ``high_rate`` after ``run_length`` own jobs
    in a row went unsampled, or while its stake is at least ``stake_threshold``."""

    def __init__(self, cheat_rate: float = 0.1, high_rate: float = 1.0, run_length: int = 20,
                 stake_threshold: float = float("inf")) -> None:
        super().__init__(cheat_rate)
        self.high_rate = check_unit(high_rate, "options.high_rate")
        self.run_length = check_int(run_length, "options.run_length", 1)
        if isinstance(stake_threshold, bool) or not isinstance(stake_threshold, int | float) \
                or stake_threshold != stake_threshold:
            raise ConfigError(f"must be a number, got {stake_threshold!r}",
                              key="options.stake_threshold")
        self.stake_threshold = float(stake_threshold)

    def skip_rate(self, view: NodeView) -> np.ndarray:
        high = (view.unsampled_run >= self.run_length) | (view.stake >= self.stake_threshold)
        return np.where(high, self.high_rate, self.rate)

    def theory_skip_rate(self, s: Scenario) -> float | None:
        return None  # state-dependent: no closed form


class SybilCheater(Cheater):
    """A cheater that, once ejected, rejoins under a new identity paying the bond again."""

    rejoins = True


#: strategy name -> class
STRATEGIES: dict[str, type] = {
    "honest": Honest,
    "crash_prone": CrashProne,
    "cheater": Cheater,
    "lazy_validator": LazyValidator,
    "rational": RationalCheater,
    "adaptive": AdaptiveCheater,
    "sybil": SybilCheater,
}


def _resolve(name: str, key: str) -> type:
    if not isinstance(name, str):
        raise ConfigError(f"must be a strategy name or 'module:Class', got {name!r}", key=key)
    if name in STRATEGIES:
        return STRATEGIES[name]
    if ":" in name:
        mod, _, attr = name.partition(":")
        try:
            cls = getattr(importlib.import_module(mod), attr)
        except Exception as exc:  # noqa: BLE001 - any failure to import is the user's file
            raise ConfigError(f"cannot import strategy {name!r}: {exc}", key=key) from None
        if not inspect.isclass(cls):
            raise ConfigError(f"{name!r} is not a class", key=key)
        return cls  # type: ignore[no-any-return]
    raise ConfigError(
        f"unknown strategy {name!r} (known: {', '.join(STRATEGIES)}, or 'module:Class')",
        key=key)


def make_strategy(name: str, *, key: str = "strategy", **kwargs: Any) -> Strategy:
    """Build a strategy by name, passing only the keyword arguments it accepts
    (``cheat_rate``, ``crash_rate``) plus every ``[options]`` entry, which must fit."""
    cls = _resolve(name, key)
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"cannot read {name}'s constructor: {exc}", key=key) from None
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    options = kwargs.pop("options", {}) or {}
    args = {k: v for k, v in kwargs.items() if k in params or takes_any}
    for k, v in options.items():
        if k not in params and not takes_any:
            raise ConfigError(f"{name} takes no option {k!r}", key=f"options.{k}")
        args[k] = v
    try:
        obj = cls(**args)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name}: {exc}", key="options") from None
    for attr in ("skip_rate", "theory_skip_rate"):
        if not callable(getattr(obj, attr, None)):
            raise ConfigError(f"{name} has no method {attr}", key=key)
    return obj  # type: ignore[no-any-return]


def scenario_strategies(s: Scenario) -> tuple[Strategy, Strategy]:
    """(cheaters' strategy, everyone else's strategy) for a scenario."""
    cheat = make_strategy(s.strategy, cheat_rate=s.cheat_rate, options=s.options)
    honest = make_strategy(s.honest_strategy, key="honest_strategy", crash_rate=s.crash_rate)
    for st in (cheat, honest):
        bind = getattr(st, "bind", None)
        if callable(bind):
            bind(s)
    if getattr(honest, "cheater", False) or honest.theory_skip_rate(s) not in (0.0, None):
        raise ConfigError("must be a strategy that computes every job", key="honest_strategy")
    return cheat, honest
