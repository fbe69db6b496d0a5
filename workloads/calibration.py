"""Calibration: measure honest drift, set tolerances, and measure how far cheats land.

Honest drift is measured by running the same inputs under every *execution variant* that
an honest node may use — batch sizes (1, 7, 64), thread counts (1, 2), one torch batch
vs one forward per job — and comparing every pair of variants with the workload's dispute
metric (:meth:`Workload.judge`: the comparator for the MLP and CNN, teacher-forced
prefill for the LM, where the claim made under variant A is scored by a model running
under variant B).

:func:`calibrate` turns that into a versioned, JSON-able calibration: the largest drift per
pair of variants and a tolerance ``max(max_drift * safety_margin, floor)``.
:func:`margin_report` draws *held-out* inputs (a different seed), runs every cheat, and
reports the smallest cheat distance, the detection rate at the calibrated tolerance and
``margin = smallest cheat distance / largest honest drift``.

Run ``python -m workloads.calibration --json OUT`` for the figures of all workloads.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from posp.errors import ConfigError

from .base import Runner, Workload

__all__ = [
    "CALIBRATION_VERSION",
    "Variant",
    "calibrate",
    "margin_report",
    "measure_drift",
    "variants",
]

CALIBRATION_VERSION = 1
BATCHED, PER_JOB = "batched", "per_job"


@dataclasses.dataclass(frozen=True, slots=True)
class Variant:
    """One honest way to execute: batched in batches of ``batch_size``, or per job."""

    mode: str
    threads: int
    batch_size: int = 1

    @property
    def key(self) -> str:
        if self.mode == PER_JOB:
            return f"per_job-t{self.threads}"
        return f"batch{self.batch_size}-t{self.threads}"


def variants(
    batch_sizes: Sequence[int] = (1, 7, 64),
    threads: Sequence[int] = (1, 2),
    modes: Sequence[str] = (BATCHED, PER_JOB),
) -> list[Variant]:
    out: list[Variant] = []
    for mode in modes:
        if mode not in (BATCHED, PER_JOB):
            raise ConfigError(f"unknown mode {mode!r}", key="modes")
    for t in threads:
        if BATCHED in modes:
            out.extend(Variant(BATCHED, t, bs) for bs in batch_sizes)
        if PER_JOB in modes:
            out.append(Variant(PER_JOB, t))
    return out


def _run_variant(
    workload: Workload, runner: Runner, v: Variant, xs: Sequence[np.ndarray]
) -> list[np.ndarray]:
    if v.mode == PER_JOB:
        return workload.run(runner.replace(batched=False, threads=v.threads), xs)
    r = runner.replace(batched=True, threads=v.threads)
    out: list[np.ndarray] = []
    for i in range(0, len(xs), v.batch_size):
        out.extend(workload.run(r, xs[i : i + v.batch_size]))
    return out


def measure_drift(
    workload: Workload,
    *,
    seed: int,
    n_inputs: int,
    batch_sizes: Sequence[int] = (1, 7, 64),
    threads: Sequence[int] = (1, 2),
    modes: Sequence[str] = (BATCHED, PER_JOB),
    runner: Runner | None = None,
) -> dict[str, list[float]]:
    """Distances between honest variants, per ordered pair ``"claimant|checker"``.

    For each input, the output computed under variant A is judged against the output (or,
    for the LM, the model) under variant B. The model is built once; variants differ only
    in batching and threads, as they would across honest nodes.
    """
    if n_inputs < 1:
        raise ConfigError("must be >= 1", key="n_inputs")
    runner = runner or workload.build(1)
    xs = workload.inputs(seed, n_inputs)
    vs = variants(batch_sizes, threads, modes)
    outs = {v: _run_variant(workload, runner, v, xs) for v in vs}
    pairs: dict[str, list[float]] = {}
    for a, b in itertools.product(vs, vs):
        checker = runner.replace(threads=b.threads, batched=b.mode == BATCHED)
        pairs[f"{a.key}|{b.key}"] = [
            workload.judge(checker, x, ya, yb).distance
            for x, ya, yb in zip(xs, outs[a], outs[b], strict=True)
        ]
    return pairs


def calibrate(
    workload: Workload,
    *,
    seed: int = 1000,
    n_inputs: int = 64,
    safety_margin: float = 3.0,
    batch_sizes: Sequence[int] = (1, 7, 64),
    threads: Sequence[int] = (1, 2),
    modes: Sequence[str] = (BATCHED, PER_JOB),
    runner: Runner | None = None,
) -> dict[str, Any]:
    """A versioned, JSON-able calibration of ``workload``'s tolerance on this machine."""
    if not safety_margin >= 1.0:
        raise ConfigError("must be >= 1", key="safety_margin")
    drift = measure_drift(workload, seed=seed, n_inputs=n_inputs, batch_sizes=batch_sizes,
                          threads=threads, modes=modes, runner=runner)
    floor = float(workload.tolerance_floor)
    pairs = {}
    for key, ds in drift.items():
        mx = max(ds)
        pairs[key] = {
            "max": mx,
            "mean": float(np.mean(ds)),
            "n": len(ds),
            "tolerance": max(mx * safety_margin, floor),
        }
    max_drift = max(p["max"] for p in pairs.values())
    return {
        "version": CALIBRATION_VERSION,
        "workload": workload.name,
        "metric": workload.judge_metric,
        "default_tolerance": workload.comparator.tolerance,
        "seed": seed,
        "n_inputs": n_inputs,
        "safety_margin": safety_margin,
        "floor": floor,
        "torch": torch.__version__,
        "pairs": pairs,
        "max_drift": max_drift,
        "tolerance": max(max_drift * safety_margin, floor),
    }


def margin_report(
    workload: Workload,
    *,
    calibration: dict[str, Any],
    seed: int = 2000,
    n_inputs: int = 16,
    threads: Sequence[int] = (1, 2),
) -> dict[str, Any]:
    """Held-out soundness figures: honest drift and every cheat's distance at ``seed``.

    Each cheat runs as a node would (bound once, warmed with one earlier job from another
    seed so that ``replay`` has something to replay); every claim is judged by an honest
    checker under each thread count against its own reference output.
    """
    if seed == calibration["seed"]:
        raise ConfigError("soundness inputs must use a seed other than calibration's", key="seed")
    tol = float(calibration["tolerance"])
    base = workload.build(1)
    xs = workload.inputs(seed, n_inputs)
    warm = workload.inputs(seed + 1, 1)
    checkers = [base.replace(threads=t, batched=True) for t in threads]
    refs = [workload.run(c, xs) for c in checkers]

    def judged(claims: Sequence[Any]) -> list[float]:
        return [
            workload.judge(c, x, y, ref[i]).distance
            for c, ref in zip(checkers, refs, strict=True)
            for i, (x, y) in enumerate(zip(xs, claims, strict=True))
        ]

    honest = measure_drift(workload, seed=seed, n_inputs=n_inputs, runner=base)
    honest_max = max(max(v) for v in honest.values())
    honest_slashed = sum(d > tol for v in honest.values() for d in v)
    cheats: dict[str, Any] = {}
    for name, cheat in workload.cheats.items():
        t0 = time.perf_counter()
        behaviour = cheat.bind(workload, base, seed=seed)
        behaviour(warm)
        ds = judged(behaviour(xs))
        cheats[name] = {
            "saves": cheat.saves,
            "min_distance": min(ds),
            "detected": sum(d > tol for d in ds),
            "trials": len(ds),
            "seconds": round(time.perf_counter() - t0, 3),
        }
    cal_max = float(calibration["max_drift"])
    largest_honest = max(cal_max, honest_max)
    smallest_cheat = min(c["min_distance"] for c in cheats.values())
    margin = smallest_cheat / largest_honest if largest_honest > 0 else math.inf
    return {
        "workload": workload.name,
        "metric": calibration["metric"],
        "tolerance": tol,
        "calibration_max_drift": cal_max,
        "heldout_max_drift": honest_max,
        "honest_slashed": honest_slashed,
        "honest_trials": sum(len(v) for v in honest.values()),
        "smallest_cheat": min(cheats, key=lambda k: cheats[k]["min_distance"]),
        "smallest_cheat_distance": smallest_cheat,
        "margin": margin,
        "cheats": cheats,
    }


def main(argv: Sequence[str] | None = None) -> int:
    from .registry import WORKLOADS, get

    ap = argparse.ArgumentParser(prog="python -m workloads.calibration", description=__doc__)
    ap.add_argument("--workload", action="append", choices=sorted(WORKLOADS))
    ap.add_argument("--n-inputs", type=int, default=64, help="calibration inputs")
    ap.add_argument("--n-heldout", type=int, default=16, help="soundness inputs per checker")
    ap.add_argument("--lm-tokens", type=int, default=64, help="tokens the LM generates")
    ap.add_argument("--calibration-seed", type=int, default=1000)
    ap.add_argument("--heldout-seed", type=int, default=2000)
    ap.add_argument("--safety-margin", type=float, default=3.0)
    ap.add_argument("--json", help="write the full report here")
    args = ap.parse_args(argv)
    report = {}
    for name in args.workload or list(WORKLOADS):
        w = get(name)
        if name == "lm":
            w = dataclasses.replace(w, n_new=args.lm_tokens)  # type: ignore[type-var]
        t0 = time.perf_counter()
        cal = calibrate(w, seed=args.calibration_seed, n_inputs=args.n_inputs,
                        safety_margin=args.safety_margin)
        rep = margin_report(w, calibration=cal, seed=args.heldout_seed, n_inputs=args.n_heldout)
        report[name] = {"calibration": cal, "soundness": rep,
                        "seconds": round(time.perf_counter() - t0, 1)}
        print(f"{name}: metric {rep['metric']}  largest honest drift "
              f"{max(cal['max_drift'], rep['heldout_max_drift']):.3g}  tolerance {cal['tolerance']:.3g}"
              f"  honest slashed {rep['honest_slashed']}/{rep['honest_trials']}")
        for cname, c in rep["cheats"].items():
            print(f"    {cname:14s} min distance {c['min_distance']:.3g}  detected "
                  f"{c['detected']}/{c['trials']}  saves {c['saves']}")
        print(f"  margin {rep['margin']:.3g} (smallest: {rep['smallest_cheat']})  "
              f"[{report[name]['seconds']} s]")
        sys.stdout.flush()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
