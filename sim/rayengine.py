"""The full-stack engine: a scenario on real Ray actors through :class:`posp.runtime.Cluster`.

Every run starts a fresh :class:`~posp.runtime.Cluster` (fresh node actors, a fresh
on-disk ledger, a fresh epoch seed) on one shared Ray instance, submits tasks with
:meth:`Cluster.map` until every live node has received its jobs, and reads the outcome
back from what the runtime exposes: the jobs the scheduler dispatched to each node (in
the order the node receives them), the ledger's slash events, the protocol's counters and
the ledger balances. Nothing of the protocol is re-implemented here: sampling, batching,
decoys, validators, arbiters, verdicts, slashes and settlement are the runtime's own.

The workload is a toy that costs nothing (:class:`ToyWorkload`: an int input, a small
float32 array output, compared exactly). A cheater's node runs :class:`HashCheat`, a node
:class:`~posp.node.Behaviour` that, like every behaviour, sees only job ids and inputs:
it skips a job when a keyed hash of the job id falls below its skip rate, so the
simulator can tell afterwards which jobs it skipped without any channel out of the actor.

Model limits (docs/THEORY.md, "The Ray engine"): no collusion ring (ring members would
need an out-of-band channel between actors), no crashes, no rejoining, no
state-dependent strategies (the behaviour lives in the actor and sees no stake or
sampling history); few nodes (one actor each), so per-node counts are small and finite-M
effects are those of the scenario. Decoy jobs (tail padding that the protocol ignores)
are not counted as received jobs. Runs are not bit-reproducible: the runtime draws its
epoch seed from the OS and Ray's timing decides which node takes which new task.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from posp.compare import Exact
from posp.errors import ConfigError
from posp.ledger import Ledger
from posp.node import Job
from posp.protocol import ProtocolParams, Role, State
from posp.scheduler import Batch, Scheduler

from .env import Environment
from .ledgerpay import ledger_amounts
from .metrics import Observations
from .scenario import Scenario
from .strategies import NodeView, scenario_strategies

__all__ = ["MAX_NODES", "WARMUP_BATCHES", "HashCheat", "ToyWorkload", "run_ray"]

#: one actor per node: beyond this the engine refuses (use the event engine)
MAX_NODES = 64
#: jobs each node receives before measuring (in batches), as the event engine's warm-up
#: rounds: the first batches carry no validation work yet
WARMUP_BATCHES = 3

_U64 = float(1 << 64)


def honest_output(x: int) -> np.ndarray:
    """The toy workload's output for input ``x``: deterministic, bit-exact everywhere."""
    return np.array([x, 2 * x + 1, x % 97, 1.0], np.float32)


class ToyWorkload:
    """A picklable workload factory: ``() -> runner``, ``runner(xs) -> outputs``."""

    def __call__(self) -> Callable[[Sequence[Any]], list[Any]]:
        return _toy_runner

    def __repr__(self) -> str:
        return "ToyWorkload()"


def _toy_runner(xs: Sequence[Any]) -> list[Any]:
    return [honest_output(int(x)) for x in xs]


def _job_hash(salt: bytes, job_id: bytes) -> bytes:
    return hashlib.sha256(b"posp-sim/cheat\x00" + salt + job_id).digest()


def cheat_decision(salt: bytes, job_id: bytes, rate: float, guess: float
                   ) -> tuple[bool, bool, bytes]:
    """(skipped, guessed right, hash) for one job: the same answer in the actor and here."""
    h = _job_hash(salt, job_id)
    skipped = int.from_bytes(h[:8], "big") / _U64 < rate
    right = skipped and guess > 0 and int.from_bytes(h[8:16], "big") / _U64 < guess
    return skipped, right, h


class HashCheat:
    """Skips a fraction ``rate`` of every job it receives (it cannot tell kinds apart).

    Whether job ``j`` is skipped is ``sha256(salt, j.job_id) < rate``: as random as the
    job ids are, and recomputable by the simulator. A skipped job returns the honest
    output with probability ``guess`` (a lucky guess), else a distinct wrong array that no
    other node's output ever equals.
    """

    def __init__(self, rate: float, salt: bytes, guess: float = 0.0) -> None:
        if not 0.0 <= rate <= 1.0 or not 0.0 <= guess <= 1.0:
            raise ValueError("rate and guess must be in [0, 1]")
        self.rate = float(rate)
        self.guess = float(guess)
        self.salt = bytes(salt)

    def outputs(self, jobs: Sequence[Job], compute: Callable[[Sequence[Any]], list[Any]]
                ) -> list[Any]:
        out: list[Any] = [None] * len(jobs)
        honest: list[int] = []
        for i, j in enumerate(jobs):
            skipped, right, h = cheat_decision(self.salt, j.job_id, self.rate, self.guess)
            if not skipped:
                honest.append(i)
            elif right:
                out[i] = honest_output(int(j.input))  # guessed, not computed
            else:
                out[i] = np.frombuffer(h[:16], np.uint32).astype(np.float32) + 0.5
        if honest:
            for i, o in zip(honest, compute([jobs[i].input for i in honest]), strict=True):
                out[i] = o
        return out

    def __repr__(self) -> str:
        return f"HashCheat({self.rate}, guess={self.guess})"


class _LoggingScheduler(Scheduler):
    """The runtime's scheduler, noting per node every job it dispatches, in order.

    A node actor runs one caller's calls in submission order, so this is the order in
    which the node receives its jobs. Each entry is ``(job_id, task, role)``; a decoy
    (a job the protocol did not issue) has task -1 and role None.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.received: dict[bytes, list[tuple[bytes, int, Role | None]]] = {}

    def next_batch(self, node: bytes, *, force: bool = False) -> Batch | None:
        batch = super().next_batch(node, force=force)
        if batch is not None:
            log = self.received.setdefault(node, [])
            for j in batch.jobs:
                info = None if j.job_id in batch.decoys else self.protocol.job(j.job_id)
                log.append((j.job_id, -1, None) if info is None else (j.job_id, info[0], info[2]))
        return batch


def _check(s: Scenario) -> tuple[float, float]:
    """The cheaters' constant skip rate and guess accuracy, or ConfigError."""
    if s.collusion > 0:
        raise ConfigError(
            "--collusion must be 0 on the ray engine: it has no collusion ring (ring members "
            "would need an out-of-band channel between node actors); use the event or "
            "montecarlo engine",
            key="collusion")
    if s.nodes > MAX_NODES:
        raise ConfigError(f"--nodes: the ray engine runs one actor per node, at most {MAX_NODES}, "
                          f"got {s.nodes} (use the event or montecarlo engine)", key="nodes")
    cheat, honest = scenario_strategies(s)
    if honest.crash_rate or cheat.crash_rate:
        raise ConfigError("--crash-rate: the ray engine does not simulate crashes (a crashed actor is "
                          "gone for the rest of the run); use the event engine",
                          key="crash_rate")
    if cheat.rejoins or honest.rejoins:
        raise ConfigError("--strategy: the ray engine does not rejoin ejected nodes under new identities; "
                          "use the event or montecarlo engine", key="strategy")
    rate = cheat.theory_skip_rate(s) if s.cheaters else 0.0
    fresh = NodeView(np.array([0]), np.array([float(s.bond)]), np.array([0]), np.array([0]))
    if rate is None or (s.cheaters and float(cheat.skip_rate(fresh)[0]) != rate):
        raise ConfigError(
            f"--strategy: the ray engine runs strategies with a constant skip rate only ({s.strategy} "
            "depends on the node's state, which its actor cannot see); use the event engine",
            key="strategy")
    return float(rate), float(cheat.guess_accuracy)


def run_ray(s: Scenario, env: Environment,
            progress: Callable[[int, int], None] | None = None) -> Observations:
    rate, guess = _check(s)
    import ray

    started = False
    if not ray.is_initialized():
        os.environ.setdefault("RAY_DEDUP_LOGS", "0")
        ray.init(num_cpus=max(os.cpu_count() or 1, s.nodes), include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
        started = True
    try:
        parts = [_one_run(s, env, r, rate, guess, progress) for r in range(s.runs)]
    finally:
        if started:
            ray.shutdown()
    cat = {f: np.concatenate([getattr(p, f) for p in parts]) for f in (
        "cheater", "honest", "first_catch", "undetected", "jobs", "profit", "first_jobs",
        "first_skipped", "first_slashed")}
    extra_keys = ("job_events", "jobs_dispatched", "decoys", "tasks", "sampled", "slashes")
    extra: dict[str, Any] = {k: sum(p.extra[k] for p in parts) for k in extra_keys}
    sa = [x for p in parts for x in p.extra["slashed_after"]]
    extra["cheater_slashed_after_mean"] = float(np.mean(sa)) if sa else None
    return Observations(
        **cat, disputes=sum(p.disputes for p in parts),
        disputes_honest_slashed=sum(p.disputes_honest_slashed for p in parts),
        reentries=0,
        series={k: [v for p in parts for v in p.series[k]]
                for k in ("cheater_stake", "honest_stake")},
        extra=extra)


def _one_run(s: Scenario, env: Environment, run: int, rate: float, guess: float,
             progress: Callable[[int, int], None] | None) -> Observations:
    from posp.runtime import Cluster, NodeSpec

    M, N, B = s.nodes, s.tasks_per_node, s.batch_size
    W = WARMUP_BATCHES * B
    rng = env.stream(f"ray/{run}")
    salts = [env.seed_bytes(f"ray/{run}/salt/{i}") for i in range(M)]
    specs = [
        NodeSpec(ToyWorkload(), threads=1, key_seed=env.seed_bytes(f"ray/{run}/node/{i}"),
                 behaviour=HashCheat(rate, salts[i], guess) if i < s.cheaters and rate > 0
                 else None,
                 role="cheater" if i < s.cheaters else "honest")
        for i in range(M)
    ]
    params = ProtocolParams(validators=s.validators, arbiters=s.arbiters, reward=s.reward,
                            validator_reward=s.reward, slash=s.slash, bond=s.bond)
    with tempfile.TemporaryDirectory(prefix="posp-sim-ray-") as tmp:
        path = Path(tmp) / "ledger.db"
        # the ledger fixes min_bond and the challenger share at creation
        Ledger(path, min_bond=s.min_bond, challenger_share=s.challenger_share).close()
        seed = int(rng.integers(1 << 62))
        with Cluster(nodes=specs, sample_rate=s.sample_rate, params=params,
                     comparator=Exact(), ledger=path, batch_size=B, seed=seed) as c:
            ids = random.Random(seed ^ 0x1D5)
            sched = _LoggingScheduler(
                c.protocol, batch_size=B, rng=random.Random(seed ^ 0x5EED),
                job_ids=lambda: ids.randbytes(16))
            c.scheduler = sched
            publics = list(c.nodes)  # spec order
            index = {pub: i for i, pub in enumerate(publics)}
            # jobs per task in steady state: 1 + p n + p delta k (delta <= 1)
            per_task = 1 + s.sample_rate * s.validators * (1 + 0.25 * s.arbiters)
            next_x = 0
            results = []

            def received(pub: bytes) -> int:
                return sum(1 for _j, t, _r in sched.received.get(pub, ()) if t >= 0)

            while True:
                live = [p for p in publics if c.protocol.is_active(p)]
                short = sum(max(0, W + N - received(p)) for p in live)
                if not short or len(live) < 2:
                    break
                count = math.ceil(short / per_task * 1.1) + 2 * B * len(live)
                xs = list(range(next_x, next_x + count))
                next_x += count
                done0 = run * M * N

                def prog(done: int, total: int, _d0: int = done0) -> None:
                    if progress is not None:
                        progress(_d0 + min(M * N, done), s.runs * M * N)

                results += c.map(xs, progress=prog)
            stats = dict(c.protocol.stats)
            pay = ledger_amounts(c.ledger)
            slash_events = [ev for ev in c.ledger.events() if ev.kind == "slash"]
            balances = {p: c.ledger.balance(p) for p in publics}
            slashed_after = [c.nodes[p].slashed_after for p in publics[:s.cheaters]
                             if c.nodes[p].slashed_after is not None]
            dispatched = c.jobs_dispatched
            # an unsampled first execution earns its share of its batch's reward (ref: the
            # batch commitment); every other job what its task's settlements paid or
            # slashed its node (ref: the task's first job, below)
            batch_of: dict[int, str] = {}
            unsampled: dict[str, int] = {}
            for r in results:
                if r.state is State.NOT_SAMPLED and r.receipt_ref is not None:
                    ch = r.receipt.batch.commitment.hex()
                    batch_of[r.task] = ch
                    unsampled[ch] = unsampled.get(ch, 0) + 1
    # ---- which (task, node) got slashed: slash events name the task by its first job id
    first_job_of: dict[int, bytes] = {}
    for log in sched.received.values():
        for jid, task, role in log:
            if role is Role.FIRST:
                first_job_of[task] = jid  # a re-issued first job replaces the earlier one
    ref_of_task = {t: jid.hex() for t, jid in first_job_of.items()}
    task_of_ref = {ref: t for t, ref in ref_of_task.items()}
    slashed: set[tuple[int, bytes]] = set()
    by_ref: dict[str, set[bytes]] = {}
    for ev in slash_events:
        t = task_of_ref.get(ev["ref"])
        if t is not None:
            slashed.add((t, ev["node"]))
        by_ref.setdefault(ev["ref"], set()).add(ev["node"])
    honest_slashed = sum(
        1 for nodes in by_ref.values()
        if any(n in index and index[n] >= s.cheaters for n in nodes))

    first_catch = np.zeros(M, np.int64)
    undetected = np.zeros(M, np.int64)
    jobs = np.zeros(M, np.int64)
    profit = np.zeros(M)
    first_jobs = np.zeros(M, np.int64)
    first_skipped = np.zeros(M, np.int64)
    first_slashed = np.zeros(M, np.int64)
    decoys = 0
    total = 0
    for pub, log in sched.received.items():
        i = index[pub]
        cheats = i < s.cheaters and rate > 0
        real = [(jid, t, role) for jid, t, role in log if t >= 0]
        decoys += len(log) - len(real)
        total += len(real)
        passed = 0
        for idx, (jid, t, role) in enumerate(real[W:W + N], start=1):
            skipped = cheats and cheat_decision(salts[i], jid, rate, guess)[0]
            hit = (t, pub) in slashed
            jobs[i] += 1
            if role is Role.FIRST and t in batch_of:
                ch = batch_of[t]
                profit[i] += pay.get((ch, pub), 0) / unsampled[ch]
            else:
                profit[i] += pay.get((ref_of_task[t], pub), 0)
            profit[i] -= 0 if skipped else s.cost
            if role is Role.FIRST:
                first_jobs[i] += 1
                first_skipped[i] += skipped
                first_slashed[i] += hit
            if hit and not first_catch[i]:
                first_catch[i] = idx
                undetected[i] = passed
            elif skipped and not hit and not first_catch[i]:
                passed += 1
    stakes = np.array([balances[p] for p in publics], np.float64)
    return Observations(
        cheater=np.arange(M) < s.cheaters, honest=np.arange(M) >= s.cheaters,
        first_catch=first_catch, undetected=undetected, jobs=jobs, profit=profit,
        first_jobs=first_jobs, first_skipped=first_skipped, first_slashed=first_slashed,
        disputes=int(stats.get("disputes", 0)), disputes_honest_slashed=honest_slashed,
        series={"cheater_stake": [float(stakes[:s.cheaters].mean())] if s.cheaters else [],
                "honest_stake": [float(stakes[s.cheaters:].mean())] if s.cheaters < M else []},
        extra={"job_events": total, "jobs_dispatched": dispatched, "decoys": decoys,
               "tasks": next_x, "sampled": int(stats.get("sampled", 0)),
               "slashes": int(stats.get("slashes", 0)), "slashed_after": slashed_after})
