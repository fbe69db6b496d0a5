"""The event engine: every job through the real node, protocol and ledger code, no Ray.

Nodes are :class:`posp.node.NodeCore` objects whose behaviour is a simulator strategy
(:class:`SimBehaviour`); the coordinator is :class:`posp.protocol.Protocol` with an
in-memory :class:`posp.ledger.Ledger`. The simulator replaces only transport and the
clock: each round, every active node receives one batch (its queued validation and
arbitration jobs, plus ``batch_size`` new tasks, shuffled), signs it, and the protocol
decides sampling, validators, arbiters, verdicts, slashes and ejections as it would in
production. At the end of a round, :meth:`~posp.protocol.Protocol.flush` commits the
round's settlements to the ledger in one group (the runtime's group commit); only then
are results final and seen by the nodes' strategies. Inputs and outputs are small ints,
so per-job cost is the protocol's own; the engine's own bookkeeping is a few list
operations per batch, and its metrics are computed once, over arrays, after the run.

Time axis: the first ``WARMUP_ROUNDS`` rounds count in no metric (no validation work
exists yet); a node's metrics cover the first N jobs it receives after them (the
re-executions still queued when new work stops come after those). Profit is what the
ledger paid and slashed (:mod:`sim.ledgerpay`), not a copy of the payment rules.
"""

from __future__ import annotations

import contextlib
import gc
import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from posp.compare import Exact
from posp.digest import digest_many
from posp.identity import NodeKey
from posp.ledger import Ledger
from posp.node import Job, NodeCore
from posp.protocol import Assignment, Protocol, ProtocolParams, Role, State
from posp.receipts import capture_profile
from posp.sampling import EpochSeed, UniformPolicy

from .env import Environment
from .ledgerpay import ledger_amounts
from .metrics import Observations
from .scenario import Scenario
from .strategies import NodeView, Strategy, scenario_strategies

__all__ = ["WARMUP_ROUNDS", "SimBehaviour", "run_event"]

#: rounds run before measuring, so that the first measured batches already mix in
#: validation and arbitration jobs (a network in steady state, as in the Monte-Carlo
#: engine and the theory); jobs of these rounds count in no metric
WARMUP_ROUNDS = 3

#: the cyclic garbage collector's young-generation threshold while the engine runs
GC_YOUNG_THRESHOLD = 100_000


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
        self.behaviour: SimBehaviour | None = None
        self.active = True
        self.jobs = 0
        self.unsampled_run = 0
        self.slashes = 0


class SimBehaviour:
    """A node :class:`~posp.node.Behaviour` driven by a simulator strategy.

    It never sees a job's role. Ring members share outputs out of band, keyed by input:
    the first ring member to hold an output for an input posts it, and every later ring
    member that receives that input returns it (so ring members confirm each other).

    After each batch, ``skipped`` says which jobs were skipped (None: none was) and
    ``computed`` which were computed honestly (None: all were; a ring member's copy of the
    ring's output is neither); the engine reads both for its metrics.
    """

    def __init__(self, slot: _Slot, rng: np.random.Generator, ring_channel: dict[int, Any],
                 stake: Callable[[], float]) -> None:
        self.slot = slot
        self.stake = stake
        self.rng = rng
        self.ring_channel = ring_channel
        self.skipped: list[bool] | None = None
        self.computed: list[bool] | None = None

    def outputs(self, jobs: Sequence[Job], compute: Callable[[Sequence[Any]], list[Any]]
                ) -> list[Any]:
        sl = self.slot
        st = sl.strategy
        n = len(jobs)
        rate = 0.0
        if sl.cheater:
            view = NodeView(np.array([sl.jobs]), np.array([self.stake()]),
                            np.array([sl.unsampled_run]), np.array([sl.slashes]))
            rate = float(st.skip_rate(view)[0])
        if not sl.ring:
            # the common case: one draw per job, honest jobs computed in one call
            if not rate:
                self.skipped = None
                self.computed = None
                return compute([j.input for j in jobs])
            rng = self.rng
            skip: list[bool] = (rng.random(n) < rate).tolist()
            out: list[Any] = [None] * n
            honest = [i for i in range(n) if not skip[i]]
            if honest:
                for i, o in zip(honest, compute([jobs[i].input for i in honest]), strict=True):
                    out[i] = o
            acc = st.guess_accuracy
            for i in range(n):
                if skip[i]:
                    x = jobs[i].input
                    out[i] = honest_output(x) if acc and rng.random() < acc else \
                        int(rng.integers(1 << 40, 1 << 62))
            self.skipped = skip
            self.computed = [not x for x in skip]
            return out
        out = []
        skipped: list[bool] = []
        computed: list[bool] = []
        channel = self.ring_channel
        for j in jobs:
            key = j.input
            if key in channel:
                out.append(channel[key])
                skipped.append(False)
                computed.append(False)
                continue
            if rate and self.rng.random() < rate:
                right = st.guess_accuracy and self.rng.random() < st.guess_accuracy
                o = honest_output(j.input) if right else ring_output(j.input)
                skipped.append(True)
                computed.append(False)
            else:
                o = compute([j.input])[0]
                skipped.append(False)
                computed.append(True)
            channel[key] = o
            out.append(o)
        self.skipped = skipped
        self.computed = computed
        return out


def _runner(xs: Sequence[Any]) -> list[Any]:
    return [x * 3 + 1 for x in xs]  # honest_output, inlined: one call per batch


@contextlib.contextmanager
def _rare_collections(young: int = GC_YOUNG_THRESHOLD) -> Iterator[None]:
    """Run the cyclic garbage collector less often: every ``young`` net allocations.

    An event run allocates a few dozen small containers per job (protocol and ledger
    state) and creates next to no reference cycles, yet with the default threshold
    (700) the collector's repeated scans of the ever larger older generations took 8%
    (batch 64) to 17% (batch 256) of the engine's CPU time. Objects outside cycles are
    still freed at once by reference counting; the thresholds in force are restored on
    exit. No result depends on when the collector runs.
    """
    old = gc.get_threshold()
    gc.set_threshold(max(old[0], young), old[1], old[2])
    try:
        yield
    finally:
        gc.set_threshold(*old)


def run_event(s: Scenario, env: Environment,
              progress: Callable[[int, int], None] | None = None) -> Observations:
    digests: list[bytes] = []  # input x -> its digest; every run draws inputs 0, 1, ...
    with _rare_collections():
        parts = [_one_run(s, env, r, progress, digests) for r in range(s.runs)]
    cat = {f: np.concatenate([getattr(p, f) for p in parts]) for f in (
        "cheater", "honest", "first_catch", "undetected", "jobs", "profit", "first_jobs",
        "first_skipped", "first_slashed")}
    return Observations(
        **cat, disputes=sum(p.disputes for p in parts),
        disputes_honest_slashed=sum(p.disputes_honest_slashed for p in parts),
        reentries=sum(p.reentries for p in parts), series=parts[0].series,
        extra={"job_events": sum(p.extra["job_events"] for p in parts)})


def _one_run(s: Scenario, env: Environment, run: int,
             progress: Callable[[int, int], None] | None,
             digests: list[bytes] | None = None) -> Observations:
    rng = env.stream(f"event/{run}")
    prng = random.Random(int(rng.integers(1 << 62)))
    getrandbits = prng.getrandbits
    cheat_st, honest_st = scenario_strategies(s)
    key = NodeKey.from_seed(env.seed_bytes(f"coordinator/{run}"))
    ledger = Ledger(":memory:", coordinator_key=key, min_bond=s.min_bond,
                    challenger_share=s.challenger_share)
    proto = Protocol(
        ledger=ledger, comparator=Exact(), policy=UniformPolicy(s.sample_rate),
        params=ProtocolParams(validators=s.validators, arbiters=s.arbiters, reward=s.reward,
                              validator_reward=s.reward, slash=s.slash, bond=s.bond),
        # the bytes of prng.randbytes(16), without its Python frame (one id per job)
        rng=prng, job_ids=lambda: getrandbits(128).to_bytes(16, "little"),
        epoch_seed=EpochSeed(env.seed_bytes(f"epoch/{run}")),
    )
    profile = capture_profile(threads=1, batched=False, libraries=("numpy",))
    ring_channel: dict[int, Any] = {}
    M, N, B = s.nodes, s.tasks_per_node, s.batch_size
    slots = [_Slot(i, cheat_st if i < s.cheaters else honest_st, i < s.ring_size,
                   i < s.cheaters) for i in range(M)]
    owner: dict[bytes, _Slot] = {}
    ident: dict[bytes, int] = {}  # node key -> identity number within this run
    ident_first: list[bool] = []  # per identity number: its slot's first identity
    identities = 0
    rounds = 0
    nodes = proto.nodes

    def join(sl: _Slot) -> None:
        nonlocal identities
        identities += 1
        k = NodeKey.from_seed(env.seed_bytes(f"node/{run}/{sl.index}/{identities}"))
        pub = bytes(k.public)
        sl.behaviour = SimBehaviour(sl, rng, ring_channel, lambda: float(nodes[pub].stake))
        sl.core = NodeCore(k, profile, _runner, sl.behaviour)
        ident[pub] = len(ident_first)
        ident_first.append(not sl.publics)
        sl.publics.append(pub)
        owner[pub] = sl
        proto.register(pub, sl.core.profile_digest)

    for sl in slots:
        join(sl)
    proto.open_epoch()
    proto.flush()

    queue: dict[bytes, list[Assignment]] = {}
    inputs_by_task: dict[int, int] = {}
    # the measured jobs, flat in run order: task, first execution?, skipped; and per batch
    # (slot, identity number, the slot's index of its first job, jobs)
    rec_task: list[int] = []
    rec_first: list[bool] = []
    rec_skip: list[bool] = []
    rec_comp: list[bool] = []
    rec_batch: list[tuple[int, int, int, int]] = []
    rec_commit: list[Any] = []  # each measured batch's commitment (its reward's ref)
    task_ref: dict[int, bytes] = {}  # sampled task -> its first job id (its settlements' ref)
    slashed: set[tuple[int, bytes]] = set()
    disputes_honest = 0
    reentries = 0
    total_jobs = 0
    next_input = 0
    series_c: list[float] = []
    series_h: list[float] = []
    if digests is None:
        digests = []
    FIRST = Role.FIRST
    NOT_SAMPLED = State.NOT_SAMPLED
    new_task, job_of = proto.new_task, proto.job
    issue_firsts = proto.first_jobs  # first executions of a batch's new tasks, one call
    is_active = proto.is_active

    def enqueue(assignments: list[Assignment]) -> None:
        for a in assignments:
            queue.setdefault(a.node, []).append(a)

    def settle() -> None:
        nonlocal disputes_honest
        for r in proto.flush():
            if r.state is not NOT_SAMPLED:
                owner[r.asserter].unsampled_run = 0
                jid = r.job_id
                if jid is not None:
                    task_ref[r.task] = jid
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
        for i in rng.permutation(M).tolist():
            sl = slots[i]
            core, beh = sl.core, sl.behaviour
            if not sl.active or core is None or beh is None:
                continue
            pub = core.public
            if not is_active(pub):
                continue
            # the batch as columns: job ids, tasks, first executions? (queued jobs first)
            mine = queue.pop(pub, None)
            kept = [a for a in mine if job_of(a.job_id) is not None] if mine else []
            ids = [a.job_id for a in kept]
            tasks = [a.task for a in kept]
            first = [a.role is FIRST for a in kept]
            if new_work:
                lo, hi = next_input, next_input + B
                if len(digests) < hi:
                    digests.extend(digest_many("input", list(range(len(digests), hi))))
                tids = [new_task(d) for d in digests[lo:hi]]
                ids += issue_firsts(tids, pub)
                tasks += tids
                first += [True] * B
                inputs_by_task.update(zip(tids, range(lo, hi), strict=True))
                next_input = hi
            n = len(ids)
            if not n:
                continue
            order = rng.permutation(n).tolist()
            ids = [ids[j] for j in order]
            tasks = [tasks[j] for j in order]
            first = [first[j] for j in order]
            jobs = [Job(j, inputs_by_task[t]) for j, t in zip(ids, tasks, strict=True)]
            if sl.strategy.crash_rate and rng.random() < 1 - (1 - sl.strategy.crash_rate) ** n:
                # a crash: liveness, never a slash; the node restarts as a new identity.
                # Its jobs are received (unpaid, free) and count once warm-up is over
                if not warming:
                    sl.jobs += n
                total_jobs += n
                enqueue(proto.on_node_failure(pub))
                join(sl)
                continue
            res = core.run_batch(jobs)
            if not warming:
                rec_task += tasks
                rec_first += first
                rec_skip.extend(beh.skipped or [False] * n)
                rec_comp.extend(beh.computed or [True] * n)
                rec_batch.append((sl.index, ident[pub], sl.jobs + 1, n))
                rec_commit.append(res.batch)
                sl.unsampled_run += sum(first)
                sl.jobs += n
            total_jobs += n
            follow = proto.on_batch(pub, res.batch, res.receipts, res.outputs)
            enqueue(follow)
            enqueue(proto.take_reissued())
            if nodes[pub].ejected:
                if sl.strategy.rejoins:
                    reentries += 1
                    join(sl)
                else:
                    sl.active = False
        # the round's settlements in one ledger group (the runtime's group commit): results,
        # and what nodes learn from them, are final only after the flush
        settle()
        # ejections caused by other nodes' batches
        for sl in slots:
            if sl.active and sl.core is not None and nodes[sl.core.public].ejected:
                if sl.strategy.rejoins:
                    reentries += 1
                    join(sl)
                else:
                    sl.active = False
        stakes = [nodes[sl.publics[-1]].stake for sl in slots]
        series_c.append(float(np.mean(stakes[:s.cheaters])) if s.cheaters else float("nan"))
        series_h.append(float(np.mean(stakes[s.cheaters:])) if s.cheaters < M else float("nan"))
        if progress is not None:
            progress(run * M * N + sum(min(sl.jobs, N) for sl in slots), s.runs * M * N)
    settle()
    ledger_pay = ledger_amounts(ledger)
    ledger.close()

    # ---- per-slot observations from the job log and the protocol's slashes
    (first_catch, undetected, first_jobs, first_skipped,
     first_slashed) = _job_metrics(s, rec_task, rec_first, rec_skip, rec_batch, ident,
                                   ident_first, slashed)
    by_ident = {i: pub for pub, i in ident.items()}
    income, computed = _profit(M, N, rec_task, rec_first, rec_comp, rec_batch, rec_commit,
                               by_ident, task_ref, ledger_pay)
    profit = income - s.cost * computed
    return Observations(
        cheater=np.array([sl.cheater for sl in slots]),
        honest=np.array([not sl.cheater and not sl.ring for sl in slots]),
        first_catch=first_catch, undetected=undetected,
        jobs=np.array([min(sl.jobs, N) for sl in slots], np.int64), profit=profit,
        first_jobs=first_jobs, first_skipped=first_skipped, first_slashed=first_slashed,
        disputes=proto.stats["disputes"], disputes_honest_slashed=disputes_honest,
        reentries=reentries, series={"cheater_stake": series_c, "honest_stake": series_h},
        extra={"job_events": total_jobs, "rounds": rounds})


def _profit(M: int, N: int, tasks: list[int], first: list[bool], computed: list[bool],
            batches: list[tuple[int, int, int, int]], commits: list[Any],
            by_ident: dict[int, bytes], task_ref: dict[int, bytes],
            pay: dict[tuple[str, bytes], int]) -> tuple[np.ndarray, np.ndarray]:
    """Each slot's ledger income and jobs computed over its first N measured jobs (the N
    jobs it receives; jobs after them, such as the re-executions left when new work has
    stopped, count in no metric, as in the other engines).

    Income is what the ledger settled: an unsampled first execution its share of its
    batch's reward (referenced by the batch commitment), a job of a sampled task whatever
    that task's settlements paid or slashed the job's identity (referenced by the task's
    first job), so a dispute without a majority pays neither party and a slash takes at
    most the stake, as the core decided."""
    income = np.zeros(M)
    done = np.zeros(M)
    pos = 0
    for (slot, iid, start, n), batch in zip(batches, commits, strict=True):
        end = pos + n
        inside = min(n, N - start + 1)  # the batch's jobs among the slot's first N
        if inside > 0:
            pub = by_ident[iid]
            unsampled = sum(1 for t, f in zip(tasks[pos:end], first[pos:end], strict=True)
                            if f and t not in task_ref)
            share = pay.get((batch.commitment.hex(), pub), 0) / unsampled if unsampled else 0
            acc = 0.0
            for k in range(pos, pos + inside):
                jid = task_ref.get(tasks[k])
                if jid is not None:
                    acc += pay.get((jid.hex(), pub), 0)
                elif first[k]:
                    acc += share
            income[slot] += acc
            done[slot] += sum(computed[pos:pos + inside])
        pos = end
    return income, done


def _job_metrics(s: Scenario, task: list[int], first: list[bool], skip: list[bool],
                 batches: list[tuple[int, int, int, int]], ident: dict[bytes, int],
                 ident_first: list[bool], slashed: set[tuple[int, bytes]],
                 ) -> tuple[np.ndarray, ...]:
    """Per-slot detection and first-execution figures from the measured jobs (arrays over
    every job at once): first_catch, undetected, first_jobs, first_skipped,
    first_slashed."""
    M = s.nodes
    b = np.array(batches, np.int64).reshape(-1, 4)
    counts = b[:, 3]
    slot = np.repeat(b[:, 0], counts)
    iid = np.repeat(b[:, 1], counts)
    # each job's 1-based index among its slot's jobs: the batch's first index + position
    idx = np.repeat(b[:, 2] - (np.cumsum(counts) - counts), counts) + np.arange(len(slot))
    tasks = np.array(task, np.int64)
    is_first = np.array(first, bool)
    skipped = np.array(skip, bool)
    n_id = max(len(ident_first), 1)
    if slashed:
        keys = np.array([t * n_id + ident[p] for t, p in slashed], np.int64)
        hit = np.isin(tasks * n_id + iid, keys)
    else:
        hit = np.zeros(len(tasks), bool)
    # detection metrics: the slot's first identity only
    own = np.array(ident_first, bool)[iid] if len(iid) else np.zeros(0, bool)
    never = np.iinfo(np.int64).max
    catch = np.full(M, never, np.int64)
    h = own & hit
    np.minimum.at(catch, slot[h], idx[h])
    caught = catch < never
    first_catch = np.where(caught, catch, 0)
    before = own & skipped & ~hit & caught[slot] & (idx < catch[slot])
    undetected = np.bincount(slot[before], minlength=M).astype(np.int64)
    first_jobs = np.bincount(slot[is_first], minlength=M).astype(np.int64)
    first_skipped = np.bincount(slot[is_first & skipped], minlength=M).astype(np.int64)
    first_slashed = np.bincount(slot[is_first & hit], minlength=M).astype(np.int64)
    return first_catch, undetected, first_jobs, first_skipped, first_slashed
