"""Closed-form theory for every simulator metric (derivation: docs/THEORY.md).

Model: a large population (every counterparty an independent draw), equal load, blind
validation (a node skips a fraction of every kind of job), wrong outputs of different
nodes never agree unless both are in the ring, ring members confirm a ring member's
output. Per job a node receives, the theory gives the chance ``d`` that the job gets the
node slashed, through each channel the protocol has (its own asserted jobs, validation
jobs, arbitration jobs); the metrics follow from a geometric law censored at N jobs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from posp.economics import honest_majority

from .scenario import Scenario

__all__ = ["GroupRates", "Theory", "binom_at_least", "theory", "truncated_geometric"]


def binom_at_least(k: int, prob: float, m: int) -> float:
    """P[Binomial(k, prob) >= m]."""
    if m <= 0:
        return 1.0
    if m > k:
        return 0.0
    return min(1.0, math.fsum(math.comb(k, j) * prob**j * (1 - prob) ** (k - j)
                              for j in range(m, k + 1)))


@dataclass(frozen=True)
class GroupRates:
    """Per job received by a node of one group."""

    d: float  # slashed on this job
    skip: float  # did not compute (cheated) by its own choice
    compute: float  # computed (pays the cost C)
    crash: float  # crashed (unpaid, free)
    d_first: float  # slashed on its own asserted job, per asserted job
    skip_first: float
    unpaid: float = 0.0  # a party to a dispute without a majority (paid nothing)


@dataclass(frozen=True)
class Theory:
    mix: tuple[float, float, float]  # share of first, validation, arbitration jobs
    dispute_rate: float  # disputes per sampled task
    H: float
    cheater: GroupRates
    honest: GroupRates
    false_slash_rate: float
    p_star: float  # asserted-job channel (Proof of Sampling): C / ((1 - r^n) H (R + S))
    p_star_blind: float  # every channel: where cheating gains nothing


def theory(s: Scenario, skip: float, *, guess_accuracy: float = 0.0,
           crash_cheater: float = 0.0, crash_honest: float = 0.0,
           sample_rate: float | None = None, _blind: bool = True) -> Theory:
    """The theory of scenario ``s`` for cheaters that skip a fraction ``skip`` of jobs."""
    p = s.sample_rate if sample_rate is None else sample_rate
    n, k = s.validators, s.arbiters
    m = (k + 1) // 2
    M = s.nodes
    e = skip * (1.0 - guess_accuracy)  # wrong-output rate of a cheater
    wc = s.cheaters / M
    a = wc * e * (1 - crash_cheater)  # a random node returns a wrong output
    if s.collusion == 0:
        r = 0.0
        H0 = binom_at_least(k, 1 - a, m)
        H1 = binom_at_least(k - 1, 1 - a, m)
        delta = 1 - (1 - a) ** (n + 1)
        T = 1 + p * n + p * delta * k
        pi = (1 / T, p * n / T, p * delta * k / T)
        dF, dV, dA = p * e * H0, e * H0, e * H1
        ch_d = pi[0] * dF + pi[1] * dV + pi[2] * dA
        ch_skip = skip
        ch_compute = 1 - skip
        hon_d = 0.0
        H = H0
        false_slash = 0.0
        ch_d_first, ch_skip_first = dF, skip
        # a dispute's arbiters reach a majority only with m correct outputs (wrong ones
        # never agree): with probability 1 - H0 nobody is slashed and neither party is
        # paid. A node is a party on its sampled own jobs and on its validation jobs, and
        # its job is disputed unless its own output and the n others are all right
        ch_u = (pi[0] * p + pi[1]) * (1 - (1 - e) * (1 - a) ** n) * (1 - H0)
        hon_u = (pi[0] * p + pi[1]) * (1 - (1 - a) ** n) * (1 - H0)
    else:
        r = s.ring_size / M
        H = honest_majority(k, r)
        H1r = binom_at_least(k - 1, 1 - r, m)  # a ring arbiter loses
        Gr = binom_at_least(k - 1, r, m)  # an honest arbiter loses
        delta = a * (1 - r**n) + (1 - r) * (1 - (1 - a) ** n)
        T = 1 + p * n + p * delta * k
        pi = (1 / T, p * n / T, p * delta * k / T)
        # a ring cheater: on its own jobs; on validation jobs of outsiders (it confirms
        # ring members); on arbitration jobs it always backs the ring's output
        dF = p * e * (1 - r**n) * H
        dV = (1 - r) * e * H + a * (1 - r ** (n - 1)) * H
        ch_d = pi[0] * dF + pi[1] * dV + pi[2] * H1r
        ch_skip = pi[0] * skip + pi[1] * (1 - r) * skip
        ch_compute = pi[0] * (1 - skip) + pi[1] * (1 - r) * (1 - skip)
        # an honest outsider: slashed whenever the ring wins an arbitration it is in
        hF = p * (1 - (1 - a) ** n) * (1 - H)
        hV = (a + (1 - r) * (1 - (1 - a) ** (n - 1))) * (1 - H)
        hon_d = pi[0] * hF + pi[1] * hV + pi[2] * Gr
        false_slash = 1 - H
        ch_d_first, ch_skip_first = dF, skip
        # two outputs per dispute (the ring's and the correct one) and k odd: the arbiters
        # always reach a majority, so every party is paid or slashed
        ch_u = hon_u = 0.0
    cheater = GroupRates(
        d=ch_d * (1 - crash_cheater), skip=ch_skip * (1 - crash_cheater),
        compute=ch_compute * (1 - crash_cheater), crash=crash_cheater,
        d_first=ch_d_first, skip_first=ch_skip_first, unpaid=ch_u * (1 - crash_cheater))
    honest = GroupRates(d=hon_d * (1 - crash_honest), skip=0.0, compute=1 - crash_honest,
                        crash=crash_honest, d_first=0.0, skip_first=0.0,
                        unpaid=hon_u * (1 - crash_honest))
    S = s.effective_slash
    catch = (1 - r**n) * H
    p_star = math.inf if catch * (s.reward + S) == 0 else s.cost / (catch * (s.reward + S))
    return Theory(mix=pi, dispute_rate=delta, H=H, cheater=cheater, honest=honest,
                  false_slash_rate=false_slash, p_star=p_star,
                  p_star_blind=_blind_threshold(s, guess_accuracy) if _blind else math.nan)


def _blind_threshold(s: Scenario, acc: float) -> float:
    """The p at which an always-cheater's gain over honest work is zero, every channel
    counted (bisection on the theory's gain; inf if cheating pays at every p <= 1)."""
    S = s.effective_slash

    def gain(p: float) -> float:
        c = theory(s, 1.0, guess_accuracy=acc, sample_rate=p, _blind=False).cheater
        return s.cost * (1 - c.compute) - (s.reward + S) * c.d - s.reward * c.unpaid

    lo, hi = 0.0, 1.0
    if gain(hi) > 0:
        return math.inf
    if gain(lo) <= 0:
        return 0.0
    for _ in range(50):
        mid = (lo + hi) / 2
        if gain(mid) > 0:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def truncated_geometric(d: float, N: int) -> dict[str, float]:
    """First catch T ~ Geometric(d) on 1, 2, ...: P[T <= N], E[T | T <= N], and the
    conditional CDF on 1..N (for the lattice median)."""
    if d <= 0:
        return {"within": 0.0, "mean": math.nan, "cdf": np.zeros(N)}
    if d >= 1:
        cdf = np.ones(N)
        return {"within": 1.0, "mean": 1.0, "cdf": cdf}
    within = -math.expm1(N * math.log1p(-d))
    mean = 1 / d - N * (1 - d) ** N / within
    t = np.arange(1, N + 1)
    cdf = -np.expm1(t * math.log1p(-d)) / within
    return {"within": within, "mean": mean, "cdf": cdf}


def as_dict(t: Theory) -> dict[str, Any]:
    return {
        "mix": list(t.mix), "dispute_rate": t.dispute_rate, "H": t.H,
        "d_cheater": t.cheater.d, "d_honest": t.honest.d,
        "p_star": t.p_star if math.isfinite(t.p_star) else None,
        "p_star_blind": t.p_star_blind if math.isfinite(t.p_star_blind) else None,
    }
