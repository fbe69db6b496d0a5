"""The event engine: every job through the real node, protocol and ledger code, no Ray.

Nodes are :class:`posp.node.NodeCore` objects whose behaviour is a simulator strategy
(:class:`SimBehaviour`); the coordinator is :class:`posp.protocol.Protocol` with an
in-memory :class:`posp.ledger.Ledger`. The simulator replaces only transport and the
clock: each round, every active node receives one batch (its queued validation and
arbitration jobs, plus ``batch_size`` new tasks, shuffled), signs it, and the protocol
decides sampling, validators, arbiters, verdicts, slashes and ejections as it would in
production. Inputs and outputs are small ints, so per-job cost is the protocol's own.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from posp.compare import Exact
from posp.digest import digest_value
from posp.identity import NodeKey
from posp.ledger import Ledger
from posp.node import Job, NodeCore
from posp.protocol import Assignment, Protocol, ProtocolParams, Role, State
from posp.receipts import capture_profile
from posp.sampling import EpochSeed, UniformPolicy

from .env import Environment
from .metrics import Observations
from .scenario import Scenario
from .strategies import NodeView, Strategy, scenario_strategies

__all__ = ["WARMUP_ROUNDS", "SimBehaviour", "run_event"]

#: rounds run before measuring, so that the first measured batches already mix in
#: validation and arbitration jobs (a network in steady state, as in the Monte-Carlo
#: engine and the theory); jobs of these rounds count in no metric
WARMUP_ROUNDS = 3


def honest_output(x: int) -> int:
    return x * 3 + 1


def ring_output(x: int) -> int:
    return -x - 7


class _Slot:
    """One node position of a run: its strategy and its current identity."""

    def __init__(self, index: int, strategy: Strategy, ring: bool, cheater: bool) -> None:
        self.index = index
        self.strategy = strategy
        self.ring = ring
        self.cheater = cheater
        self.publics: list[bytes] = []
        self.core: NodeCore | None = None
        self.active = True
        self.jobs = 0
        self.computed = 0
        self.unsampled_run = 0
        self.slashes = 0


class SimBehaviour:
    """A node :class:`~posp.node.Behaviour` driven by a simulator strategy.

    It never sees a job's role. Ring members share outputs out of band, keyed by input:
    the first ring member to hold an output for an input posts it, and every later ring
    member that receives that input returns it (so ring members confirm each other).
    """

    def __init__(self, slot: _Slot, rng: np.random.Generator, ring_channel: dict[int, Any],
                 log: list[tuple[bool, bool]], stake: Callable[[], float]) -> None:
        self.slot = slot
        self.stake = stake
        self.rng = rng
        self.ring_channel = ring_channel
        self.log = log  # (skipped, computed) per job of the last batch

    def outputs(self, jobs: Sequence[Job], compute: Callable[[Sequence[Any]], list[Any]]
                ) -> list[Any]:
        sl = self.slot
        st = sl.strategy
        log = self.log
        log.clear()
        n = len(jobs)
        rate = 0.0
        if sl.cheater:
            view = NodeView(np.array([sl.jobs]), np.array([self.stake()]),
                            np.array([sl.unsampled_run]), np.array([sl.slashes]))
            rate = float(st.skip_rate(view)[0])
        if not sl.ring:
            # the common case: one draw per job, honest jobs computed in one call
            if not rate:
                log.extend([(False, True)] * n)
                return compute([j.input for j in jobs])
            skip = (self.rng.random(n) < rate).tolist()
            out: list[Any] = [None] * n
            honest = [i for i in range(n) if not skip[i]]
            if honest:
                for i, o in zip(honest, compute([jobs[i].input for i in honest]), strict=True):
                    out[i] = o
            acc = st.guess_accuracy
            for i in range(n):
                if skip[i]:
                    x = jobs[i].input
                    out[i] = honest_output(x) if acc and self.rng.random() < acc else \
                        int(self.rng.integers(1 << 40, 1 << 62))
                    log.append((True, False))
                else:
                    log.append((False, True))
            return out
        out = []
        for j in jobs:
            key = j.input
            if key in self.ring_channel:
                out.append(self.ring_channel[key])
                log.append((False, False))
                continue
            if rate and self.rng.random() < rate:
                right = st.guess_accuracy and self.rng.random() < st.guess_accuracy
                o = honest_output(j.input) if right else ring_output(j.input)
                log.append((True, False))
            else:
                o = compute([j.input])[0]
                log.append((False, True))
            self.ring_channel[key] = o
            out.append(o)
        return out


def _runner(xs: Sequence[Any]) -> list[Any]:
    return [honest_output(x) for x in xs]


def run_event(s: Scenario, env: Environment,
              progress: Callable[[int, int], None] | None = None) -> Observations:
    parts = [_one_run(s, env, r, progress) for r in range(s.runs)]
    cat = {f: np.concatenate([getattr(p, f) for p in parts]) for f in (
        "cheater", "honest", "first_catch", "undetected", "jobs", "profit", "first_jobs",
        "first_skipped", "first_slashed")}
    return Observations(
        **cat, disputes=sum(p.disputes for p in parts),
        disputes_honest_slashed=sum(p.disputes_honest_slashed for p in parts),
        reentries=sum(p.reentries for p in parts), series=parts[0].series,
        extra={"job_events": sum(p.extra["job_events"] for p in parts)})


def _one_run(s: Scenario, env: Environment, run: int,
             progress: Callable[[int, int], None] | None) -> Observations:
    rng = env.stream(f"event/{run}")
    prng = random.Random(int(rng.integers(1 << 62)))
    cheat_st, honest_st = scenario_strategies(s)
    key = NodeKey.from_seed(env.seed_bytes(f"coordinator/{run}"))
    ledger = Ledger(":memory:", coordinator_key=key, min_bond=s.min_bond,
                    challenger_share=s.challenger_share)
    proto = Protocol(
        ledger=ledger, comparator=Exact(), policy=UniformPolicy(s.sample_rate),
        params=ProtocolParams(validators=s.validators, arbiters=s.arbiters, reward=s.reward,
                              validator_reward=s.reward, slash=s.slash, bond=s.bond),
        rng=prng, job_ids=lambda: prng.randbytes(16),
        epoch_seed=EpochSeed(env.seed_bytes(f"epoch/{run}")),
    )
    profile = capture_profile(threads=1, batched=False, libraries=("numpy",))
    ring_channel: dict[int, Any] = {}
    log: list[tuple[bool, bool]] = []
    M, N = s.nodes, s.tasks_per_node
    slots = [_Slot(i, cheat_st if i < s.cheaters else honest_st, i < s.ring_size,
                   i < s.cheaters) for i in range(M)]
    owner: dict[bytes, _Slot] = {}
    identities = 0
    rounds = 0

    def join(sl: _Slot) -> None:
        nonlocal identities
        identities += 1
        k = NodeKey.from_seed(env.seed_bytes(f"node/{run}/{sl.index}/{identities}"))
        pub = bytes(k.public)
        sl.core = NodeCore(k, profile, _runner, SimBehaviour(
            sl, rng, ring_channel, log, lambda: float(proto.nodes[pub].stake),
            ))
        sl.publics.append(pub)
        owner[pub] = sl
        proto.register(pub, sl.core.profile_digest)

    for sl in slots:
        join(sl)
    proto.open_epoch()
    proto.flush()

    queue: dict[bytes, list[Assignment]] = {}
    inputs_by_task: dict[int, int] = {}
    # (task, node) -> (slot, job index within the slot, skipped, role)
    jobinfo: dict[tuple[int, bytes], tuple[_Slot, int, bool, Role]] = {}
    slashed: set[tuple[int, bytes]] = set()
    disputes_honest = 0
    reentries = 0
    total_jobs = 0
    next_input = 0
    series_c: list[float] = []
    series_h: list[float] = []

    def enqueue(assignments: list[Assignment]) -> None:
        for a in assignments:
            queue.setdefault(a.node, []).append(a)

    def settle() -> None:
        nonlocal disputes_honest
        for r in proto.flush():
            if r.state is not State.NOT_SAMPLED:
                owner[r.asserter].unsampled_run = 0
            if r.slashed:
                hon = False
                for n in r.slashed:
                    slashed.add((r.task, n))
                    o = owner[n]
                    o.slashes += 1
                    hon |= not o.cheater and not o.ring
                disputes_honest += hon

    while True:
        live = [sl for sl in slots if sl.active]
        new_work = any(sl.jobs < N for sl in live)
        warming = rounds < WARMUP_ROUNDS  # the round about to run is a warm-up round
        queued = any(queue.get(sl.core.public) for sl in live if sl.core is not None)
        if not new_work and not queued and proto.pending_tasks == 0:
            break
        rounds += 1
        if rounds > 50 * N + 1000:
            raise RuntimeError("event engine did not converge")  # never swallowed
        for i in rng.permutation(M):
            sl = slots[int(i)]
            if not sl.active or sl.core is None:
                continue
            pub = sl.core.public
            if not proto.is_active(pub):
                continue
            assigned = [a for a in queue.pop(pub, []) if proto.job(a.job_id) is not None]
            if new_work:
                for _ in range(s.batch_size):
                    x = next_input
                    next_input += 1
                    tid = proto.new_task(digest_value("input", x))
                    a = proto.first_job(tid, pub)
                    assigned.append(a)
                    inputs_by_task[tid] = x
            if not assigned:
                continue
            order = rng.permutation(len(assigned))
            assigned = [assigned[int(j)] for j in order]
            jobs = [Job(a.job_id, inputs_by_task[a.task]) for a in assigned]
            if sl.strategy.crash_rate and \
                    rng.random() < 1 - (1 - sl.strategy.crash_rate) ** len(jobs):
                # a crash: liveness, never a slash; the node restarts as a new identity
                sl.jobs += len(jobs)
                total_jobs += len(jobs)
                enqueue(proto.on_node_failure(pub))
                join(sl)
                continue
            res = sl.core.run_batch(jobs)
            for pos, a in enumerate(assigned if not warming else ()):
                skipped, computed = log[pos]
                jobinfo[(a.task, pub)] = (sl, sl.jobs + pos + 1, skipped, a.role)
                sl.computed += computed
                if a.role is Role.FIRST:
                    sl.unsampled_run += 1
            if not warming:
                sl.jobs += len(jobs)
            total_jobs += len(jobs)
            follow = proto.on_batch(pub, res.batch, res.receipts, res.outputs)
            enqueue(follow)
            enqueue(proto.take_reissued())
            settle()
            if proto.nodes[pub].ejected:
                if sl.strategy.rejoins:
                    reentries += 1
                    join(sl)
                else:
                    sl.active = False
        # ejections caused by other nodes' batches
        for sl in slots:
            if sl.active and sl.core is not None and proto.nodes[sl.core.public].ejected:
                if sl.strategy.rejoins:
                    reentries += 1
                    join(sl)
                else:
                    sl.active = False
        stakes = [proto.nodes[sl.publics[-1]].stake for sl in slots]
        series_c.append(float(np.mean(stakes[:s.cheaters])) if s.cheaters else float("nan"))
        series_h.append(float(np.mean(stakes[s.cheaters:])) if s.cheaters < M else float("nan"))
        if progress is not None:
            progress(run * M * N + sum(min(sl.jobs, N) for sl in slots), s.runs * M * N)
    settle()

    # ---- per-slot observations from the job log and the ledger
    first_catch = np.zeros(M, np.int64)
    undetected = np.zeros(M, np.int64)
    first_jobs = np.zeros(M, np.int64)
    first_skipped = np.zeros(M, np.int64)
    first_slashed = np.zeros(M, np.int64)
    per_slot: dict[int, list[tuple[int, bool, bool]]] = {}
    for (task, pub), (sl, idx, skipped, role) in jobinfo.items():
        hit = (task, pub) in slashed
        if sl.publics[0] == pub:  # detection metrics: the first identity
            per_slot.setdefault(sl.index, []).append((idx, skipped, hit))
        if role is Role.FIRST:
            first_jobs[sl.index] += 1
            first_skipped[sl.index] += skipped
            first_slashed[sl.index] += hit
    for i, evs in per_slot.items():
        hits = [idx for idx, _sk, hit in evs if hit]
        if hits:
            t = min(hits)
            first_catch[i] = t
            undetected[i] = sum(1 for idx, sk, hit in evs if idx < t and sk and not hit)
    # profit from the protocol's verdicts on the measured jobs: paid unless slashed
    profit = np.zeros(M)
    for (task, pub), (sl, _idx, _skipped, _role) in jobinfo.items():
        if (task, pub) in slashed:
            profit[sl.index] -= s.effective_slash
        else:
            profit[sl.index] += s.reward
    profit -= s.cost * np.array([sl.computed for sl in slots], dtype=np.float64)
    ledger.close()
    return Observations(
        cheater=np.array([sl.cheater for sl in slots]),
        honest=np.array([not sl.cheater and not sl.ring for sl in slots]),
        first_catch=first_catch, undetected=undetected,
        jobs=np.array([sl.jobs for sl in slots], np.int64), profit=profit,
        first_jobs=first_jobs, first_skipped=first_skipped, first_slashed=first_slashed,
        disputes=proto.stats["disputes"], disputes_honest_slashed=disputes_honest,
        reentries=reentries, series={"cheater_stake": series_c, "honest_stake": series_h},
        extra={"job_events": total_jobs, "rounds": rounds})
