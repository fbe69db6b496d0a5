"""The Proof of Sampling result, reproduced: an always-cheater's gain against p.

Sweeps the sampling rate across p* = C / ((1 - r^n) H (R + S)) and measures, at each p,
the always-cheater's gain over honest work per job on its own asserted jobs (the Proof of
Sampling model: crosses zero at p*) and over every job it receives (blind validation also
catches it on validation and arbitration jobs: crosses zero lower, at p*_blind).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from posp.errors import ConfigError

from .run import scenario_theory, simulate
from .scenario import Scenario, check_int, check_unit

__all__ = ["plot_sweep", "sweep_p"]


def sweep_p(s: Scenario, *, points: int | None = None, p_min: float | None = None,
            p_max: float | None = None,
            progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Run ``s`` (cheat rate forced to 1) at ``points`` sampling rates; return the data.

    Everything is checked before the first run: :class:`~posp.errors.ConfigError` names
    the key (``points``, ``sweep.p_min``, ...) of a bad value."""
    unknown = set(s.sweep) - {"points", "p_min", "p_max"}
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(sorted(unknown))} (known: points, "
                          "p_min, p_max)", key="sweep")
    if s.cheaters < 1:
        raise ConfigError("the sweep measures cheaters: needs at least one", key="cheaters")
    base = s.replace(cheat_rate=1.0, strategy="cheater" if s.strategy == "rational"
                     else s.strategy)
    th = scenario_theory(base)
    if th is None:
        raise ConfigError(f"the sweep plots the theory beside each point: {s.strategy!r} has "
                          "no closed form (use cheater, lazy_validator, rational or sybil)",
                          key="strategy")
    p_star = th.p_star
    finite = math.isfinite(p_star) and p_star <= 1.0  # else the default range is [0, 1]
    lo = check_unit(p_min if p_min is not None else s.sweep.get(
        "p_min", p_star / 4 if finite else 0.0), "p_min" if p_min is not None else "sweep.p_min")
    hi = check_unit(p_max if p_max is not None else s.sweep.get(
        "p_max", min(1.0, p_star * 2) if finite else 1.0),
        "p_max" if p_max is not None else "sweep.p_max")
    if lo > hi:
        raise ConfigError(f"p_min {lo} is above p_max {hi}", key="sweep.p_min")
    k = points if points is not None else s.sweep.get("points", 9)
    check_int(k, "--points" if points is not None else "sweep.points", 2)
    ps = np.linspace(lo, hi, k)
    rows = []
    for i, p in enumerate(ps):
        rep = simulate(base.replace(sample_rate=float(p), seed=s.seed + i))
        m = rep.metrics
        rows.append({
            "p": float(p),
            "own_gain": m["own_job_gain_per_job"].to_dict(),
            "gain": m["cheater_gain_per_job"].to_dict(),
        })
        if progress is not None:
            progress(i + 1, k)
    return {"seed": s.seed, "params": base.to_dict(), "p_star": p_star,
            "p_star_blind": th.p_star_blind, "points": rows}


def _num(x: Any) -> float:
    return math.nan if x is None else float(x)


def plot_sweep(data: dict[str, Any], path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ps = [r["p"] for r in data["points"]]
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=90)
    for key, label, color in (("own_gain", "own asserted jobs (PoS model)", "tab:blue"),
                              ("gain", "every job (blind validation)", "tab:orange")):
        # null in the data (nothing measured, no spread from one draw): not drawn
        meas = [_num(r[key]["measured"]) for r in data["points"]]
        se = [3 * _num(r[key]["stderr"]) for r in data["points"]]
        theo = [_num(r[key]["theory"]) for r in data["points"]]
        ax.errorbar(ps, meas, yerr=se, fmt="o", color=color, ms=4, capsize=2,
                    label=f"measured: {label}")
        ax.plot(ps, theo, "-", color=color, lw=1, alpha=0.7, label="theory")
    ax.axhline(0, color="k", lw=0.8)
    ax.axvline(data["p_star"], color="tab:blue", ls="--", lw=1,
               label=f"p* = {data['p_star']:.4f}")
    if data.get("p_star_blind") is not None:
        ax.axvline(data["p_star_blind"], color="tab:orange", ls=":", lw=1,
                   label=f"p*_blind = {data['p_star_blind']:.4f}")
    ax.set_xlabel("sampling rate p")
    ax.set_ylabel("always-cheater gain over honest work, per job")
    ax.set_title("Cheating stops paying at p*")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
