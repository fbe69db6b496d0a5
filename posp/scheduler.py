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

from .digest import digest_value
from .node import BatchResult, Job, NodeCore
from .protocol import Assignment, Protocol, State, TaskResult

__all__ = ["Batch", "LocalDriver", "Outcome", "Scheduler"]


@dataclass(frozen=True)
class Batch:
    """A batch for one node: the jobs it receives, and which of them are decoys."""

    node: bytes
    jobs: tuple[Job, ...]
    decoys: frozenset[bytes]
    firsts: int = 0  # how many are first executions (the coordinator's bookkeeping)


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
        self._new_id = job_ids or (lambda: os.urandom(16))
        self._fresh: deque[int] = deque()  # tasks waiting for a first execution
        self._follow: dict[bytes, deque[Assignment]] = {}
        self.inputs: dict[int, Any] = {}
        self._recent: deque[tuple[bytes, Any]] = deque(maxlen=256)  # (first node, input)
        self.decoys_sent = 0
        self.reserve = max(1, batch_size // 2)
        # (re-executions, first executions, decoys) of recent batches, for inspection
        self.log: deque[tuple[int, int, int]] = deque(maxlen=10_000)

    def add_task(self, value: Any, *, importance: float = 1.0) -> int:
        tid = self.protocol.new_task(digest_value("input", value), importance=importance)
        self.inputs[tid] = value
        self._fresh.append(tid)
        return tid

    def add_follow_ups(self, assignments: Iterable[Assignment]) -> None:
        for a in assignments:
            # re-issued first executions go to their named node like follow-ups
            self._follow.setdefault(a.node, deque()).append(a)

    def has_fresh(self) -> bool:
        return bool(self._fresh)

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
        first executions instead of decoys. ``force`` releases the reserve (the caller
        does so when nothing else can run)."""
        jobs: list[Job] = []
        q = self._follow.get(node)
        n_follow = 0
        while q and len(jobs) < self.batch_size:
            a = q.popleft()
            if not self.protocol.is_active(node) or self.protocol.job(a.job_id) is None:
                continue
            jobs.append(Job(a.job_id, self.inputs[a.task]))
            n_follow += 1
        n_first = 0
        room = self.batch_size - len(jobs)
        open_work = self.protocol.pending_tasks > len(self._fresh)
        if open_work and not force and not n_follow:
            # keep a reserve of new tasks for the batches that will carry re-executions
            # (they take from it freely), so those travel among real first executions
            room = min(room, max(0, len(self._fresh) - self.reserve))
        while self._fresh and n_first < room:
            tid = self._fresh.popleft()
            a = self.protocol.first_job(tid, node)
            jobs.append(Job(a.job_id, self.inputs[tid]))
            self._recent.append((node, self.inputs[tid]))
            n_first += 1
        decoys: set[bytes] = set()
        if n_follow and not n_first:
            # the tail of a run: pad to a full-looking batch with decoys
            # a small batch like the last partial batch of any run: as many decoys as
            # real jobs (at least 4 jobs in all), so batch size says nothing of the role
            want = min(self.batch_size, max(n_follow * 2, 4)) - len(jobs)
            # never an input this node ran itself: seeing one again would mark the batch
            pool = [x for n, x in self._recent if n != node]
            if not pool:
                pool = [x for _n, x in self._recent] or [j.input for j in jobs]
            for _ in range(max(0, want)):
                jid = self._new_id()
                decoys.add(jid)
                jobs.append(Job(jid, self.rng.choice(pool)))
            self.rng.shuffle(jobs)
            self.decoys_sent += len(decoys)
        elif n_follow:
            self.rng.shuffle(jobs)
        if not jobs:
            return None
        self.log.append((n_follow, n_first, len(decoys)))
        return Batch(node, tuple(jobs), frozenset(decoys), n_first)

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
        tids = [
            self.scheduler.add_task(x, importance=1.0 if importance is None else importance[i])
            for i, x in enumerate(inputs)
        ]
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
                    node_id, res.batch, list(res.receipts), list(res.outputs)
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
