"""The economics of proof of sampling: the Nash threshold p* and how fast cheaters are caught.

Notation (per task, in any one currency unit):

- ``cost`` C: what a node saves by not doing the honest work (cheating on the task);
- ``reward`` R: what the asserter is paid for a task it is not caught cheating on;
- ``slash`` S: what a caught cheater loses from its stake. A slash cannot exceed the
  stake, so with a minimum bond B the slash a node is sure to pay is ``min(S, B)``
  (:func:`effective_slash`);
- ``collusion`` r: the share of nodes that collude with a cheater; a check by ``n``
  ``validators`` misses only when all of them collude, with probability ``r**n``;
- ``p``: the sampling rate; ``q``: the fraction of its tasks a cheater cheats on;
- ``arbiters`` k: the size of the arbitration panel; the cheater is slashed only when the
  honest arbiters hold the majority, with probability H (:func:`honest_majority`).

The model: cheating on a task saves C; if that task is sampled (p) and the check is not
all-colluding (1 - r^n) and, with arbitration, the honest side wins (H), the cheater loses
the reward R and the slash S. The expected profit is linear in q (:func:`expected_profit_per_task`),
so a rational node cheats always or never, and never once

    p >= p* = C / ((1 - r^n) H (R + S))          (Zhang, Wang et al., arXiv 2405.00295)

Scalar functions are exact and simple (``math`` only); they raise
:class:`~posp.errors.ConfigError` naming the offending parameter.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError

__all__ = [
    "TABLE_HORIZONS",
    "TABLE_RATES",
    "DetectionRow",
    "EconomicsReport",
    "detection_per_task",
    "detection_within",
    "effective_slash",
    "expected_profit_per_task",
    "honest_majority",
    "mean_tasks_to_detection",
    "median_tasks_to_detection",
    "nash_threshold",
    "report",
    "tasks_for_confidence",
    "undetected_before_catch",
]

#: number of tasks in the detection table's "within N tasks" columns
TABLE_HORIZONS = (10, 100, 1000)
#: fixed sampling rates always shown in the detection table (beside p*/2, p*, 2 p*)
TABLE_RATES = (0.01, 0.05, 0.1, 0.2)


# ------------------------------------------------------------------------------ checks


def _nonneg(value: float, key: str) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"must be a number, got {value!r}", key=key)
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"must be a number, got {value!r}", key=key) from None
    if not (math.isfinite(x) and x >= 0.0):
        raise ConfigError(f"must be a finite number >= 0, got {value!r}", key=key)
    return x


def _unit(value: float, key: str) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"must be a number, got {value!r}", key=key)
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"must be a number, got {value!r}", key=key) from None
    if not (0.0 <= x <= 1.0):  # rejects NaN too
        raise ConfigError(f"must be in [0, 1], got {value!r}", key=key)
    return x


def _count(value: int, key: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"must be an integer >= {minimum}, got {value!r}", key=key)
    return value


def _arbiters(k: int | None) -> int | None:
    if k is None:
        return None
    k = _count(k, "arbiters", 0)
    if k and k % 2 == 0:
        raise ConfigError(f"must be odd (or 0 for no arbitration), got {k}", key="arbiters")
    return k


# ------------------------------------------------------------------------- the threshold


def effective_slash(slash: float, min_bond: float | None = None) -> float:
    """The slash a node is sure to pay: ``min(slash, min_bond)`` when a bond is given."""
    s = _nonneg(slash, "slash")
    if min_bond is None:
        return s
    return min(s, _nonneg(min_bond, "min_bond"))


def honest_majority(k: int, r: float) -> float:
    """H = P[Binomial(k, 1 - r) >= (k + 1) / 2]: honest arbiters hold the majority of k.

    ``k`` must be odd; ``k = 0`` means no arbitration, and H = 1.
    """
    k = _count(k, "arbiters", 0)
    r = _unit(r, "collusion")
    if k == 0:
        return 1.0
    if k % 2 == 0:
        raise ConfigError(f"must be odd (or 0 for no arbitration), got {k}", key="arbiters")
    h = 1.0 - r
    need = (k + 1) // 2
    # fsum of rounded terms can exceed 1 by an ulp; a probability must stay in [0, 1]
    return min(1.0, max(0.0, math.fsum(math.comb(k, j) * h**j * r ** (k - j) for j in range(need, k + 1))))


def _catch_factor(collusion: float, validators: int, arbiters: int | None) -> float:
    """(1 - r^n) H: the chance that a sampled cheat is caught and slashed."""
    r = _unit(collusion, "collusion")
    n = _count(validators, "validators", 1)
    k = _arbiters(arbiters)
    f = 1.0 - r**n
    if k is not None:
        f *= honest_majority(k, r)
    return f


def nash_threshold(
    cost: float,
    reward: float,
    slash: float,
    collusion: float = 0.0,
    validators: int = 1,
    *,
    min_bond: float | None = None,
    arbiters: int | None = None,
) -> float:
    """p* = C / ((1 - r^n) H (R + S)): the lowest sampling rate at which cheating does not pay.

    With ``min_bond`` the slash is capped at the bond (:func:`effective_slash`); with
    ``arbiters`` the catch is discounted by H (:func:`honest_majority`). Returns ``inf``
    when no sampling rate deters (r = 1, or R + S = 0 with C > 0), and may exceed 1 (then,
    too, no rate deters). ``cost = 0`` gives 0.
    """
    c = _nonneg(cost, "cost")
    rr = _nonneg(reward, "reward")
    s = effective_slash(slash, min_bond)
    denom = _catch_factor(collusion, validators, arbiters) * (rr + s)
    if c == 0.0:
        return 0.0
    if denom == 0.0:
        return math.inf
    return c / denom


# ------------------------------------------------------------------------------ detection


def detection_per_task(
    p: float,
    q: float,
    collusion: float = 0.0,
    validators: int = 1,
    arbiters: int | None = None,
) -> float:
    """d = p q (1 - r^n) [× H]: the chance a given task of the cheater gets it caught."""
    return _unit(p, "p") * _unit(q, "q") * _catch_factor(collusion, validators, arbiters)


def detection_within(
    n_tasks: int,
    p: float,
    q: float,
    collusion: float = 0.0,
    validators: int = 1,
    arbiters: int | None = None,
) -> float:
    """1 - (1 - d)^N: the chance of at least one catch within ``n_tasks`` tasks."""
    n = _count(n_tasks, "n_tasks", 0)
    d = detection_per_task(p, q, collusion, validators, arbiters)
    if n == 0 or d == 0.0:
        return 0.0
    if d == 1.0:
        return 1.0
    return -math.expm1(n * math.log1p(-d))


def mean_tasks_to_detection(
    p: float,
    q: float,
    collusion: float = 0.0,
    validators: int = 1,
    arbiters: int | None = None,
) -> float:
    """1 / d: mean number of tasks up to and including the first catch (``inf`` if d = 0)."""
    d = detection_per_task(p, q, collusion, validators, arbiters)
    return math.inf if d == 0.0 else 1.0 / d


def _tasks_for(conf: float, d: float) -> float:
    """The smallest N with 1 - (1 - d)^N >= conf (``inf`` when never)."""
    if conf == 0.0:
        return 0
    if d == 1.0:
        return 1
    if d == 0.0 or conf == 1.0:
        return math.inf
    ratio = math.log1p(-conf) / math.log1p(-d)
    if not math.isfinite(ratio):  # d so small that log1p(-d) underflows to 0
        return math.inf
    n = math.ceil(ratio)
    # guard against a ratio that is an integer but rounds just above it
    if n > 1 and -math.expm1((n - 1) * math.log1p(-d)) >= conf:
        n -= 1
    return max(n, 1)


def median_tasks_to_detection(
    p: float,
    q: float,
    collusion: float = 0.0,
    validators: int = 1,
    arbiters: int | None = None,
) -> float:
    """ceil(ln 0.5 / ln(1 - d)): tasks by which a catch is at least even odds (``inf`` if d = 0)."""
    return _tasks_for(0.5, detection_per_task(p, q, collusion, validators, arbiters))


def tasks_for_confidence(
    conf: float,
    p: float,
    q: float,
    collusion: float = 0.0,
    validators: int = 1,
    arbiters: int | None = None,
) -> float:
    """ceil(ln(1 - conf) / ln(1 - d)): tasks for a catch with probability at least ``conf``."""
    c = _unit(conf, "conf")
    return _tasks_for(c, detection_per_task(p, q, collusion, validators, arbiters))


def undetected_before_catch(p: float, collusion: float = 0.0, validators: int = 1) -> float:
    """(1 - p) / p: mean number of cheats that pass before the first one is caught.

    Counted in cheats, so it does not depend on q. With collusion the per-cheat catch is
    ``p (1 - r^n)`` in place of p. ``inf`` when no cheat can be caught.
    """
    d = _unit(p, "p") * _catch_factor(collusion, validators, None)
    return math.inf if d == 0.0 else (1.0 - d) / d


def expected_profit_per_task(
    p: float,
    q: float,
    cost: float,
    reward: float,
    slash: float,
    collusion: float = 0.0,
    validators: int = 1,
    *,
    min_bond: float | None = None,
    arbiters: int | None = None,
) -> float:
    """Expected profit per task of a node that cheats on a fraction ``q`` of its tasks.

    Model: honest work costs C and earns R. Cheating on a task saves C; the cheat is
    caught with probability ``p (1 - r^n) H``, and then the node loses the reward R and
    pays the slash S (capped at ``min_bond``). Hence::

        profit = (R - C) + q (C - p (1 - r^n) H (R + S))

    linear in q: positive gain from cheating exactly when p < p*, so the best response is
    all (q = 1) or nothing (q = 0). At p = p* every q earns the honest ``R - C``.
    """
    pp = _unit(p, "p")
    qq = _unit(q, "q")
    c = _nonneg(cost, "cost")
    rr = _nonneg(reward, "reward")
    s = effective_slash(slash, min_bond)
    f = _catch_factor(collusion, validators, arbiters)
    return (rr - c) + qq * (c - pp * f * (rr + s))


# ---------------------------------------------------------------------------- the report


def _json_float(x: float) -> float | None:
    return x if math.isfinite(x) else None


@dataclass(frozen=True)
class DetectionRow:
    """Detection of an always-cheating node (q = 1) at sampling rate ``p``."""

    p: float
    per_task: float
    within: dict[int, float]  # tasks -> probability of at least one catch
    mean_tasks: float
    median_tasks: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "p": self.p,
            "per_task": self.per_task,
            "within": {str(n): v for n, v in self.within.items()},
            "mean_tasks": _json_float(self.mean_tasks),
            "median_tasks": _json_float(self.median_tasks),
        }


@dataclass(frozen=True)
class EconomicsReport:
    """p*, the parameters it came from, a warning (or None) and a detection table."""

    p_star: float
    params: dict[str, Any]
    warning: str | None
    table: tuple[DetectionRow, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: infinities become ``null``."""
        return {
            "p_star": _json_float(self.p_star),
            "params": dict(self.params),
            "warning": self.warning,
            "table": [row.to_dict() for row in self.table],
        }


def _table_rates(p_star: float, extra: Iterable[float]) -> list[float]:
    rates = set()
    if math.isfinite(p_star) and p_star > 0.0:
        rates.update({p_star / 2, p_star, 2 * p_star})
    rates.update(extra)
    return sorted(p for p in rates if 0.0 < p <= 1.0)


def report(
    cost: float,
    reward: float,
    slash: float,
    collusion: float = 0.0,
    validators: int = 1,
    p_min: float | None = None,
    min_bond: float | None = None,
    *,
    arbiters: int | None = None,
    rates: Iterable[float] = TABLE_RATES,
    horizons: Iterable[int] = TABLE_HORIZONS,
) -> EconomicsReport:
    """p*, a warning when the configuration does not deter, and a detection table.

    The warning is set when ``p_min`` (the lowest rate a policy gives any task) is below
    p*, or when no sampling rate deters at all (p* > 1). Table rows are for p*/2, p*,
    2 p* and the fixed ``rates``, each with the chance of catching an always-cheating
    node within each of ``horizons`` tasks and the mean and median tasks to detection.
    """
    p_star = nash_threshold(
        cost, reward, slash, collusion, validators, min_bond=min_bond, arbiters=arbiters
    )
    pm = None if p_min is None else _unit(p_min, "p_min")
    hs = [_count(h, "horizons", 0) for h in horizons]
    params: dict[str, Any] = {
        "cost": float(cost),
        "reward": float(reward),
        "slash": float(slash),
        "collusion": float(collusion),
        "validators": int(validators),
        "min_bond": None if min_bond is None else float(min_bond),
        "effective_slash": effective_slash(slash, min_bond),
        "p_min": pm,
        "arbiters": arbiters,
    }
    warnings = []
    if p_star > 1.0:
        warnings.append(
            f"p* = {p_star:.4g} > 1: no sampling rate makes cheating unprofitable; "
            "raise the slash or reward, or lower collusion"
        )
    if pm is not None and pm < p_star:
        warnings.append(
            f"lowest sampling rate p_min = {pm:.4g} is below p* = {p_star:.4g}: "
            "a rational node profits by cheating on its least-sampled tasks"
        )
    rows = []
    for p in _table_rates(p_star, [_unit(r, "rates") for r in rates]):
        rows.append(
            DetectionRow(
                p=p,
                per_task=detection_per_task(p, 1.0, collusion, validators, arbiters),
                within={
                    n: detection_within(n, p, 1.0, collusion, validators, arbiters) for n in hs
                },
                mean_tasks=mean_tasks_to_detection(p, 1.0, collusion, validators, arbiters),
                median_tasks=median_tasks_to_detection(p, 1.0, collusion, validators, arbiters),
            )
        )
    return EconomicsReport(
        p_star=p_star,
        params=params,
        warning="; ".join(warnings) or None,
        table=tuple(rows),
    )

