"""Metrics: what every engine measured, each beside its theory, with a standard error.

Every engine returns :class:`Observations` (per node identity, all runs concatenated);
:func:`compute_metrics` turns them into ``{name: Metric}``. A metric *agrees* when
``|measured - theory| <= 3 * stderr`` (trivially where there is no theory; never where
nothing could be measured against one): ``compared`` says whether a comparison was made.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .scenario import Scenario
from .theory import Theory, truncated_geometric

__all__ = ["AGREE_SIGMAS", "Metric", "Observations", "compute_metrics", "lattice_median"]

AGREE_SIGMAS = 3.0


@dataclass
class Observations:
    """Raw per-node results of an engine (one entry per node of every run)."""

    cheater: np.ndarray  # bool
    honest: np.ndarray  # bool: outside the ring and not cheating
    first_catch: np.ndarray  # index (1-based) of the job that got it first slashed; 0 = never
    undetected: np.ndarray  # skipped jobs that passed before the first catch
    jobs: np.ndarray  # jobs received (all identities of the slot)
    profit: np.ndarray  # rewards - cost of computed jobs - slashes (all identities)
    first_jobs: np.ndarray  # own asserted jobs
    first_skipped: np.ndarray  # own asserted jobs skipped
    first_slashed: np.ndarray  # own asserted jobs that got it slashed
    disputes: int = 0
    disputes_honest_slashed: int = 0
    reentries: int = 0
    series: dict[str, list[float]] = field(default_factory=dict)  # stake over rounds
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Metric:
    measured: float | None
    theory: float | None
    stderr: float

    @property
    def compared(self) -> bool:
        """Whether a measurement with a finite standard error meets a theory (a run with
        no disputes measures no false-slash rate; one draw has no spread; an adaptive
        strategy has no theory)."""
        return (self.theory is not None and self.measured is not None
                and math.isfinite(self.measured) and math.isfinite(self.theory)
                and math.isfinite(self.stderr))

    @property
    def agrees(self) -> bool:
        """Within 3 standard errors. True where there is no theory (nothing to disagree
        with); false where a theory exists but could not be compared (nothing measured
        cannot confirm it): see :attr:`compared`."""
        if self.theory is None:
            return True
        if not self.compared:
            return False
        assert self.measured is not None
        return bool(abs(self.measured - self.theory) <= AGREE_SIGMAS * self.stderr + 1e-12)

    def to_dict(self) -> dict[str, Any]:
        return {"measured": _j(self.measured), "theory": _j(self.theory),
                "stderr": _j(self.stderr), "agrees": self.agrees, "compared": self.compared}


def _j(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _opt(x: float) -> float | None:
    return None if not math.isfinite(x) else float(x)


def lattice_median(cdf: np.ndarray) -> float:
    """Median of a distribution on 1, 2, ..., len(cdf) given its CDF, interpolated inside
    the lattice step that crosses one half (the same rule for data and theory)."""
    c = np.asarray(cdf, dtype=np.float64)
    if c.size == 0 or c[-1] < 0.5:
        return math.nan
    t = int(np.argmax(c >= 0.5))  # 0-based: value t + 1
    prev = c[t - 1] if t > 0 else 0.0
    step = c[t] - prev
    return t + (0.5 - prev) / step + 0.5 if step > 0 else float(t + 1)


def _mean_se(x: np.ndarray) -> tuple[float, float]:
    if x.size == 0:
        return math.nan, math.inf
    if x.size == 1:
        return float(x[0]), math.inf
    return float(x.mean()), float(x.std(ddof=1) / math.sqrt(x.size))


def _ratio_se(num: np.ndarray, den: np.ndarray) -> tuple[float, float]:
    total = float(den.sum())
    if total <= 0:
        return math.nan, math.inf
    r = float(num.sum()) / total
    if num.size < 2:
        return r, math.inf
    resid = num - r * den
    return r, float(math.sqrt(num.size / (num.size - 1) * float((resid**2).sum())) / total)


def compute_metrics(obs: Observations, s: Scenario, th: Theory | None) -> dict[str, Metric]:
    """Every metric of a run, with the theory where ``th`` is given."""
    N = s.tasks_per_node
    S = s.effective_slash
    out: dict[str, Metric] = {}
    ch = obs.cheater
    fc = obs.first_catch[ch]
    caught = (fc >= 1) & (fc <= N)
    n_ch = int(ch.sum())

    tg = truncated_geometric(th.cheater.d, N) if th is not None else None
    within = float(caught.mean()) if n_ch else math.nan
    se = math.sqrt(max(within * (1 - within), 1.0 / max(n_ch, 1)) / max(n_ch, 1)) \
        if n_ch else math.inf
    out["detection_within_n"] = Metric(within, tg["within"] if tg else None, se)

    t_c = fc[caught].astype(np.float64)
    m, se = _mean_se(t_c)
    out["mean_tasks_to_detection"] = Metric(m, _opt(tg["mean"]) if tg else None, se)

    if t_c.size:
        counts = np.bincount(t_c.astype(np.int64), minlength=N + 1)[1:N + 1]
        cdf = np.cumsum(counts) / t_c.size
        med = lattice_median(cdf)
        t_idx = int(np.argmax(cdf >= 0.5))
        # asymptotic SE of a quantile: sqrt(q(1-q)/n) / density, density from theory if any
        dens_cdf = tg["cdf"] if tg and tg["within"] > 0 else cdf
        dens = float(dens_cdf[t_idx] - (dens_cdf[t_idx - 1] if t_idx > 0 else 0.0))
        med_se = 0.5 / math.sqrt(t_c.size) / dens if dens > 0 else math.inf
    else:
        med, med_se = math.nan, math.inf
    med_th = _opt(lattice_median(tg["cdf"])) if tg and tg["within"] > 0 else None
    out["median_tasks_to_detection"] = Metric(med, med_th if tg else None, med_se)

    u = obs.undetected[ch][caught].astype(np.float64)
    m, se = _mean_se(u)
    u_th = None
    if th is not None and tg and tg["within"] > 0:
        c = th.cheater
        u_th = (tg["mean"] - 1) * (c.skip - c.d) / (1 - c.d)
    out["undetected_before_catch"] = Metric(m, u_th, se)

    D = obs.disputes
    fs = obs.disputes_honest_slashed / D if D else math.nan
    fs_se = math.sqrt(max(fs * (1 - fs), 1.0 / D) / D) if D else math.inf
    out["false_slash_rate"] = Metric(fs, th.false_slash_rate if th else None, fs_se)

    for name, mask, g in (("cheater", ch, th.cheater if th else None),
                          ("honest", obs.honest, th.honest if th else None)):
        prof, se = _ratio_se(obs.profit[mask].astype(np.float64),
                             obs.jobs[mask].astype(np.float64))
        t = None
        # no closed form: challengers' shares of slashes (challenger_share: income for
        # honest nodes, and for cheaters on jobs they computed), or a cheater whose first
        # slash ejects it (bond - slash < min_bond), where later slashes of the same round
        # take only what is left of its stake (docs/THEORY.md)
        if g is not None and not s.challenger_share \
                and not (name == "cheater" and s.bond - S < s.min_bond):
            t = s.reward * (1 - g.crash - g.d - g.unpaid) - s.cost * g.compute - S * g.d
        out[f"{name}_profit_per_job"] = Metric(prof, t, se)
    # the gain of cheating over honest work (R - C per job): crosses zero at p*
    cp = out["cheater_profit_per_job"]
    out["cheater_gain_per_job"] = Metric(
        None if cp.measured is None or not math.isfinite(cp.measured)
        else cp.measured - (s.reward - s.cost),
        None if cp.theory is None else cp.theory - (s.reward - s.cost), cp.stderr)
    # the same on the cheater's own asserted jobs only (the Proof of Sampling model)
    fj = obs.first_jobs[ch].astype(np.float64)
    gain_own = s.cost * obs.first_skipped[ch] - (s.reward + S) * obs.first_slashed[ch]
    g_m, g_se = _ratio_se(gain_own.astype(np.float64), fj)
    g_t = None
    if th is not None:
        g_t = s.cost * th.cheater.skip_first - (s.reward + S) * th.cheater.d_first
    out["own_job_gain_per_job"] = Metric(g_m, g_t, g_se)
    return out


def metrics_json(metrics: dict[str, Metric]) -> dict[str, Any]:
    return {k: v.to_dict() for k, v in metrics.items()}
