"""Batch composition: which jobs travel together to a node, so that roles stay hidden.

The :class:`Scheduler` turns the protocol's assignments into batches. Every batch is an
ordinary batch: first executions, validation jobs and arbitration jobs ride together in
one message list, each a :class:`~posp.node.Job` with a fresh id. Where a node's batch
would otherwise hold only re-execution jobs (the tail of a run, when no new tasks are
left), it is padded with *decoys*: re-executions of recent inputs under fresh ids whose
outputs are discarded, so that neither the batch size nor its composition tells the node
that it is validating. Both drivers use it: the Ray-free :class:`LocalDriver` below
(tests, simulator, soundness matrix) and the Ray runtime.
"""

from __future__ import annotations

import os
import random
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .digest import digest_many
from .node import BatchResult, Job, NodeCore
from .protocol import Assignment, Protocol, Role, State, TaskResult
from .receipts import JobIds

__all__ = ["Batch", "LocalDriver", "Outcome", "Scheduler"]


_RECENT = 256  # recent (node, input) pairs kept as the decoy pool


class Batch:
    """A batch for one node: its jobs' ids and inputs (two parallel tuples, what the
    node actor receives), which of them are decoys, and which are first executions
    (the coordinator's bookkeeping, never sent). ``jobs`` gives them as
    :class:`~posp.node.Job` messages."""

    __slots__ = ("node", "job_ids", "inputs", "decoys", "first_ids")

    def __init__(self, node: bytes, job_ids: Sequence[bytes], inputs: Sequence[Any],
                 decoys: frozenset[bytes] = frozenset(),
                 first_ids: Sequence[bytes] = ()) -> None:
        if len(job_ids) != len(inputs):
            raise ValueError("one input per job id")
        self.node = node
        self.job_ids = tuple(job_ids)
        self.inputs = tuple(inputs)
        self.decoys = decoys
        self.first_ids = tuple(first_ids)

    @property
    def firsts(self) -> int:
        """How many of the jobs are first executions."""
        return len(self.first_ids)

    @property
    def jobs(self) -> tuple[Job, ...]:
        return tuple(Job(j, x) for j, x in zip(self.job_ids, self.inputs, strict=True))

    def __len__(self) -> int:
        return len(self.job_ids)

    def __repr__(self) -> str:
        return (f"Batch(node={self.node.hex()[:8]}, jobs={len(self)}, firsts={self.firsts}, "
                f"decoys={len(self.decoys)})")


@dataclass(frozen=True)
class Outcome:
    """A verified result for the user: the output (the arbitration winner if the
    asserter's was overturned), the asserter's signed receipt, and the state."""

    task: int
    output: Any
    state: State
    result: TaskResult

    @property
    def overturned(self) -> bool:
        return self.state is State.OVERTURNED


class Scheduler:
    """Queues first executions and follow-up jobs; composes blind batches per node."""

    def __init__(
        self,
        protocol: Protocol,
        *,
        batch_size: int = 64,
        rng: random.Random | None = None,
        job_ids: Callable[[], bytes] | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.protocol = protocol
        self.batch_size = batch_size
        self.rng = rng or random.Random(int.from_bytes(os.urandom(8), "big"))
        self._new_id = job_ids or JobIds()
        self._fresh: deque[int] = deque()  # tasks waiting for a first execution
        self._follow: dict[bytes, deque[Assignment]] = {}
        self.inputs: dict[int, Any] = {}
        self._recent: deque[tuple[bytes, Any]] = deque(maxlen=_RECENT)  # (first node, input)
        self.decoys_sent = 0
        self.reserve = max(1, batch_size // 2)
        # (re-executions, first executions, decoys) of recent batches, for inspection
        self.log: deque[tuple[int, int, int]] = deque(maxlen=10_000)

    def add_task(self, value: Any, *, importance: float = 1.0) -> int:
        return self.add_tasks([value], [importance])[0]

    def add_tasks(self, values: Sequence[Any],
                  importance: Sequence[float] | None = None) -> list[int]:
        """:meth:`add_task` for many inputs, their digests taken in one pass."""
        digests = digest_many("input", values)
        new_task = self.protocol.new_task
        tids = [new_task(d, importance=1.0 if importance is None else importance[i])
                for i, d in enumerate(digests)]
        self.inputs.update(zip(tids, values, strict=True))
        self._fresh.extend(tids)
        return tids

    def add_follow_ups(self, assignments: Iterable[Assignment]) -> None:
        for a in assignments:
            # re-issued first executions go to their named node like follow-ups
            self._follow.setdefault(a.node, deque()).append(a)

    def has_fresh(self) -> bool:
        return bool(self._fresh)

    def fresh_count(self) -> int:
        """How many added tasks still wait for their first execution."""
        return len(self._fresh)

    def has_work(self) -> bool:
        """New tasks, or re-executions queued for a node that can still take them."""
        if self._fresh:
            return True
        for node, q in list(self._follow.items()):
            if q and not self.protocol.is_active(node):
                q.clear()  # its jobs were re-issued elsewhere when it failed or was ejected
            if q:
                return True
        return False

    def next_batch(self, node: bytes, *, force: bool = False) -> Batch | None:
        """The next batch for ``node``: its queued re-executions first, then new tasks,
        then decoys if the batch would otherwise hold re-executions only.

        While dispatched tasks are still open, the last ``batch_size // 2`` new tasks are
        held in reserve for batches that carry re-executions, so that those travel among real
        first executions instead of decoys. Such a batch takes from the reserve only as many
        new tasks as a decoy batch would hold decoys, so that the reserve lasts for several
        rounds of re-executions and none of them waits behind a long batch of new tasks.
        ``force`` releases the reserve, a node's share of it at a time (the caller does so
        when a node would otherwise run out of work)."""
        ids: list[bytes] = []
        xs: list[Any] = []
        inputs = self.inputs
        q = self._follow.get(node)
        n_follow = 0
        refirsts: list[bytes] = []
        if q:
            active = self.protocol.is_active(node)
            job = self.protocol.job
            while q and n_follow < self.batch_size:
                a = q.popleft()
                if not active or job(a.job_id) is None:
                    continue
                ids.append(a.job_id)
                xs.append(inputs[a.task])
                if a.role is Role.FIRST:  # a first execution re-issued after a fault
                    refirsts.append(a.job_id)
                n_follow += 1
        room = self.batch_size - n_follow
        open_work = self.protocol.pending_tasks > len(self._fresh)
        if open_work:
            # keep a reserve of new tasks for the batches that will carry re-executions,
            # so those travel among real first executions; they dip into it sparingly
            free = max(0, len(self._fresh) - self.reserve)
            if force:  # released: each node its share, so that they finish together
                live = max(1, len(self.protocol.live_nodes()))
                free += -(-self.reserve // live)
            elif n_follow:
                free += self._padding(n_follow)
            room = min(room, free)
        first_ids: list[bytes] = []
        take = min(room, len(self._fresh))
        if take > 0:
            fresh = self._fresh
            tids = [fresh.popleft() for _ in range(take)]
            first_ids = self.protocol.first_jobs(tids, node)
            ids.extend(first_ids)
            new_xs = [inputs[t] for t in tids]
            xs.extend(new_xs)
            self._recent.extend([(node, x) for x in new_xs[-_RECENT:]])
        n_first = len(first_ids)
        decoys: set[bytes] = set()
        if n_follow and not n_first:
            # the tail of a run: pad to a full-looking batch with decoys
            # a small batch like the last partial batch of any run: as many decoys as
            # real jobs (at least 4 jobs in all), so batch size says nothing of the role
            want = self._padding(n_follow)
            # never an input this node ran itself: seeing one again would mark the batch
            pool = [x for n, x in self._recent if n != node]
            if not pool:
                pool = [x for _n, x in self._recent] or list(xs)
            for _ in range(max(0, want)):
                jid = self._new_id()
                decoys.add(jid)
                ids.append(jid)
                xs.append(self.rng.choice(pool))
            self.decoys_sent += len(decoys)
        if n_follow:
            order = list(range(len(ids)))
            self.rng.shuffle(order)
            ids = [ids[i] for i in order]
            xs = [xs[i] for i in order]
        if not ids:
            return None
        self.log.append((n_follow, n_first, len(decoys)))
        return Batch(node, ids, xs, frozenset(decoys), refirsts + first_ids)

    def _padding(self, n_follow: int) -> int:
        """How many jobs go beside ``n_follow`` re-executions in a batch at the tail: as
        many again, at least 4 jobs in all, at most a full batch."""
        return max(0, min(self.batch_size, max(n_follow * 2, 4)) - n_follow)

    def forget(self, task: int) -> None:
        self.inputs.pop(task, None)


class LocalDriver:
    """Runs a protocol round synchronously on in-process :class:`NodeCore` objects.

    The same rules and the same batch composition as the Ray runtime, without Ray:
    what tests, the simulator's event engine and the soundness matrix drive.
    """

    def __init__(
        self,
        nodes: Sequence[NodeCore],
        protocol: Protocol,
        *,
        batch_size: int = 64,
        rng: random.Random | None = None,
        job_ids: Callable[[], bytes] | None = None,
        register: bool = True,
    ) -> None:
        self.nodes = {n.public: n for n in nodes}
        self.protocol = protocol
        self.scheduler = Scheduler(protocol, batch_size=batch_size, rng=rng, job_ids=job_ids)
        self.crash: Callable[[bytes, Batch], bool] | None = None
        if register:
            for n in nodes:
                protocol.register(n.public, n.profile_digest)
            protocol.open_epoch()
            protocol.flush()

    def run(self, inputs: Sequence[Any], *, importance: Sequence[float] | None = None
            ) -> list[Outcome]:
        """Submit every input; return outcomes in submission order once all are settled."""
        self.protocol.require_verifiable()
        tids = self.scheduler.add_tasks(inputs, importance)
        done: dict[int, Outcome] = {}
        order = list(self.nodes)
        force = False
        while self.scheduler.has_work() or self.protocol.pending_tasks:
            progressed = False
            for node_id in order:
                if not self.protocol.is_active(node_id):
                    continue
                batch = self.scheduler.next_batch(node_id, force=force)
                if batch is None:
                    continue
                progressed = True
                if self.crash is not None and self.crash(node_id, batch):
                    self.scheduler.add_follow_ups(self.protocol.on_node_failure(node_id))
                    continue
                res: BatchResult = self.nodes[node_id].run_batch(batch.jobs)
                # decoys travel on to the protocol too: it ignores jobs it did not
                # issue, and a whole batch is checked with one root recomputation
                follow = self.protocol.on_batch(
                    node_id, res.batch, res.receipts, res.outputs
                )
                self.scheduler.add_follow_ups(follow)
                self.scheduler.add_follow_ups(self.protocol.take_reissued())
                for r in self.protocol.flush():
                    done[r.task] = Outcome(r.task, r.output, r.state, r)
                    self.scheduler.forget(r.task)
            if not progressed:
                if not self.scheduler.has_work():
                    if self.protocol.pending_tasks:
                        raise RuntimeError("protocol has pending tasks but nothing to dispatch")
                    break
                self.protocol.require_verifiable()
                if force:
                    raise RuntimeError("no node can take the remaining work")
                force = True
            else:
                force = False
        for r in self.protocol.flush():
            done[r.task] = Outcome(r.task, r.output, r.state, r)
        return [done[t] for t in tids]
