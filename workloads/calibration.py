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

Calibration files (``posp calibrate``) key each tolerance by the *pair of execution
profiles* it was measured on (:func:`posp.receipts.capture_profile` digests, so a pair
calibrated on this machine applies exactly to nodes declaring those profiles), and
:func:`load_calibration` turns a file into a :class:`Calibration` whose
:meth:`Calibration.comparator_for` is what ``Protocol(comparator=...)`` takes. Pairs
without calibration fall back to the workload's default comparator (any slash still goes
through arbitration). The drift that sets a file's tolerances is measured with the
workload's *comparator* (the metric the coordinator compares outputs with: relative L2
for the MLP and CNN, :class:`~workloads.lm.LMComparator` logit units for the LM), not
with the LM's prefill judge. The built-in workloads' files for this machine ship under
``workloads/data/`` (:func:`builtin_calibration`).

Run ``python -m workloads.calibration --json OUT`` for the figures of all workloads.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from posp.compare import Comparator
from posp.errors import ConfigError, UnsupportedProfile
from posp.receipts import ExecutionProfile, capture_profile

from .base import Runner, Workload

__all__ = [
    "CALIBRATION_VERSION",
    "Calibration",
    "PairTolerance",
    "Variant",
    "builtin_calibration",
    "calibrate",
    "check_profile",
    "load_calibration",
    "margin_report",
    "measure_drift",
    "profile_drift",
    "run_variants",
    "variant_profile",
    "variants",
]

CALIBRATION_VERSION = 1
BATCHED, PER_JOB = "batched", "per_job"
#: tolerance = largest calibrated drift x this (see calibrate)
DEFAULT_SAFETY_MARGIN = 4.0
DATA_DIR = Path(__file__).resolve().parent / "data"
#: what every shipped workload can serve; a workload may narrow or widen it with
#: ``supported_devices`` / ``supported_dtypes`` attributes
SUPPORTED_DEVICES: tuple[str, ...] = ("cpu",)
SUPPORTED_DTYPES: tuple[str, ...] = ("float32",)


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

    @property
    def batched(self) -> bool:
        return self.mode == BATCHED


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


def variant_profile(v: Variant) -> ExecutionProfile:
    """The execution profile a node running variant ``v`` declares (the same defaults as
    the runtime's node actor: cpu, float32, non-deterministic algorithms). Batch size is
    not part of a profile: batch1, batch7 and batch64 share one."""
    return capture_profile(threads=v.threads, batched=v.batched)


def run_variants(
    workload: Workload, runner: Runner, vs: Sequence[Variant], xs: Sequence[np.ndarray],
    *, progress: Callable[[Variant], None] | None = None,
) -> dict[Variant, list[np.ndarray]]:
    """Outputs for ``xs`` under every variant (the model built once, as on a node)."""
    out: dict[Variant, list[np.ndarray]] = {}
    for v in vs:
        out[v] = _run_variant(workload, runner, v, xs)
        if progress is not None:
            progress(v)
    return out


def profile_drift(
    workload: Workload,
    outs: dict[Variant, list[np.ndarray]],
    *,
    comparator: Comparator | None = None,
) -> dict[tuple[bytes, bytes], list[float]]:
    """Comparator distances between every ordered pair of distinct variants, pooled per
    unordered pair of execution profiles (digests, sorted). Both orders are measured, so
    an asymmetric comparator is covered either way round."""
    cmp = comparator or workload.comparator
    digests = {v: variant_profile(v).digest() for v in outs}
    pooled: dict[tuple[bytes, bytes], list[float]] = {}
    for a, b in itertools.permutations(outs, 2):
        key = _pair_key(digests[a], digests[b])
        pooled.setdefault(key, []).extend(
            cmp.compare(ya, yb).distance for ya, yb in zip(outs[a], outs[b], strict=True)
        )
    return pooled


def _pair_key(a: bytes, b: bytes) -> tuple[bytes, bytes]:
    return (a, b) if a <= b else (b, a)


def _percentiles(ds: Sequence[float]) -> dict[str, float]:
    arr = np.asarray(ds, dtype=np.float64)
    if arr.size == 0:
        return {"count": 0}
    return {
        "count": int(arr.size),
        "zero_fraction": float(np.mean(arr == 0.0)),
        "mean": float(arr.mean()),
        "p50": float(np.percentile(arr, 50)),
        "p90": float(np.percentile(arr, 90)),
        "p99": float(np.percentile(arr, 99)),
        "p99.9": float(np.percentile(arr, 99.9)),
        "max": float(arr.max()),
    }


def calibrate(
    workload: Workload,
    *,
    seed: int = 1000,
    n_inputs: int = 64,
    safety_margin: float = DEFAULT_SAFETY_MARGIN,
    batch_sizes: Sequence[int] = (1, 7, 64),
    threads: Sequence[int] = (1, 2),
    modes: Sequence[str] = (BATCHED, PER_JOB),
    runner: Runner | None = None,
    progress: Callable[[Variant], None] | None = None,
) -> dict[str, Any]:
    """A versioned, JSON-able calibration of ``workload``'s tolerance on this machine.

    Inputs ``workload.inputs(seed, n_inputs)`` run under every variant; every ordered
    pair of distinct variants is compared with the workload's comparator; the largest
    distance per pair of execution profiles, times ``safety_margin`` (at least the
    workload's ``tolerance_floor``), is that pair's tolerance. The soundness matrix must
    test on other inputs (another seed).
    """
    if not safety_margin >= 1.0:
        raise ConfigError("must be >= 1", key="safety_margin")
    if n_inputs < 1:
        raise ConfigError("must be >= 1", key="n_inputs")
    runner = runner or workload.build(1)
    vs = variants(batch_sizes, threads, modes)
    xs = workload.inputs(seed, n_inputs)
    outs = run_variants(workload, runner, vs, xs, progress=progress)
    pooled = profile_drift(workload, outs)
    floor = float(workload.tolerance_floor)
    labels = {variant_profile(v).digest(): variant_profile(v).label for v in vs}
    members: dict[bytes, list[str]] = {}
    for v in vs:
        members.setdefault(variant_profile(v).digest(), []).append(v.key)
    pairs = []
    for (a, b), ds in sorted(pooled.items()):
        mx = float(max(ds))
        pairs.append({
            "a": a.hex(), "b": b.hex(),
            "a_label": labels[a], "b_label": labels[b],
            "a_variants": members[a], "b_variants": members[b],
            "n": len(ds),
            "max_drift": mx,
            "mean_drift": float(np.mean(ds)),
            "tolerance": max(mx * safety_margin, floor),
        })
    every = [d for ds in pooled.values() for d in ds]
    max_drift = float(max(every)) if every else 0.0
    default = float(workload.comparator.tolerance)
    return {
        "version": CALIBRATION_VERSION,
        "workload": workload.name,
        "metric": workload.comparator.metric,
        "default_tolerance": default,
        "safety_margin": float(safety_margin),
        "floor": floor,
        "seed": int(seed),
        "n_inputs": int(n_inputs),
        "variants": [v.key for v in vs],
        "profile": {"torch": torch.__version__, "platform": variant_profile(vs[0]).platform},
        "pairs": pairs,
        "max_drift": max_drift,
        "tolerance": max(max_drift * safety_margin, floor),
        "distribution": _percentiles(every),
    }


# ---- calibration files ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class PairTolerance:
    """The calibrated tolerance for one unordered pair of execution profiles."""

    a: bytes
    b: bytes
    max_drift: float
    tolerance: float
    a_label: str = ""
    b_label: str = ""


def _need(d: Any, key: str, typ: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(d, dict) or key not in d:
        raise ConfigError("missing", key=f"{where}{key}")
    v = d[key]
    if isinstance(v, bool) or not isinstance(v, typ):
        raise ConfigError(f"expected {typ}, got {type(v).__name__}", key=f"{where}{key}")
    return v


def _tol(d: Any, key: str, where: str) -> float:
    v = float(_need(d, key, (int, float), where))
    if not (v >= 0.0) or math.isinf(v):
        raise ConfigError(f"must be a finite non-negative number, got {v!r}",
                          key=f"{where}{key}")
    return v


def _digest_hex(d: Any, key: str, where: str) -> bytes:
    v = _need(d, key, str, where)
    try:
        raw = bytes.fromhex(v)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise ConfigError("expected a 64-hex-digit profile digest", key=f"{where}{key}")
    return raw


class Calibration:
    """A loaded calibration: per pair of execution profiles, a tightened tolerance.

    :meth:`comparator_for` is symmetric and returns the workload's default comparator
    for a pair that was not calibrated. Pass it as ``Protocol(comparator=...)``.
    """

    def __init__(self, data: dict[str, Any], *, comparator: Comparator) -> None:
        version = _need(data, "version", int, "")
        if version != CALIBRATION_VERSION:
            raise ConfigError(
                f"unknown calibration version {version} (this posp reads {CALIBRATION_VERSION})",
                key="version",
            )
        self.workload: str = _need(data, "workload", str, "")
        self.metric: str = _need(data, "metric", str, "")
        if self.metric != comparator.metric:
            raise ConfigError(
                f"calibration measured {self.metric!r} but the comparator is "
                f"{comparator.metric!r}", key="metric",
            )
        self.default_tolerance = _tol(data, "default_tolerance", "")
        self.safety_margin = _tol(data, "safety_margin", "")
        self.seed: int | None = data.get("seed") if isinstance(data.get("seed"), int) else None
        self.data = data
        self.default = comparator
        self.pairs: dict[tuple[bytes, bytes], PairTolerance] = {}
        raw_pairs = _need(data, "pairs", list, "")
        for i, p in enumerate(raw_pairs):
            where = f"pairs[{i}]."
            a, b = _digest_hex(p, "a", where), _digest_hex(p, "b", where)
            pt = PairTolerance(
                a=a, b=b,
                max_drift=_tol(p, "max_drift", where),
                tolerance=_tol(p, "tolerance", where),
                a_label=str(p.get("a_label", "")), b_label=str(p.get("b_label", "")),
            )
            key = _pair_key(a, b)
            if key in self.pairs:
                raise ConfigError("pair listed twice", key=f"pairs[{i}]")
            self.pairs[key] = pt
        self._cache: dict[tuple[bytes, bytes], Comparator] = {}

    @property
    def max_drift(self) -> float:
        return max((p.max_drift for p in self.pairs.values()), default=0.0)

    def tolerance_for(self, a: bytes, b: bytes) -> float:
        p = self.pairs.get(_pair_key(a, b))
        return self.default.tolerance if p is None else p.tolerance

    def comparator_for(self, profile_digest_a: bytes, profile_digest_b: bytes) -> Comparator:
        """The comparator for outputs made under these two profiles (order irrelevant)."""
        key = _pair_key(profile_digest_a, profile_digest_b)
        c = self._cache.get(key)
        if c is None:
            p = self.pairs.get(key)
            c = self.default if p is None else self.default.with_tolerance(p.tolerance)
            self._cache[key] = c
        return c

    def to_dict(self) -> dict[str, Any]:
        return self.data

    def save(self, path: str | os.PathLike[str]) -> None:
        p = Path(path)
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=2) + "\n")
        os.replace(tmp, p)

    def __repr__(self) -> str:
        return (f"Calibration({self.workload!r}, metric={self.metric!r}, "
                f"pairs={len(self.pairs)}, max_drift={self.max_drift:.3g})")


def load_calibration(
    source: str | os.PathLike[str] | dict[str, Any],
    *,
    workload: Workload | None = None,
    comparator: Comparator | None = None,
) -> Calibration:
    """A :class:`Calibration` from a file path, a built-in workload name (``"mlp"``), or
    an already-parsed dict. The base comparator is ``comparator``, else ``workload``'s,
    else the registered workload's of the file's name."""
    if isinstance(source, dict):
        data = source
    else:
        s = os.fspath(source)
        path = Path(s)
        if not path.exists() and (DATA_DIR / f"calibration_{s}.json").exists():
            path = DATA_DIR / f"calibration_{s}.json"
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"no calibration file {s!r}", key="calibration") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read {s!r}: {exc}", key="calibration") from exc
    if not isinstance(data, dict):
        raise ConfigError("expected a JSON object", key="calibration")
    if comparator is None:
        if workload is None:
            from .registry import get

            workload = get(_need(data, "workload", str, ""))
        comparator = workload.comparator
    return Calibration(data, comparator=comparator)


def builtin_calibration(name: str, *, workload: Workload | None = None) -> Calibration:
    """The calibration shipped with the package for built-in workload ``name``."""
    path = DATA_DIR / f"calibration_{name}.json"
    if not path.exists():
        raise ConfigError(f"no shipped calibration for {name!r}", key="workload")
    return load_calibration(path, workload=workload)


def check_profile(workload: Workload, profile: ExecutionProfile) -> None:
    """Refuse (:class:`~posp.errors.UnsupportedProfile`) a node profile the workload
    cannot serve: a device or dtype outside what it supports. Called at registration."""
    devices = tuple(getattr(workload, "supported_devices", SUPPORTED_DEVICES))
    dtypes = tuple(getattr(workload, "supported_dtypes", SUPPORTED_DTYPES))
    name = getattr(workload, "name", "workload")
    if profile.device not in devices:
        raise UnsupportedProfile(
            f"{name} runs on {', '.join(devices)}; node declared device {profile.device!r}"
        )
    if profile.dtype not in dtypes:
        raise UnsupportedProfile(
            f"{name} computes in {', '.join(dtypes)}; node declared dtype {profile.dtype!r}"
        )


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
        "metric": workload.judge_metric,
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
    ap.add_argument("--safety-margin", type=float, default=DEFAULT_SAFETY_MARGIN)
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
