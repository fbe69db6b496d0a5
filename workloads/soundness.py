"""The soundness matrix: honest drift against every cheat, through the real dispute logic.

For each workload, held-out inputs (a seed other than the calibration's: a matrix that
tests on its own calibration data proves nothing) are computed once under every honest
execution variant (batch size 1, 7, 64 or one forward per job; 1 or 2 threads) and once
by every cheat in the catalogue. Trials then *replay* those outputs through in-process
:class:`~posp.node.NodeCore` nodes and the coordinator's own
:class:`~posp.protocol.Protocol` (Ray-free): signed batches, blind validation with the
calibrated comparator, arbitration by three other nodes, slashing. A trial is one task:
the asserter's output, one validator's output, the comparator's verdict, and arbitration
where that verdict is MISMATCH. Every task is sampled (``UniformPolicy(1.0)``).

* honest cell: one node per honest variant; the asserter cycles through the variants,
  the protocol draws the validator and arbiters among the others, so both sides vary.
  ``flagged`` counts tasks whose validation verdict was MISMATCH (a dispute started),
  ``slashed`` tasks in which any node lost stake (the target is 0).
* cheat cell: the same honest nodes plus one cheater (declaring an honest profile) that
  asserts every task with the cheat's output. ``detected`` counts tasks in which the
  cheater was slashed (detected means slashed; the target is every trial).

Per workload the report gives the largest honest drift (every ordered pair of distinct
variants on every held-out input, in the comparator's metric), each cheat's smallest
distance to any honest variant's output (same metric) and ``margin = smallest cheat
distance / largest honest drift``.

The language model: the protocol compares two *generations* with
:class:`~workloads.lm.LMComparator` (logit units), because a comparator sees two outputs
and neither the prompt nor a model; teacher-forced prefill (the LM's ``judge``) needs
both. The matrix therefore runs the LM's disputes with ``LMComparator`` (what the runtime
coordinator uses) and reports the prefill figures beside it under ``"prefill"``.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from posp.compare import Comparator, VerdictKind
from posp.digest import digest
from posp.errors import ConfigError
from posp.identity import NodeKey
from posp.node import Job, NodeCore
from posp.protocol import Protocol, ProtocolParams, TaskResult
from posp.sampling import EpochSeed, UniformPolicy

from .base import Runner, Workload
from .calibration import (
    BATCHED,
    Calibration,
    Variant,
    builtin_calibration,
    profile_drift,
    run_variants,
    variant_profile,
    variants,
)

__all__ = [
    "DEFAULT_CHEAT_TRIALS",
    "DEFAULT_HONEST_TRIALS",
    "DEFAULT_INPUTS",
    "HELDOUT_SEED",
    "TARGET_HONEST_TRIALS",
    "TARGET_MARGIN",
    "SoundnessResult",
    "plot_soundness",
    "soundness",
    "soundness_workload",
    "target_failures",
]

HELDOUT_SEED = 2000
TARGET_MARGIN = 10.0
TARGET_HONEST_TRIALS = {"mlp": 10_000, "cnn": 10_000, "lm": 2_000}
DEFAULT_HONEST_TRIALS = dict(TARGET_HONEST_TRIALS)
DEFAULT_CHEAT_TRIALS = {"mlp": 1_000, "cnn": 1_000, "lm": 500}
DEFAULT_INPUTS = {"mlp": 512, "cnn": 256, "lm": 64}
#: tasks per protocol round (bounds a batch; progress is reported per round)
CHUNK = 500
#: the profile a cheater declares (an honest one: batched, one thread)
CHEATER_VARIANT = Variant(BATCHED, 1, 64)

Progress = Callable[[str, str, int, int], None]  # (workload, what, done, total)


@dataclasses.dataclass
class SoundnessResult:
    """``report`` is the JSON-able matrix; ``raw`` holds the distance arrays for plots."""

    report: dict[str, Any]
    raw: dict[str, dict[str, Any]]
    seconds: float


class _Replay:
    """A node runner that returns precomputed outputs for known inputs."""

    def __init__(self, xs: Sequence[np.ndarray], ys: Sequence[np.ndarray]) -> None:
        self._table = {x.tobytes(): y for x, y in zip(xs, ys, strict=True)}

    def __call__(self, inputs: Sequence[Any]) -> list[Any]:
        return [self._table[np.asarray(x).tobytes()] for x in inputs]


class _Rounds:
    """One Protocol and its in-process nodes; runs tasks to settlement."""

    def __init__(self, nodes: Sequence[NodeCore], comparator: Comparator | Any,
                 seed: int) -> None:
        rng = random.Random(seed)
        self.protocol = Protocol(
            ledger=None,
            comparator=comparator,
            policy=UniformPolicy(1.0),
            # stake never runs out: a cell measures verdicts, not ejection
            params=ProtocolParams(validators=1, arbiters=3, reward=1, validator_reward=1,
                                  slash=1, bond=10**15),
            rng=rng,
            job_ids=lambda: rng.randbytes(16),
            epoch_seed=EpochSeed(digest("soundness-epoch", seed.to_bytes(8, "big"))),
        )
        self.nodes = {n.public: n for n in nodes}
        for n in nodes:
            self.protocol.register(n.public, n.profile_digest)
        self.protocol.open_epoch()
        self.protocol.flush()

    def run(self, tasks: Sequence[tuple[bytes, np.ndarray]]
            ) -> list[tuple[TaskResult, bytes | None]]:
        """Settle one task per ``(asserter, input)``; return ``(result, validator)``."""
        from posp.digest import digest_value

        p = self.protocol
        inputs: dict[int, np.ndarray] = {}
        queue: dict[bytes, list[Job]] = {}
        order: list[int] = []
        for node, x in tasks:
            tid = p.new_task(digest_value("input", x))
            inputs[tid] = x
            order.append(tid)
            a = p.first_job(tid, node)
            queue.setdefault(node, []).append(Job(a.job_id, x))
        validator: dict[int, bytes] = {}
        while queue:
            current, queue = queue, {}
            for node, jobs in current.items():
                res = self.nodes[node].run_batch(jobs)
                follow = p.on_batch(node, res.batch, res.receipts, res.outputs)
                for a in follow:
                    if a.role.value == "validate":
                        validator[a.task] = a.node
                    queue.setdefault(a.node, []).append(Job(a.job_id, inputs[a.task]))
        done = {r.task: r for r in p.flush()}
        if len(done) != len(order):
            raise RuntimeError(f"{len(order) - len(done)} soundness task(s) did not settle")
        return [(done[t], validator.get(t)) for t in order]


def _pair(a: bytes, b: bytes) -> tuple[bytes, bytes]:
    return (a, b) if a <= b else (b, a)


def _flagged(r: TaskResult) -> bool:
    return any(v.kind is VerdictKind.MISMATCH for v in r.verdicts)


def _finite(x: float) -> float:
    return x if math.isfinite(x) else 1e308


def _key(seed: int, i: int) -> NodeKey:
    return NodeKey.from_seed(digest("soundness-node", seed.to_bytes(8, "big") + bytes([i])))


def soundness_workload(
    workload: Workload,
    *,
    calibration: Calibration,
    honest_trials: int,
    cheat_trials: int,
    n_inputs: int,
    seed: int = HELDOUT_SEED,
    cheats: Sequence[str] | None = None,
    runner: Runner | None = None,
    progress: Progress | None = None,
    prefill: bool | None = None,
    threads: Sequence[int] = (1, 2),
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One workload's row of the matrix: ``(report entry, raw distances)``.

    ``threads`` narrows the honest variants (and the prefill checkers) for quick runs;
    the matrix itself uses 1 and 2."""
    name = workload.name
    if calibration.seed is not None and calibration.seed == seed:
        raise ConfigError(
            f"held-out seed {seed} is the calibration's seed: a matrix that tests on its "
            "own calibration data proves nothing", key="seed",
        )
    if honest_trials < 0 or cheat_trials < 0:
        raise ConfigError("trial counts must be >= 0", key="trials")
    if n_inputs < 1:
        raise ConfigError("must be >= 1", key="inputs")
    catalogue = workload.cheats
    chosen = list(catalogue) if cheats is None else list(cheats)
    for c in chosen:
        if c not in catalogue:
            raise ConfigError(f"unknown cheat {c!r} for {name}; choose from {sorted(catalogue)}",
                              key="cheats")

    def tell(what: str, done: int, total: int) -> None:
        if progress is not None:
            progress(name, what, done, total)

    t0 = time.perf_counter()
    runner = runner or workload.build(1)
    vs = variants(threads=threads)
    xs = workload.inputs(seed, n_inputs)
    tell("honest outputs", 0, len(vs))
    count = [0]

    def step(_v: Variant) -> None:
        count[0] += 1
        tell("honest outputs", count[0], len(vs))

    outs = run_variants(workload, runner, vs, xs, progress=step)
    cmp = workload.comparator
    pooled = profile_drift(workload, outs, comparator=cmp)
    drift = np.asarray([d for ds in pooled.values() for d in ds], dtype=np.float64)
    held_max = float(drift.max()) if drift.size else 0.0

    # cheat outputs, bound once as a node would (warmed with an earlier job)
    warm = workload.inputs(seed + 1, 1)
    cheat_outs: dict[str, list[np.ndarray]] = {}
    cheat_dist: dict[str, np.ndarray] = {}
    for i, c in enumerate(chosen):
        tell(f"cheat outputs ({c})", i, len(chosen))
        behaviour = catalogue[c].bind(workload, runner, seed=seed)
        behaviour(warm)
        ys = [np.asarray(y) for y in behaviour(xs)]
        cheat_outs[c] = ys
        cheat_dist[c] = np.asarray([
            cmp.compare(y, ref[j]).distance for ref in outs.values() for j, y in enumerate(ys)
        ], dtype=np.float64)

    honest_nodes = [
        NodeCore(_key(seed, i), variant_profile(v), _Replay(xs, outs[v]))
        for i, v in enumerate(vs)
    ]
    variant_of = {n.public: v.key for n, v in zip(honest_nodes, vs, strict=True)}
    rng = random.Random(seed)

    # ---- honest cell -----------------------------------------------------------------
    per_variant = {v.key: {"trials": 0, "flagged": 0, "slashed": 0} for v in vs}
    pairs: dict[str, dict[str, int]] = {}
    honest = {"trials": 0, "flagged": 0, "slashed": 0, "unresolved": 0}
    rounds = _Rounds(honest_nodes, calibration.comparator_for, seed)
    done = 0
    tell("honest trials", 0, honest_trials)
    while done < honest_trials:
        m = min(CHUNK, honest_trials - done)
        tasks = [
            (honest_nodes[(done + k) % len(vs)].public, xs[rng.randrange(n_inputs)])
            for k in range(m)
        ]
        for r, val in rounds.run(tasks):
            f, s = _flagged(r), bool(r.slashed)
            cell = per_variant[variant_of[r.asserter]]
            for d in (cell, honest):
                d["trials"] += 1
                d["flagged"] += f
                d["slashed"] += s
            honest["unresolved"] += r.state.value == "unresolved"
            pk = f"{variant_of[r.asserter]}|{variant_of.get(val, '?') if val else '?'}"
            pc = pairs.setdefault(pk, {"trials": 0, "flagged": 0, "slashed": 0})
            pc["trials"] += 1
            pc["flagged"] += f
            pc["slashed"] += s
        done += m
        tell("honest trials", done, honest_trials)

    # ---- cheat cells -----------------------------------------------------------------
    cheat_prof = variant_profile(CHEATER_VARIANT)
    cheats_report: dict[str, Any] = {}
    for ci, c in enumerate(chosen):
        cheater = NodeCore(_key(seed, 200 + ci), cheat_prof, _Replay(xs, cheat_outs[c]))
        rounds = _Rounds([*honest_nodes, cheater], calibration.comparator_for, seed + 1 + ci)
        cell = {"trials": 0, "flagged": 0, "detected": 0, "honest_slashed": 0,
                "overturned": 0}
        done = 0
        tell(f"cheat trials ({c})", 0, cheat_trials)
        while done < cheat_trials:
            m = min(CHUNK, cheat_trials - done)
            tasks = [(cheater.public, xs[rng.randrange(n_inputs)]) for _ in range(m)]
            for r, _val in rounds.run(tasks):
                cell["trials"] += 1
                cell["flagged"] += _flagged(r)
                cell["detected"] += cheater.public in r.slashed
                cell["honest_slashed"] += any(n != cheater.public for n in r.slashed)
                cell["overturned"] += r.state.value == "overturned"
            done += m
            tell(f"cheat trials ({c})", done, cheat_trials)
        cd = cheat_dist[c]
        cheats_report[c] = {
            **cell,
            "min_distance": _finite(float(cd.min())) if cd.size else 0.0,
            "saves": catalogue[c].saves,
        }

    cal_max = calibration.max_drift
    largest = max(held_max, cal_max)
    smallest = min((v["min_distance"] for v in cheats_report.values()), default=math.inf)
    margin = smallest / largest if largest > 0 else math.inf
    # unordered pairs of distinct nodes' profiles that can meet in a trial
    profs = [variant_profile(v).digest() for v in vs] + [cheat_prof.digest()]
    used = {_pair(profs[i], profs[j]) for i in range(len(profs))
            for j in range(i + 1, len(profs))}
    calibrated = sum(1 for k in used if k in calibration.pairs)
    entry: dict[str, Any] = {
        "honest": {
            **honest,
            "max_drift": held_max,
            "variants": per_variant,
            "pairs": dict(sorted(pairs.items())),
            "drift_distribution": _dist(drift),
        },
        "cheats": cheats_report,
        "margin": _finite(margin),
        "metric": cmp.metric,
        "default_tolerance": cmp.tolerance,
        "calibration": {
            "seed": calibration.seed,
            "max_drift": cal_max,
            "max_tolerance": max((p.tolerance for p in calibration.pairs.values()),
                                 default=cmp.tolerance),
            "profile_pairs_calibrated": calibrated,
            "profile_pairs_seen": len(used),
        },
        "smallest_cheat": min(cheats_report, key=lambda k: cheats_report[k]["min_distance"])
        if cheats_report else None,
        "heldout_seed": seed,
        "inputs": n_inputs,
    }
    raw: dict[str, Any] = {"drift": drift, "cheats": cheat_dist,
                           "tolerance": entry["calibration"]["max_tolerance"],
                           "default_tolerance": cmp.tolerance, "metric": cmp.metric}
    if prefill is None:
        prefill = workload.judge_metric != cmp.metric
    if prefill:
        tell("prefill judge", 0, 1)
        entry["prefill"] = _judge_figures(workload, runner, xs, outs, cheat_outs, threads)
        tell("prefill judge", 1, 1)
    entry["seconds"] = round(time.perf_counter() - t0, 1)
    return entry, raw


def _judge_figures(workload: Workload, runner: Runner, xs: Sequence[np.ndarray],
                   outs: dict[Variant, list[np.ndarray]],
                   cheat_outs: dict[str, list[np.ndarray]],
                   threads: Sequence[int]) -> dict[str, Any]:
    """The workload's own judge (the LM's prefill verification), one checker per thread
    count: largest honest distance, each cheat's smallest, and their ratio."""
    checkers = [runner.replace(threads=t, batched=True) for t in threads]
    honest = max(
        workload.judge(c, x, y, None).distance
        for c in checkers for ys in outs.values() for x, y in zip(xs, ys, strict=True)
    )
    cheats = {
        name: _finite(min(workload.judge(c, x, y, None).distance
                          for c in checkers for x, y in zip(xs, ys, strict=True)))
        for name, ys in cheat_outs.items()
    }
    smallest = min(cheats.values(), default=math.inf)
    return {
        "metric": workload.judge_metric,
        "max_drift": honest,
        "cheats": {k: {"min_distance": v} for k, v in cheats.items()},
        "margin": _finite(smallest / honest if honest > 0 else math.inf),
    }


def _dist(arr: np.ndarray) -> dict[str, float]:
    if arr.size == 0:
        return {"count": 0}
    return {
        "count": int(arr.size),
        "zero_fraction": float(np.mean(arr == 0.0)),
        "p50": float(np.percentile(arr, 50)),
        "p99": float(np.percentile(arr, 99)),
        "max": float(arr.max()),
    }


def soundness(
    workloads: Sequence[str | Workload] = ("mlp", "cnn", "lm"),
    *,
    honest_trials: int | dict[str, int] | None = None,
    cheat_trials: int | dict[str, int] | None = None,
    n_inputs: int | dict[str, int] | None = None,
    seed: int = HELDOUT_SEED,
    calibrations: dict[str, Calibration] | None = None,
    cheats: Sequence[str] | None = None,
    progress: Progress | None = None,
) -> SoundnessResult:
    """Run the matrix for ``workloads`` (names or objects). Calibrations default to the
    shipped ones (:func:`~workloads.calibration.builtin_calibration`)."""
    from .registry import get

    def pick(v: int | dict[str, int] | None, defaults: dict[str, int], name: str,
             fallback: int) -> int:
        if isinstance(v, dict):
            return int(v.get(name, defaults.get(name, fallback)))
        return int(v) if v is not None else defaults.get(name, fallback)

    t0 = time.perf_counter()
    report: dict[str, Any] = {"workloads": {}}
    raw: dict[str, Any] = {}
    for w in workloads:
        wl = get(w) if isinstance(w, str) else w
        name = wl.name
        cal = (calibrations or {}).get(name) or builtin_calibration(name, workload=wl)
        entry, r = soundness_workload(
            wl,
            calibration=cal,
            honest_trials=pick(honest_trials, DEFAULT_HONEST_TRIALS, name, 2_000),
            cheat_trials=pick(cheat_trials, DEFAULT_CHEAT_TRIALS, name, 500),
            n_inputs=pick(n_inputs, DEFAULT_INPUTS, name, 64),
            seed=seed,
            cheats=cheats,
            progress=progress,
        )
        report["workloads"][name] = entry
        raw[name] = r
    seconds = time.perf_counter() - t0
    report["seed"] = seed
    report["seconds"] = round(seconds, 1)
    report["targets"] = {
        "honest_trials": TARGET_HONEST_TRIALS, "honest_slashed": 0,
        "cheats_detected": "every trial", "margin": TARGET_MARGIN,
    }
    report["failures"] = target_failures(report)
    return SoundnessResult(report, raw, seconds)


def target_failures(report: dict[str, Any], *, min_trials: dict[str, int] | None = None
                    ) -> list[str]:
    """Every target the report misses, one line each (empty: all met)."""
    want = TARGET_HONEST_TRIALS if min_trials is None else min_trials
    out: list[str] = []
    for name, e in report["workloads"].items():
        h = e["honest"]
        if h["slashed"]:
            out.append(f"{name}: {h['slashed']} honest trial(s) slashed")
        need = want.get(name, 0)
        if h["trials"] < need:
            out.append(f"{name}: {h['trials']} honest trials < {need}")
        for c, cell in e["cheats"].items():
            if cell["detected"] < cell["trials"] or cell["trials"] == 0:
                out.append(f"{name}: cheat {c} slashed in {cell['detected']}/{cell['trials']}")
            if cell.get("honest_slashed"):
                out.append(f"{name}: cheat {c}: {cell['honest_slashed']} honest slash(es)")
        if not e["margin"] >= TARGET_MARGIN:
            out.append(f"{name}: margin {e['margin']:.3g} < {TARGET_MARGIN:g} "
                       f"(smallest cheat: {e.get('smallest_cheat')})")
    return out


def plot_soundness(result: SoundnessResult, path: str) -> None:
    """Honest drift against each cheat's distances, log x-axis, one panel per workload."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result.raw)
    fig, axes = plt.subplots(len(names), 1, figsize=(8, 3.2 * len(names) + 0.4),
                             squeeze=False)
    rng = np.random.default_rng(0)
    for ax, name in zip(axes[:, 0], names, strict=True):
        raw = result.raw[name]
        entry = result.report["workloads"][name]
        rows = [("honest drift", raw["drift"])] + sorted(
            raw["cheats"].items(), key=lambda kv: -float(np.min(kv[1])) if kv[1].size else 0)
        lo = math.inf
        for y, (_label, d) in enumerate(rows):
            d = d[np.isfinite(d) & (d > 0)]
            if d.size > 2000:
                d = rng.choice(d, 2000, replace=False)
            if d.size:
                lo = min(lo, float(d.min()))
                color = "tab:green" if y == 0 else "tab:red"
                ax.scatter(d, y + rng.uniform(-0.3, 0.3, d.size), s=3, alpha=0.35,
                           color=color, linewidths=0)
                # the figure that matters: largest honest drift, smallest cheat distance
                edge = d.max() if y == 0 else d.min()
                ax.plot([edge], [y], marker="|", color="black", markersize=14)
        ax.axvline(raw["tolerance"], color="tab:blue", ls="--", lw=1,
                   label=f"calibrated tolerance {raw['tolerance']:.2g}")
        ax.axvline(raw["default_tolerance"], color="tab:gray", ls=":", lw=1,
                   label=f"default tolerance {raw['default_tolerance']:.2g}")
        ax.set_xscale("log")
        ax.set_yticks(range(len(rows)), [r[0] for r in rows], fontsize=7)
        ax.set_xlabel(f"distance ({raw['metric']}; zeros not shown)", fontsize=8)
        ax.set_title(f"{name}: margin {entry['margin']:.3g} "
                     f"(smallest cheat {entry.get('smallest_cheat')})", fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
        if math.isfinite(lo):
            ax.set_xlim(left=lo / 3)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
