"""The long-lived verified cluster: node actors, the dispatch loop, settlement.

:class:`Cluster` starts (or joins) Ray, builds node actors from a picklable workload
factory, registers them in the stake ledger with a bond, and runs
:meth:`Cluster.map`: batches travel to nodes with several in flight per node, signed
results come back, the Ray-free :class:`~posp.protocol.Protocol` decides what is
sampled, validated, disputed and slashed, and every settlement is group-committed to the
ledger before the result is reported. Ray's errors are translated to posp's here.
"""

from __future__ import annotations

import contextlib
import os
import random
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayError, RayTaskError

from ..compare import Comparator, RelativeL2
from ..digest import digest_value
from ..errors import ClusterError, ConfigError
from ..ledger import Ledger
from ..node import BatchResult, Behaviour, Runner, pack_values
from ..protocol import Protocol, ProtocolParams, State, TaskResult
from ..receipts import ReceiptRef, SignedReceipt
from ..sampling import EpochSeed, SamplingPolicy, UniformPolicy
from ..scheduler import Batch, Scheduler
from .actor import NodeActor, NodeSpec

__all__ = ["Cluster", "MapStats", "NodeInfo", "Result"]


class Result(NamedTuple):
    """One verified result: the output, the asserter's signed receipt, the state.

    ``state`` is one of :class:`~posp.protocol.State`: ``AGREED`` (checked and agreed),
    ``NOT_SAMPLED``, ``UPHELD`` (disputed and upheld), ``OVERTURNED`` (the asserter lost
    arbitration; ``output`` is the output that won), ``UNRESOLVED``. ``receipt`` is the
    portable :class:`~posp.receipts.SignedReceipt` (receipt, Merkle proof, signed batch),
    built on first access. (Immutable; a named tuple because one is built per input.)
    """

    task: int
    output: Any
    receipt_ref: ReceiptRef | None
    state: State
    asserter: bytes

    @property
    def receipt(self) -> SignedReceipt | None:
        return None if self.receipt_ref is None else self.receipt_ref.signed()

    @property
    def checked(self) -> bool:
        return self.state in (State.AGREED, State.UPHELD, State.OVERTURNED)

    @property
    def overturned(self) -> bool:
        return self.state is State.OVERTURNED


@dataclass
class NodeInfo:
    public: bytes
    profile_digest: bytes
    profile: Any
    spec: NodeSpec
    actor: Any
    alive: bool = True
    asserted: int = 0
    slashed_after: int | None = None  # first jobs asserted when first slashed

    @property
    def id(self) -> str:
        return self.public.hex()[:16]


@dataclass(frozen=True)
class MapStats:
    """Where the wall time of one :meth:`Cluster.map` call went (``Cluster.last_map``).

    ``startup_s``: from the call to the first batch sent. ``last_first_s``: from the call
    to the last result of a first execution taken in. ``tail_s``: from then to the return:
    the re-executions of the last sampled tasks and the last ledger commit, a cost per
    call rather than per job. ``jobs`` counts every job sent (first executions,
    re-executions, decoys), ``decoys`` the padding among them.
    """

    tasks: int
    wall_s: float
    startup_s: float
    last_first_s: float
    batches: int
    jobs: int
    decoys: int

    @property
    def tail_s(self) -> float:
        return max(0.0, self.wall_s - self.last_first_s)


class Cluster:
    """Verified inference on Ray. Use as a context manager; see the README.

    ``workload`` is a picklable factory ``() -> runner`` where ``runner(inputs) ->
    outputs`` (use :func:`posp.runtime.torch_module` to wrap a torch ``nn.Module``
    factory). ``nodes`` is a count or a list of :class:`NodeSpec` (to mix thread counts,
    batched and per-job execution, or cheating behaviours). ``ledger`` is a path (a
    temporary file by default). ``address`` joins an existing Ray cluster; by default a
    local Ray instance is started and stopped again on :meth:`close`.
    """

    def __init__(
        self,
        workload: Callable[[], Runner] | None = None,
        *,
        nodes: int | Sequence[NodeSpec] = 5,
        sample_rate: float = 0.1,
        policy: SamplingPolicy | None = None,
        params: ProtocolParams | None = None,
        comparator: Comparator | Callable[[bytes, bytes], Comparator] | None = None,
        ledger: str | os.PathLike[str] | None = None,
        address: str | None = None,
        batch_size: int = 64,
        in_flight: int = 2,
        timeout_s: float = 120.0,
        flush_interval: float = 0.05,
        threads: int = 1,
        seed: int | None = None,
        num_cpus: int | None = None,
        behaviours: dict[int, Behaviour] | None = None,
    ) -> None:
        if not 0.0 <= sample_rate <= 1.0:
            raise ConfigError(f"must be in [0, 1], got {sample_rate}", key="sample_rate")
        if batch_size < 1:
            raise ConfigError("must be >= 1", key="batch_size")
        if in_flight < 1:
            raise ConfigError("must be >= 1", key="in_flight")
        if isinstance(nodes, int):
            if workload is None:
                raise ConfigError("a workload factory is needed with a node count", key="workload")
            if nodes < 1:
                raise ConfigError("must be >= 1", key="nodes")
            specs = [
                NodeSpec(workload, threads=threads, behaviour=(behaviours or {}).get(i),
                         key_seed=None if seed is None else _key_seed(seed, i))
                for i in range(nodes)
            ]
        else:
            specs = list(nodes)
        self.batch_size = batch_size
        self.in_flight = in_flight
        self.timeout_s = timeout_s
        self.flush_interval = flush_interval
        self._rng = random.Random(seed if seed is not None else int.from_bytes(os.urandom(8), "big"))
        self._started_ray = False
        self._closed = False
        self._tmpdir: tempfile.TemporaryDirectory[str] | None = None
        self.coordinator_cpu_s = 0.0
        self._ordinal: dict[bytes, int] = {}
        self._last_done: dict[bytes, float] = {}
        self._task_errors: dict[int, set[bytes]] = {}
        self._node_errors: dict[bytes, int] = {}
        self._warned_small = False
        self.jobs_dispatched = 0
        self.last_map: MapStats | None = None
        if ledger is None:
            self._tmpdir = tempfile.TemporaryDirectory(prefix="posp-")
            ledger = Path(self._tmpdir.name) / "ledger.db"
        self.ledger_path = Path(ledger)
        self._start_ray(address, num_cpus or max(os.cpu_count() or 1,
                                                 sum(s.threads for s in specs)))
        try:
            self.ledger = Ledger(self.ledger_path)
            self.nodes = self._start_nodes(specs)
            for n in self.nodes.values():
                # a factory that knows its workload refuses a profile it cannot serve
                # (posp.errors.UnsupportedProfile), before the node is bonded
                check = getattr(n.spec.factory, "check_profile", None)
                if check is not None:
                    check(n.profile)
            self.protocol = Protocol(
                ledger=self.ledger,
                comparator=comparator or _default_comparator(specs),
                policy=policy or UniformPolicy(sample_rate),
                params=params or ProtocolParams(),
                rng=random.Random(self._rng.getrandbits(64)),
                job_ids=(lambda: self._rng.randbytes(16)) if seed is not None else None,
                epoch_seed=self._recover_epochs(),
            )
            for n in self.nodes.values():
                self.protocol.register(n.public, n.profile_digest)
            self.protocol.open_epoch()
            self.protocol.flush()
        except BaseException:
            self._shutdown()
            raise
        self.scheduler = Scheduler(
            self.protocol, batch_size=batch_size,
            rng=random.Random(self._rng.getrandbits(64)),
            job_ids=(lambda: self._rng.randbytes(16)) if seed is not None else None,
        )

    # ---- lifecycle ------------------------------------------------------------------

    def _start_ray(self, address: str | None, num_cpus: int) -> None:
        try:
            if not ray.is_initialized():
                if address is None:
                    ray.init(num_cpus=num_cpus, include_dashboard=False,
                             log_to_driver=False, configure_logging=False)
                else:
                    ray.init(address=address, log_to_driver=False, configure_logging=False)
                self._started_ray = True
        except (RayError, ConnectionError, ValueError, RuntimeError) as exc:
            raise ClusterError(f"cannot start or join Ray ({address or 'local'}): {exc}") from exc

    def _start_nodes(self, specs: list[NodeSpec]) -> dict[bytes, NodeInfo]:
        want = sum(s.threads for s in specs)
        have = ray.cluster_resources().get("CPU", 0)
        if want > have:
            raise ClusterError(
                f"{len(specs)} nodes need {want} CPUs (one per torch thread) but the Ray "
                f"cluster has {have:g}; start Ray with more num_cpus or use fewer nodes"
            )
        deadline = time.monotonic() + 15.0  # actors killed just before free CPUs lazily
        while ray.available_resources().get("CPU", 0) < want and time.monotonic() < deadline:
            time.sleep(0.1)
        actors = [NodeActor.options(num_cpus=s.threads).remote(s) for s in specs]
        try:
            idents = ray.get([a.identity.remote() for a in actors], timeout=self.timeout_s)
        except (RayError, GetTimeoutError) as exc:
            for a in actors:
                with contextlib.suppress(Exception):
                    ray.kill(a)
            raise ClusterError(f"node actors failed to start: {exc}") from exc
        out: dict[bytes, NodeInfo] = {}
        for spec, actor, (pub, prof_digest, prof) in zip(specs, actors, idents, strict=True):
            if pub in out:
                raise ConfigError("two nodes share one key", key="key_seed")
            out[pub] = NodeInfo(pub, prof_digest, prof, spec, actor)
        return out

    @property
    def seed_path(self) -> Path:
        return self.ledger_path.with_name(self.ledger_path.name + ".epoch")

    def _recover_epochs(self) -> EpochSeed:
        """Reveal an epoch left open by a coordinator that stopped, then start a new seed.

        The open epoch's secret lives in a 0600 file beside the ledger; it is written
        before its commitment reaches the ledger, so a crash never strands a commitment.
        """
        open_epochs = _unrevealed_epochs(self.ledger)
        if open_epochs and self.seed_path.exists():
            old = EpochSeed.load(self.seed_path)
            with self.ledger.group() as g:
                for epoch, commitment in open_epochs:
                    if commitment == old.commitment:
                        g.epoch_reveal(epoch, bytes(old))
                    else:
                        g.note("epoch seed lost; decisions of this epoch stay unauditable",
                               [epoch])
        elif open_epochs:
            with self.ledger.group() as g:
                for epoch, _c in open_epochs:
                    g.note("epoch seed lost; decisions of this epoch stay unauditable", [epoch])
        seed = EpochSeed.generate()
        seed.save(self.seed_path)
        return seed

    def close(self) -> None:
        """Reveal the epoch's seed, commit, stop the node actors (and Ray if we started it)."""
        if self._closed:
            return
        self._closed = True
        try:
            self.protocol.close_epoch()
            self.protocol.flush()
            with contextlib.suppress(FileNotFoundError):
                self.seed_path.unlink()
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        for n in getattr(self, "nodes", {}).values():
            with contextlib.suppress(Exception):
                ray.kill(n.actor)
        if getattr(self, "ledger", None) is not None:
            with contextlib.suppress(Exception):
                self.ledger.close()
        if self._started_ray:
            with contextlib.suppress(Exception):
                ray.shutdown()
            self._started_ray = False
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- work -------------------------------------------------------------------------

    def submit(self, value: Any, *, importance: float = 1.0) -> Result:
        """Run one input; return once its settlement is committed."""
        return self.map([value], importance=[importance])[0]

    def map(
        self,
        values: Sequence[Any],
        *,
        importance: Sequence[float] | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[Result]:
        """Run many inputs; results come back in submission order, each settled.

        ``progress(done, total)`` is called as results settle. Where the call's time went
        is in :attr:`last_map` afterwards.
        """
        if self._closed:
            raise ClusterError("the cluster is closed")
        if importance is not None and len(importance) != len(values):
            raise ConfigError("one importance per input", key="importance")
        self.protocol.require_verifiable()
        self._warn_if_small()
        t_cpu = time.process_time()
        t_start = time.monotonic()
        t_sent: float | None = None  # the first batch sent
        t_first = t_start  # the last result of a first execution taken
        jobs0, decoys0 = self.jobs_dispatched, self.scheduler.decoys_sent
        batches = 0
        total = len(values)
        tids: list[int] = []
        # tasks are registered (their inputs digested) a few batches ahead of dispatch
        # rather than all before the first batch leaves: the nodes start at once, and
        # the rest is digested while they work
        ahead = (len(self.nodes) * self.in_flight + 1) * self.batch_size + self.scheduler.reserve
        done: dict[int, Result] = {}
        flight: dict[Any, tuple[NodeInfo, Batch, float]] = {}
        per_node: dict[bytes, int] = dict.fromkeys(self.nodes, 0)
        last_flush = t_start

        def top_up() -> None:
            short = ahead - self.scheduler.fresh_count()
            if len(tids) < total and short > 0:
                span = range(len(tids), min(total, len(tids) + short))
                tids.extend(self.scheduler.add_tasks(
                    [values[i] for i in span],
                    None if importance is None else [importance[i] for i in span]))

        top_up()
        while len(done) < total:
            # dispatch first, then digest the next inputs and commit: the nodes work
            # meanwhile (a fill takes at most nodes * in_flight batches, fewer than
            # ``ahead`` holds, so new tasks never run out while inputs remain)
            sent = self._fill(flight, per_node)
            if sent:
                batches += sent
                if t_sent is None:
                    t_sent = min(t0 for _i, _b, t0 in flight.values())
            top_up()
            # group commit: one fsync per flush_interval rather than per batch, and at
            # once when nothing else is running or the last results wait for it
            now = time.monotonic()
            if self.protocol.unflushed and (
                not flight or now - last_flush >= self.flush_interval
                or not self.scheduler.has_work()
            ):
                last_flush = now
                for r in self.protocol.flush():
                    self._settled(r, done)
                if progress is not None:
                    progress(len(done), total)
            if len(done) >= total:
                break
            if not flight:
                self.protocol.require_verifiable()
                raise ClusterError(
                    f"{total - len(done)} task(s) cannot progress: no batch can be dispatched"
                )
            ready, _ = ray.wait(list(flight), num_returns=1, timeout=min(self.timeout_s, 5.0))
            if ready and len(flight) > 1:  # take every other batch that is done too
                ready, _ = ray.wait(list(flight), num_returns=len(flight), timeout=0)
            self._check_timeouts(flight, per_node, done_refs=set(ready))
            for ref in ready:
                if ref not in flight:  # timed out meanwhile
                    continue
                info, batch, _t0 = flight.pop(ref)
                per_node[info.public] -= 1
                self._last_done[info.public] = time.monotonic()
                try:
                    res: BatchResult = ray.get(ref)
                except RayTaskError as exc:
                    # the node is alive but its batch raised: re-issue the jobs elsewhere;
                    # a task that fails on two nodes is the workload's error, not theirs
                    self._batch_error(info, batch, exc)
                    continue
                except (RayActorError, RayError) as exc:
                    self._fail(info, "crash", exc)
                    continue
                self._take(info, res)
                if batch.firsts:
                    t_first = self._last_done[info.public]
        # the driver process's CPU over the whole call (Ray's threads included); read once,
        # because the clock itself costs a system call
        self.coordinator_cpu_s += time.process_time() - t_cpu
        t_end = time.monotonic()
        self.last_map = MapStats(
            tasks=total, wall_s=t_end - t_start,
            startup_s=(t_sent if t_sent is not None else t_end) - t_start,
            last_first_s=t_first - t_start, batches=batches,
            jobs=self.jobs_dispatched - jobs0, decoys=self.scheduler.decoys_sent - decoys0,
        )
        return [done[t] for t in tids]

    def _fill(self, flight: dict[Any, tuple[NodeInfo, Batch, float]],
              per_node: dict[bytes, int]) -> int:
        """Top every live node up to ``in_flight`` batches; return how many were sent.

        One batch per node per pass, so that no node waits while another's batches are
        serialised. A node down to its last batch in flight also takes its share of the
        scheduler's reserve of new tasks: the reserve lets re-executions travel among
        first executions, but it must never leave a node idle while tasks are waiting."""
        nodes = [n for n in self.nodes.values()
                 if n.alive and self.protocol.is_active(n.public)]
        sent = 0
        while nodes:
            again: list[NodeInfo] = []
            for info in nodes:
                busy = per_node[info.public]
                if busy >= self.in_flight:
                    continue
                if busy and not self.scheduler.has_fresh():
                    # the tail: let re-executions accumulate into one batch per node
                    # rather than many small ones padded with decoys
                    continue
                batch = self.scheduler.next_batch(info.public, force=busy < 2)
                if batch is None:
                    continue
                self._send(info, batch, flight, per_node)
                sent += 1
                again.append(info)
            nodes = again
        return sent

    def _send(self, info: NodeInfo, batch: Batch,
              flight: dict[Any, tuple[NodeInfo, Batch, float]],
              per_node: dict[bytes, int]) -> None:
        ordinal = self._ordinal
        for jid in batch.first_ids:
            info.asserted += 1
            ordinal[jid] = info.asserted
        self.jobs_dispatched += len(batch)
        # same-shape array inputs travel as one stacked array: one buffer for Ray to
        # serialise instead of one object per job (benchmarks/bench_cluster.py measures
        # what this saves against plain Ray calls with a list and with a stacked array)
        ref = info.actor.run_jobs.remote(list(batch.job_ids), pack_values(batch.inputs))
        flight[ref] = (info, batch, time.monotonic())
        per_node[info.public] += 1

    def _take(self, info: NodeInfo, res: BatchResult) -> None:
        # decoys go to the protocol too: it ignores jobs it did not issue, and the whole
        # batch is then checked with one Merkle root recomputation
        follow = self.protocol.on_batch(info.public, res.batch, res.receipts, res.outputs)
        self.scheduler.add_follow_ups(follow)
        self.scheduler.add_follow_ups(self.protocol.take_reissued())

    def _settled(self, r: TaskResult, done: dict[int, Result]) -> None:
        first_id = r.job_id
        ordinal = self._ordinal.pop(first_id, None) if first_id is not None else None
        for n in r.slashed:
            info = self.nodes.get(n)
            if info is not None and info.slashed_after is None:
                # caught on its own job: that job's place in its sequence of first jobs;
                # caught as a validator or arbiter: the first jobs it had received by then
                info.slashed_after = ordinal if n == r.asserter and ordinal else info.asserted
        done[r.task] = Result(r.task, r.output, r.receipt_ref, r.state, r.asserter)
        self.scheduler.forget(r.task)

    def _warn_if_small(self) -> None:
        need = 1 + self.protocol.params.validators + self.protocol.params.arbiters
        live = len(self.protocol.live_nodes())
        if live < need and not self._warned_small:
            self._warned_small = True
            warnings.warn(
                f"{live} live nodes: a dispute needs {need} (asserter, "
                f"{self.protocol.params.validators} validator(s), "
                f"{self.protocol.params.arbiters} arbiters); disputes will stay unresolved "
                "and nobody can be slashed",
                RuntimeWarning, stacklevel=3,
            )

    def _batch_error(self, info: NodeInfo, batch: Batch, exc: BaseException) -> None:
        for jid in batch.job_ids:
            job = self.protocol.job(jid)
            if job is None:
                continue
            failed = self._task_errors.setdefault(job[0], set())
            failed.add(info.public)
            if len(failed) >= 2:
                cause = getattr(exc, "cause", None) or exc
                raise ClusterError(
                    f"the workload raised on task {job[0]} on {len(failed)} different nodes: "
                    f"{type(cause).__name__}: {cause}"
                ) from exc
        self.scheduler.add_follow_ups(
            self.protocol.on_batch_error(info.public, list(batch.job_ids))
        )
        errors = self._node_errors[info.public] = self._node_errors.get(info.public, 0) + 1
        if errors >= 3:  # a node whose batches keep raising stops getting work
            self._fail(info, "error", exc)

    def _fail(self, info: NodeInfo, reason: str, exc: BaseException | None = None) -> None:
        if not info.alive:
            return
        info.alive = False
        with contextlib.suppress(Exception):
            ray.kill(info.actor)
        self.scheduler.add_follow_ups(self.protocol.on_node_failure(info.public, reason=reason))

    def _check_timeouts(self, flight: dict[Any, tuple[NodeInfo, Batch, float]],
                        per_node: dict[bytes, int], *,
                        done_refs: set[Any] | frozenset[Any] = frozenset()
                        ) -> None:
        now = time.monotonic()
        for ref, (info, _b, t0) in list(flight.items()):
            if ref in done_refs:  # finished, merely not handled yet: never a timeout
                continue
            # a batch queued behind another on the same node starts its clock when the
            # node finished the one before, not when it was sent
            started = max(t0, self._last_done.get(info.public, t0))
            if now - started > self.timeout_s:
                flight.pop(ref)
                per_node[info.public] -= 1
                self._fail(info, "timeout")

    # ---- introspection ------------------------------------------------------------------

    def kill_node(self, index: int) -> bytes:
        """Kill one node actor (fault injection for tests and demos)."""
        info = list(self.nodes.values())[index]
        ray.kill(info.actor, no_restart=True)
        return info.public

    def live_nodes(self) -> int:
        return len(self.protocol.live_nodes())


def _default_comparator(specs: list[NodeSpec]) -> Any:
    """The workload's own comparator when its factory offers one (``factory.comparator()``,
    e.g. a calibration's per-profile-pair tolerances), else relative L2 at 1e-4."""
    offer = getattr(specs[0].factory, "comparator", None) if specs else None
    if callable(offer):
        return offer()
    return RelativeL2(1e-4)


def _unrevealed_epochs(ledger: Ledger) -> list[tuple[int, bytes]]:
    fn = getattr(ledger, "unrevealed_epochs", None)
    if fn is not None:
        return list(fn())
    out: dict[int, bytes] = {}
    for ev in ledger.events():
        if ev.kind == "epoch_open":
            out[ev["epoch"]] = ev["commitment"]
        elif ev.kind == "epoch_reveal":
            out.pop(ev["epoch"], None)
    return sorted(out.items())


def _key_seed(seed: int, index: int) -> bytes:
    return digest_value("node-key-seed", [seed, index])
