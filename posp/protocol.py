"""The coordinator's decisions for verification rounds, as plain Python (no Ray, no torch).

This module holds the rules; the Ray runtime, the simulator's event engine and the
soundness matrix all drive this one :class:`Protocol` object, so a change to a rule here
changes every one of them. The caller owns transport: it runs jobs on nodes and feeds the
signed results back. The protocol says which jobs are checked, who validates and who
arbitrates, compares outputs, and queues the settlements that :meth:`Protocol.flush`
commits to the ledger in one group (a result counts as final only once that returns).

One task, seen from here::

    first job on the asserter ──> signed batch ──> decide(seed, commitment, rate)
        not sampled ─────────────────────────────> reward (batch-level), NOT_SAMPLED
        sampled ──> n validation jobs on other live nodes (fresh ids, blind)
            digests equal / comparator within tolerance ──> reward all, AGREED (drift logged)
            beyond tolerance ──> k arbitration jobs on nodes other than the parties
                >= (k+1)/2 arbiters agree on one output ──> every party or arbiter that
                    disagrees with it is slashed (challenger share to the honest parties);
                    UPHELD, or OVERTURNED with the winning output
                no majority, or too few nodes ──> UNRESOLVED, nobody slashed and the
                    disputed job pays neither party (arbiters who answered are paid)

Nodes never see roles: a validation or arbitration job is a job with a fresh id, and the
caller puts it in an ordinary batch. A node's output must hash to the digest it signed,
else the job is a fault. Each batch's decision event records the rates, the sampled
positions and each position's role, so `posp ledger audit` can recompute it after the
epoch's seed is revealed. Crashes and timeouts are liveness events: the jobs
are re-issued with fresh ids (so an honest retry is never equivocation), never slashed.
Two receipts signed by one node for one job id with different output digests are proof of
equivocation and are slashed without re-execution.
"""

from __future__ import annotations

import enum
import itertools
import math
import os
import random
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple

from .compare import Comparator, Verdict, VerdictKind
from .digest import digest, digest_many, digest_value
from .encoding import encode
from .errors import BadSignature, ConfigError, MalformedMessage, NotEnoughNodes, ProfileMismatch
from .ledger import Ledger
from .receipts import (
    BatchCommitment,
    JobIds,
    Receipt,
    ReceiptBatch,
    ReceiptBlock,
    ReceiptRef,
    SignedReceipt,
    verify_block,
    verify_receipt,
    verify_whole_batch,
)
from .sampling import EpochSeed, SamplingPolicy, UniformPolicy, decide, rates_to_ppb

__all__ = [
    "Assignment",
    "Protocol",
    "ProtocolParams",
    "Role",
    "State",
    "TaskResult",
]


class Role(enum.Enum):
    """Why a job exists. Known to the coordinator only, never sent to a node."""

    FIRST = "first"
    VALIDATE = "validate"
    ARBITRATE = "arbitrate"


class State(enum.Enum):
    """A task's verification state."""

    PENDING = "pending"
    NOT_SAMPLED = "not_sampled"  # final: paid, not re-executed
    AGREED = "agreed"  # final: checked and agreed (possibly within drift tolerance)
    UPHELD = "upheld"  # final: disputed, the asserter won arbitration
    OVERTURNED = "overturned"  # final: disputed, the asserter lost; output replaced
    UNRESOLVED = "unresolved"  # final: dispute without majority or without enough nodes


@dataclass(frozen=True)
class ProtocolParams:
    """Protocol parameters. Amounts are integer stake units."""

    validators: int = 1
    arbiters: int = 3
    reward: int = 10
    validator_reward: int = 10
    slash: int = 1000
    bond: int = 10_000

    def __post_init__(self) -> None:
        if self.validators < 1:
            raise ConfigError("must be >= 1", key="validators")
        if self.arbiters < 1 or self.arbiters % 2 == 0:
            raise ConfigError("must be odd and >= 1", key="arbiters")
        for name in ("reward", "validator_reward", "slash", "bond"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ConfigError(f"must be a non-negative int, got {v!r}", key=name)


@dataclass(frozen=True, slots=True)
class Assignment:
    """Run task ``task``'s input on ``node`` under the fresh ``job_id``."""

    job_id: bytes
    node: bytes
    task: int
    role: Role


class TaskResult(NamedTuple):
    """A settled task. ``output`` is what the user receives: the asserter's signed output,
    or the arbitration winner when it was overturned. ``receipt_ref`` holds
    the asserter's receipt; :attr:`receipt` builds its portable signed form on demand.
    (Immutable; a named tuple because one is built per task.)"""

    task: int
    state: State
    asserter: bytes
    receipt_ref: ReceiptRef | None
    output: Any = None
    verdicts: tuple[Verdict, ...] = ()
    slashed: tuple[bytes, ...] = ()

    @property
    def receipt(self) -> SignedReceipt | None:
        return None if self.receipt_ref is None else self.receipt_ref.signed()

    @property
    def job_id(self) -> bytes | None:
        return None if self.receipt_ref is None else self.receipt_ref.job_id


@dataclass
class _Node:
    profile: bytes
    stake: int
    live: bool = True
    ejected: bool = False
    # job ids issued to the node and not yet answered; a dict (insertion-ordered, unlike
    # a set of bytes) so that re-issuing them after a failure is reproducible
    outstanding: dict[bytes, None] = field(default_factory=dict)


# shared by every task until its checks start; immutable, so a write by mistake fails
_NO_RESULTS: Any = MappingProxyType({})
_NO_NODES: Any = frozenset()
_NO_VERDICTS: Any = ()


class _Task:
    """A task's state. Most tasks are never sampled, so the containers for validators,
    arbiters and verdicts start as shared empties and become real ones when validation
    starts (:meth:`_Task.start_checks`)."""

    __slots__ = ("id", "input_digest", "importance", "state", "asserter", "first_job",
                 "receipt", "output", "validators", "arbiters", "want_validators",
                 "want_arbiters", "verdicts")

    def __init__(self, id: int, input_digest: bytes, importance: float) -> None:
        self.id = id
        self.input_digest = input_digest
        self.importance = importance
        self.state = _PENDING
        self.asserter: bytes | None = None
        self.first_job: bytes | None = None
        self.receipt: ReceiptRef | None = None
        self.output: Any = None
        # node -> (receipt, output) for validators / arbiters that answered
        self.validators: dict[bytes, tuple[ReceiptRef, Any]] = _NO_RESULTS
        self.arbiters: dict[bytes, tuple[ReceiptRef, Any]] = _NO_RESULTS
        self.want_validators: set[bytes] = _NO_NODES
        self.want_arbiters: set[bytes] = _NO_NODES
        self.verdicts: list[Verdict] = _NO_VERDICTS

    def start_checks(self) -> None:
        """Own containers: validation is starting."""
        if self.validators is _NO_RESULTS:
            self.validators, self.arbiters = {}, {}
            self.want_validators, self.want_arbiters = set(), set()
            self.verdicts = []


@dataclass(slots=True)
class _Job:
    task: int
    node: bytes
    role: Role


ComparatorFor = Callable[[bytes, bytes], Comparator]
_JOB_STAT = {r: f"jobs_{r.value}" for r in Role}
# enum members as module constants: reading ``Role.FIRST`` costs a descriptor call, and
# the per-job loops below read them once per job
_FIRST, _VALIDATE = Role.FIRST, Role.VALIDATE
_PENDING, _NOT_SAMPLED = State.PENDING, State.NOT_SAMPLED
_CODE_F, _CODE_V, _CODE_A = ord("f"), ord("v"), ord("a")
_SEEN_WINDOW = 200_000  # receipts remembered for the equivocation check
_BATCH_WINDOW = 20_000  # batch signatures remembered as verified
_SERIAL = 1 << 32  # a seen receipt's int: batch serial * _SERIAL + index in the batch


class Protocol:
    """The coordinator's rules for one ledger and one set of nodes.

    ``comparator`` is a :class:`~posp.compare.Comparator`, or a callable
    ``(profile_digest_a, profile_digest_b) -> Comparator`` so that a calibration can
    tighten the tolerance per pair of execution profiles. ``rng`` picks validators and
    arbiters (default: seeded from the OS); ``job_ids`` makes fresh job ids (default:
    16 bytes from ``os.urandom``). ``epoch_seed`` is the secret of the open epoch (default: a fresh
    one from the OS); its commitment is written to the ledger by :meth:`open_epoch`.
    """

    def __init__(
        self,
        *,
        ledger: Ledger | None,
        comparator: Comparator | ComparatorFor,
        policy: SamplingPolicy | None = None,
        params: ProtocolParams | None = None,
        rng: random.Random | None = None,
        job_ids: Callable[[], bytes] | None = None,
        epoch_seed: EpochSeed | None = None,
        epoch: int | None = None,
    ) -> None:
        self.ledger = ledger
        self.params = params or ProtocolParams()
        self.policy: SamplingPolicy = policy or UniformPolicy(0.1)
        self._comparator_for: ComparatorFor = (
            comparator if callable(comparator) and not hasattr(comparator, "compare")
            else (lambda _a, _b, c=comparator: c)  # type: ignore[misc]
        )
        self.rng = rng or random.Random(int.from_bytes(os.urandom(16), "big"))
        self._new_id = job_ids or JobIds()
        self.nodes: dict[bytes, _Node] = {}
        self._tasks: dict[int, _Task] = {}
        self._jobs: dict[bytes, _Job] = {}
        # job id -> first receipt, for the equivocation check. A receipt from a verified
        # block is kept as an int (batch serial and index) into _seen_batches rather than
        # as an object: the window holds 200,000 of them, and ints cost the garbage
        # collector nothing to traverse
        self._seen: dict[bytes, ReceiptRef | int] = {}
        self._seen_batches: dict[int, ReceiptBatch] = {}
        self._batch_serial = 0
        self._verified_batches: dict[BatchCommitment, bytes] = {}
        self._ops: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self._final: list[TaskResult] = []
        self._pending_reissue: list[Assignment] = []
        self._next_task = 0
        self._seed = epoch_seed or EpochSeed.generate()
        self.epoch = epoch if epoch is not None else (ledger.epoch + 1 if ledger else 1)
        self.stats: dict[str, int] = defaultdict(int)

    # ---- epochs ---------------------------------------------------------------------

    @property
    def epoch_seed(self) -> EpochSeed:
        return self._seed

    def open_epoch(self) -> None:
        """Publish the open epoch's seed commitment (queued; committed by flush)."""
        self._op("epoch_open", self.epoch, self._seed.commitment)

    def rotate_epoch(self, new_seed: EpochSeed | None = None) -> None:
        """Reveal the current epoch's seed and open the next one (queued)."""
        self._op("epoch_reveal", self.epoch, bytes(self._seed))
        self._seed = new_seed or EpochSeed.generate()
        self.epoch += 1
        self.open_epoch()

    def close_epoch(self) -> None:
        """Reveal the current epoch's seed (queued); no new epoch is opened."""
        self._op("epoch_reveal", self.epoch, bytes(self._seed))

    # ---- nodes ----------------------------------------------------------------------

    def register(self, node: bytes, profile_digest: bytes, *, bond: int | None = None) -> None:
        """Admit a node with its declared execution profile; the bond is queued."""
        amount = self.params.bond if bond is None else bond
        if node in self.nodes:
            raise ConfigError(f"node {node[:4].hex()} is already registered", key="node")
        self.nodes[node] = _Node(profile=profile_digest, stake=amount)
        self._op("bond", node, amount, profile=profile_digest)

    def live_nodes(self) -> list[bytes]:
        return [n for n, s in self.nodes.items() if s.live and not s.ejected]

    def is_active(self, node: bytes) -> bool:
        s = self.nodes.get(node)
        return s is not None and s.live and not s.ejected

    def require_verifiable(self) -> None:
        """Raise NotEnoughNodes unless at least two live nodes can check each other."""
        live = len(self.live_nodes())
        if live < 2:
            raise NotEnoughNodes(
                f"{live} live node(s): verification needs an asserter and at least one "
                "other node to re-execute a sample; refusing to claim verification"
            )

    # ---- tasks and jobs ---------------------------------------------------------------

    def new_task(self, input_digest: bytes, *, importance: float = 1.0) -> int:
        tid = self._next_task
        self._next_task += 1
        self._tasks[tid] = _Task(tid, input_digest, importance)
        return tid

    def first_job(self, task: int, node: bytes) -> Assignment:
        """Issue the first execution of ``task`` on ``node`` (the caller balances load)."""
        return Assignment(self.first_jobs([task], node)[0], node, task, _FIRST)

    def first_jobs(self, tasks: Sequence[int], node: bytes) -> list[bytes]:
        """:meth:`first_job` for many tasks on one node; returns their job ids in order."""
        if not self.is_active(node):
            raise ConfigError(f"node {node[:4].hex()} is not active", key="node")
        new_id = self._new_id
        jobs = self._jobs
        outstanding = self.nodes[node].outstanding
        all_tasks = self._tasks
        first = _FIRST
        out = []
        for task in tasks:
            t = all_tasks[task]
            jid = new_id()
            t.asserter = node
            t.first_job = jid
            jobs[jid] = _Job(task, node, first)
            outstanding[jid] = None
            out.append(jid)
        self.stats[_JOB_STAT[first]] += len(out)
        return out

    def _issue(self, task: int, node: bytes, role: Role) -> Assignment:
        jid = self._new_id()
        self.stats[_JOB_STAT[role]] += 1
        self._jobs[jid] = _Job(task, node, role)
        self.nodes[node].outstanding[jid] = None
        return Assignment(jid, node, task, role)

    def job(self, job_id: bytes) -> tuple[int, bytes, Role] | None:
        j = self._jobs.get(job_id)
        return None if j is None else (j.task, j.node, j.role)

    def input_digest(self, task: int) -> bytes:
        return self._tasks[task].input_digest

    # ---- results ----------------------------------------------------------------------

    def on_batch(
        self,
        node: bytes,
        batch: BatchCommitment,
        receipts: ReceiptBlock | Sequence[Receipt | SignedReceipt],
        outputs: Sequence[Any],
    ) -> list[Assignment]:
        """Take a node's signed batch and outputs; return the follow-up jobs to dispatch.

        ``receipts`` is the whole batch as a :class:`~posp.receipts.ReceiptBlock` (what
        :class:`~posp.node.NodeCore` returns; the fast path), or as plain :class:`Receipt` objects (checked
        with one Merkle root recomputation and one cached signature check) or any subset
        as :class:`SignedReceipt` objects with their inclusion proofs. The commitment was
        signed before this call, so no decision about these jobs existed when the node
        committed. Receipts that do not verify, or that name a job this node was not
        given, are faults: the job is re-issued, nobody is slashed. Jobs this protocol
        did not issue (decoys) are ignored.
        """
        if len(receipts) != len(outputs):
            raise ConfigError("one output per receipt", key="outputs")
        st = self.nodes.get(node)
        if st is None:
            raise ConfigError(f"unknown node {node[:4].hex()}", key="node")
        refs: list[ReceiptRef | None] | None
        rb: ReceiptBatch | None = None
        jids: Sequence[bytes]
        ins: Sequence[bytes]
        signed_outs: Sequence[bytes]
        if isinstance(receipts, ReceiptBlock):
            # the hot path: the node's whole batch as columns, no receipt objects built
            rb = self._check_block(node, st, batch, receipts)
            refs = None
            jids, ins, signed_outs = (receipts.job_ids, receipts.input_digests,
                                      receipts.output_digests)
            positions: Sequence[int] = range(len(receipts))
        else:
            refs = self._check_receipts(node, st, batch, receipts)
            rs = [raw.receipt if isinstance(raw, SignedReceipt) else raw for raw in receipts]
            jids = [r.job_id for r in rs]
            ins = [r.input_digest for r in rs]
            signed_outs = [r.output_digest for r in rs]
            positions = [raw.index if isinstance(raw, SignedReceipt) else i
                         for i, raw in enumerate(receipts)]
        serial: int | None = None
        if rb is not None:
            serial = self._batch_serial
            self._batch_serial += _SERIAL
            self._seen_batches[serial] = rb
        out_digests = _output_digests(outputs)
        follow: list[Assignment] = []
        firsts: list[tuple[int, _Job, ReceiptRef, Any]] = []
        count = batch.count
        rates: list[float] = [0.0] * count
        roles = bytearray(b"-" * count)  # what each position was, for the audit
        rate_cache: dict[float, float] = {}  # the policy's rate for this node, per importance
        jobs_get = self._jobs.get
        tasks = self._tasks
        for idx, jid in enumerate(jids):
            job = jobs_get(jid)
            if refs is not None:
                ref = refs[idx]
            else:
                ref = None if rb is None else ReceiptRef(None, batch=rb, index=idx)
            if job is None or job.node != node:
                # a decoy, a job re-issued elsewhere meanwhile, or a replayed receipt
                prior = self._prior(jid)
                if ref is not None and prior is not None and prior.receipt.node == node:
                    self._check_equivocation(prior, ref)
                self.stats["unmatched_receipts"] += 1
                continue
            out = outputs[idx]
            # the receipt must bind this job's input, and the output sent must be the
            # output signed: everything below (comparison, evidence, the user's result)
            # then rests on signed bytes
            ok = (
                ref is not None
                and ins[idx] == tasks[job.task].input_digest
                and out_digests[idx] is not None
                and out_digests[idx] == signed_outs[idx]
            )
            st.outstanding.pop(jid, None)
            del self._jobs[jid]
            if not ok or ref is None:
                self.stats["bad_receipts"] += 1
                self._op("liveness", node, ref=jid.hex(), reason="bad_receipt")
                self.policy.observe(node, "fault")
                follow.extend(self._reissue(job))
                continue
            self._seen[jid] = ref if serial is None else serial + idx
            t = tasks[job.task]
            pos = positions[idx]
            role = job.role
            if role is _FIRST:
                if 0 <= pos < count:
                    roles[pos] = _CODE_F
                imp = t.importance
                rate = rate_cache.get(imp)
                if rate is None:
                    rate = rate_cache[imp] = self.policy.rate(node, imp)
                rates[pos] = rate
                firsts.append((pos, job, ref, out))
            elif role is _VALIDATE:
                if 0 <= pos < count:
                    roles[pos] = _CODE_V
                t.validators[node] = (ref, out)
                t.want_validators.discard(node)
                if not t.want_validators:
                    follow.extend(self._judge_validation(t))
            else:
                if 0 <= pos < count:
                    roles[pos] = _CODE_A
                t.arbiters[node] = (ref, out)
                t.want_arbiters.discard(node)
                if not t.want_arbiters:
                    follow.extend(self._judge_arbitration(t))
        if firsts:
            follow.extend(self._sample(node, batch, rates, firsts, bytes(roles)))
        return follow

    def _check_block(self, node: bytes, st: _Node, batch: BatchCommitment,
                     block: ReceiptBlock) -> ReceiptBatch | None:
        """The verified batch, or None when the block does not verify (all its jobs are
        then faults: a block stands or falls as a whole)."""
        if batch.node != node:
            return None
        try:
            return verify_block(batch, block, expected_profile_digest=st.profile,
                                verified_batches=self._verified_batches)
        except (BadSignature, ProfileMismatch):
            return None

    def _check_receipts(
        self, node: bytes, st: _Node, batch: BatchCommitment,
        receipts: Sequence[Receipt | SignedReceipt],
    ) -> list[ReceiptRef | None]:
        """One ReceiptRef per receipt that verifies (None where one does not)."""
        try:
            if batch.node != node:
                raise BadSignature("batch signed by another node")
        except BadSignature:
            return [None] * len(receipts)
        if receipts and all(type(r) is Receipt for r in receipts):
            # verify_whole_batch checks the signature once (and caches it)
            try:
                rb = verify_whole_batch(
                    batch, receipts,  # type: ignore[arg-type]
                    expected_profile_digest=st.profile,
                    verified_batches=self._verified_batches,
                )
            except (BadSignature, ProfileMismatch):
                return [None] * len(receipts)  # plain receipts stand or fall together
            return [ReceiptRef(r, batch=rb, index=i) for i, r in enumerate(rb.receipts)]
        out: list[ReceiptRef | None] = []
        for s in receipts:
            if not isinstance(s, SignedReceipt) or s.batch != batch:
                out.append(None)
                continue
            try:
                verify_receipt(s, expected_profile_digest=st.profile,
                               verified_batches=self._verified_batches)
                out.append(ReceiptRef.of(s))
            except (BadSignature, ProfileMismatch):
                out.append(None)
        return out

    def _sample(
        self,
        node: bytes,
        batch: BatchCommitment,
        rates: list[float],
        firsts: list[tuple[int, _Job, ReceiptRef, Any]],
        roles: bytes = b"",
    ) -> list[Assignment]:
        ppb = rates_to_ppb(rates)
        commitment = batch.commitment  # a digest computed on each access: once here
        picks = decide(self._seed, commitment, ppb=ppb)
        sampled = sorted(i for i, _job, _ref, _o in firsts if picks[i])
        self._op(
            "decision", self.epoch, node, commitment,
            count=batch.count, rates_ppb=ppb, sampled=sampled, roles=roles,
        )
        follow: list[Assignment] = []
        unsampled = 0
        tasks = self._tasks
        final = self._final
        observe = self.policy.observe
        for i, job, s, out in firsts:
            t = tasks[job.task]
            t.receipt = s
            if not picks[i]:
                unsampled += 1
                t.state = _NOT_SAMPLED
                observe(node, "not_sampled")
                final.append(TaskResult(t.id, _NOT_SAMPLED, node, s, out))
                del tasks[t.id]
                continue
            self.stats["sampled"] += 1
            t.output = out
            follow.extend(self._start_validation(t))
        if unsampled and self.params.reward:
            self.nodes[node].stake += self.params.reward * unsampled
            self._op("reward", node, self.params.reward * unsampled, ref=commitment.hex())
        return follow

    def _pick(self, count: int, exclude: Iterable[bytes]) -> list[bytes] | None:
        ex = set(exclude)
        pool = [n for n in self.live_nodes() if n not in ex]
        if len(pool) < count:
            return None
        return self.rng.sample(pool, count)

    def _start_validation(self, t: _Task) -> list[Assignment]:
        assert t.asserter is not None
        chosen = self._pick(self.params.validators, [t.asserter])
        if chosen is None:
            self._finish_unresolved(t, "not enough live nodes to validate")
            return []
        t.start_checks()
        t.want_validators = set(chosen)
        return [self._issue(t.id, v, Role.VALIDATE) for v in chosen]

    def _agree(self, a: tuple[ReceiptRef, Any], b: tuple[ReceiptRef, Any]) -> Verdict:
        ra, rb = a[0], b[0]  # ReceiptRefs: digests read without building receipts
        cmp = self._comparator_for(ra.profile_digest, rb.profile_digest)
        if ra.output_digest == rb.output_digest:
            return Verdict(VerdictKind.MATCH, 0.0, cmp.metric, cmp.tolerance)
        return cmp.compare(a[1], b[1])

    def _judge_validation(self, t: _Task) -> list[Assignment]:
        assert t.asserter is not None and t.receipt is not None
        mine = (t.receipt, t.output)
        disagree = False
        drift: list[tuple[bytes, Verdict]] = []
        for v, res in t.validators.items():
            verdict = self._agree(mine, res)
            t.verdicts.append(verdict)
            if verdict.kind is VerdictKind.MISMATCH:
                disagree = True
            elif verdict.kind is VerdictKind.DRIFT:
                drift.append((v, verdict))
        if not disagree:
            ref = t.first_job.hex() if t.first_job else str(t.id)
            for v, verdict in drift:
                self._op("drift", ref, [t.asserter, v], metric=verdict.metric,
                         distance=_finite(verdict.distance))
                self.policy.observe(v, "drift")
            self.policy.observe(t.asserter, "drift" if drift else "agreed")
            self._pay(t.asserter, self.params.reward, ref)
            for v in t.validators:
                self._pay(v, self.params.validator_reward, ref)
            self._finish(t, State.AGREED)
            return []
        self.stats["disputes"] += 1
        parties = [t.asserter, *t.validators]
        chosen = self._pick(self.params.arbiters, parties)
        if chosen is None:
            self._finish_unresolved(t, "not enough live nodes to arbitrate")
            return []
        t.want_arbiters = set(chosen)
        return [self._issue(t.id, a, Role.ARBITRATE) for a in chosen]

    def _judge_arbitration(self, t: _Task) -> list[Assignment]:
        assert t.asserter is not None and t.receipt is not None
        k = self.params.arbiters
        need = (k + 1) // 2
        arbs = list(t.arbiters.items())
        best: tuple[int, int] | None = None  # (agreeing count, index)
        for i, (_n, res) in enumerate(arbs):
            count = sum(
                1 for _m, other in arbs
                if other is res or self._agree(res, other).kind is not VerdictKind.MISMATCH
            )
            if count >= need and (best is None or count > best[0]):
                best = (count, i)
        if best is None:
            self._finish_unresolved(t, "arbiters reached no majority")
            return []
        majority = arbs[best[1]][1]
        everyone: list[tuple[bytes, tuple[ReceiptRef, Any], str]] = [
            (t.asserter, (t.receipt, t.output), "asserter"),
            *((v, r, "validator") for v, r in t.validators.items()),
            *((a, r, "arbiter") for a, r in arbs),
        ]
        honest: list[bytes] = []
        liars: list[bytes] = []
        verdicts: dict[bytes, Verdict] = {}
        for n, res, _role in everyone:
            verdict = self._agree(res, majority)
            verdicts[n] = verdict
            (liars if verdict.kind is VerdictKind.MISMATCH else honest).append(n)
        ref = t.first_job.hex() if t.first_job else str(t.id)
        evidence = self._evidence(t, everyone, majority, verdicts)
        self._op("dispute", ref, evidence)
        evidence_digest = _evidence_digest(evidence)
        party_set = {t.asserter, *t.validators}
        honest_parties = [n for n in honest if n in party_set]
        challengers = honest_parties or [n for n in honest if n not in party_set]
        for n in liars:
            self._slash(n, ref, evidence_digest, [c for c in challengers if c != n])
        for n, _res, role in everyone:
            if n in liars:
                continue
            amount = self.params.reward if role == "asserter" else self.params.validator_reward
            self._pay(n, amount, ref)
            self.policy.observe(n, "dispute")
        upheld = t.asserter in honest
        self.stats["upheld" if upheld else "overturned"] += 1
        self._finish(
            t,
            State.UPHELD if upheld else State.OVERTURNED,
            output=None if upheld else majority[1],
            slashed=tuple(liars),
        )
        return []

    def _evidence(
        self,
        t: _Task,
        everyone: list[tuple[bytes, tuple[ReceiptRef, Any], str]],
        majority: tuple[ReceiptRef, Any],
        verdicts: dict[bytes, Verdict],
    ) -> list[Any]:
        """Signed receipts of every party and arbiter, with each verdict against the
        majority output: what a third party needs to check the slash."""
        return [
            "dispute-evidence", 1, t.input_digest, majority[0].receipt.output_digest,
            [
                [role, n, res[0].signed().to_wire(), verdicts[n].kind.value, verdicts[n].metric,
                 _finite(verdicts[n].distance), _finite(verdicts[n].tolerance)]
                for n, res, role in everyone
            ],
        ]

    def _slash(self, node: bytes, ref: str, evidence: bytes, challengers: list[bytes]) -> None:
        st = self.nodes[node]
        amount = min(self.params.slash, st.stake)
        st.stake -= amount
        self.stats["slashes"] += 1
        if self.params.slash:
            self._op("slash", node, self.params.slash, ref=ref, evidence=evidence,
                     challengers=challengers)
        self.policy.observe(node, "slashed")
        if self.ledger is not None and st.stake < self.ledger.min_bond:
            st.ejected = True
        elif self.ledger is None and st.stake <= 0:
            st.ejected = True
        if st.ejected:
            # its outstanding jobs will never count; re-issue them elsewhere
            self._pending_reissue.extend(self._abandon(node))

    def take_reissued(self) -> list[Assignment]:
        """Jobs re-issued because their node was ejected; the caller dispatches them."""
        out, self._pending_reissue = self._pending_reissue, []
        return out

    def _pay(self, node: bytes, amount: int, ref: str) -> None:
        if amount:
            st = self.nodes[node]
            st.stake += amount
            self._op("reward", node, amount, ref=ref)

    def _finish(self, t: _Task, state: State, *, output: Any = None,
                slashed: tuple[bytes, ...] = ()) -> None:
        assert t.asserter is not None
        t.state = state
        self._final.append(TaskResult(
            t.id, state, t.asserter, t.receipt, t.output if output is None else output,
            tuple(t.verdicts), slashed,
        ))
        del self._tasks[t.id]

    def _finish_unresolved(self, t: _Task, why: str) -> None:
        assert t.asserter is not None
        ref = t.first_job.hex() if t.first_job else str(t.id)
        self.stats["unresolved"] += 1
        self._op("dispute", ref, ["unresolved", why])
        if t.validators:
            # a dispute nobody could settle: the disputed job pays nobody (no slash either),
            # so a cheater gains nothing from a cluster too small to arbitrate; arbiters
            # who did answer are paid for their work
            for a in t.arbiters:
                self._pay(a, self.params.validator_reward, ref)
        else:
            # sampled, but no other node could re-execute it: nothing was disputed
            self._pay(t.asserter, self.params.reward, ref)
        self._finish(t, State.UNRESOLVED)

    # ---- equivocation -------------------------------------------------------------------

    def _check_equivocation(self, prior: ReceiptRef, s: ReceiptRef) -> None:
        node = s.receipt.node
        if prior.receipt.output_digest == s.receipt.output_digest:
            return
        a, b = prior.signed(), s.signed()
        try:
            verify_receipt(a, verified_batches=self._verified_batches)
            verify_receipt(b, verified_batches=self._verified_batches)
        except (BadSignature, ProfileMismatch):
            return
        if node not in self.nodes:
            return
        self.stats["equivocations"] += 1
        evidence = ["equivocation", 1, a.to_wire(), b.to_wire()]
        self._op("dispute", "eq-" + s.receipt.job_id.hex(), evidence)
        self._slash(node, "eq-" + s.receipt.job_id.hex(), _evidence_digest(evidence), [])

    def _prior(self, job_id: bytes) -> ReceiptRef | None:
        """The first receipt seen for ``job_id`` (within the window), if any."""
        v = self._seen.get(job_id)
        if type(v) is int:
            rb = self._seen_batches.get(v - v % _SERIAL)
            return None if rb is None else ReceiptRef(None, batch=rb, index=v % _SERIAL)
        return v  # type: ignore[return-value]

    def report_receipt(self, s: SignedReceipt) -> None:
        """Offer a receipt seen elsewhere (e.g. a gossip of a node's earlier batch);
        a conflicting signed receipt for a known job is slashed as equivocation."""
        prior = self._prior(s.receipt.job_id)
        if prior is not None and prior.receipt.node == s.receipt.node:
            self._check_equivocation(prior, ReceiptRef.of(s))

    # ---- faults ---------------------------------------------------------------------------

    def on_node_failure(self, node: bytes, *, reason: str = "crash") -> list[Assignment]:
        """A node died or timed out: record liveness, re-issue its outstanding jobs with
        fresh ids elsewhere. Never slashes."""
        st = self.nodes.get(node)
        if st is None:
            return []
        st.live = False
        self.stats["failures"] += 1
        self._op("liveness", node, ref=f"node-{node.hex()[:16]}-{self.stats['failures']}",
                 reason=reason)
        self.policy.observe(node, "fault")
        return self._abandon(node)

    def on_batch_error(self, node: bytes, job_ids: Iterable[bytes], *,
                       reason: str = "error") -> list[Assignment]:
        """A node's batch raised (the node itself is alive): record it as a liveness
        event, never a slash, and re-issue the batch's jobs elsewhere with fresh ids."""
        st = self.nodes.get(node)
        if st is None:
            return []
        self.stats["batch_errors"] += 1
        self._op("liveness", node, ref=f"err-{node.hex()[:16]}-{self.stats['batch_errors']}",
                 reason=reason)
        out: list[Assignment] = []
        for jid in job_ids:
            job = self._jobs.get(jid)
            if job is None or job.node != node:
                continue
            del self._jobs[jid]
            st.outstanding.pop(jid, None)
            out.extend(self._reissue(job))
        return out

    def _abandon(self, node: bytes) -> list[Assignment]:
        st = self.nodes[node]
        out: list[Assignment] = []
        for jid in list(st.outstanding):
            job = self._jobs.pop(jid, None)
            st.outstanding.pop(jid, None)
            if job is not None:
                out.extend(self._reissue(job))
        return out

    def _reissue(self, job: _Job) -> list[Assignment]:
        t = self._tasks.get(job.task)
        if t is None:
            return []
        self.stats["reissued"] += 1
        if job.role is Role.FIRST:
            pool = [n for n in self.live_nodes() if n != job.node] or self.live_nodes()
            if not pool:
                self.require_verifiable()
            node = self.rng.choice(pool)
            return [self.first_job(t.id, node)]
        assert t.asserter is not None
        parties = {t.asserter, *t.validators, *t.arbiters, *t.want_validators,
                   *t.want_arbiters}
        if job.role is Role.VALIDATE:
            t.want_validators.discard(job.node)
            chosen = self._pick(1, parties)
            if chosen is None:
                if not t.want_validators:
                    if t.validators:
                        return self._judge_validation(t)
                    self._finish_unresolved(t, "not enough live nodes to validate")
                return []
            t.want_validators.add(chosen[0])
            return [self._issue(t.id, chosen[0], Role.VALIDATE)]
        t.want_arbiters.discard(job.node)
        chosen = self._pick(1, parties)
        if chosen is None:
            if not t.want_arbiters:
                self._finish_unresolved(t, "not enough live nodes to arbitrate")
            return []
        t.want_arbiters.add(chosen[0])
        return [self._issue(t.id, chosen[0], Role.ARBITRATE)]

    # ---- settlement -----------------------------------------------------------------------

    def _op(self, name: str, *args: Any, **kwargs: Any) -> None:
        self._ops.append((name, args, kwargs))

    @property
    def pending_tasks(self) -> int:
        return len(self._tasks)

    @property
    def unflushed(self) -> int:
        """Settlements queued since the last :meth:`flush` (results wait for it)."""
        return len(self._ops)

    def flush(self) -> list[TaskResult]:
        """Commit every queued settlement in one ledger group; return the tasks that are
        final now. Only after this returns may a result be reported as verified."""
        ops, final = self._ops, self._final
        if self.ledger is not None and ops:
            with self.ledger.group() as g:  # one transaction: all of it lands, or none
                for name, args, kwargs in ops:
                    getattr(g, name)(*args, **kwargs)
        # cleared only once committed: a failed group leaves everything queued
        self._ops, self._final = [], []
        for r in final:
            self._prune(r)
        return final

    def _prune(self, r: TaskResult) -> None:
        """Forget what a settled task needed; keep a bounded window of receipts for the
        equivocation check, and of verified batch signatures."""
        if len(self._seen) > _SEEN_WINDOW + _SEEN_WINDOW // 8:  # in bulk, now and then
            for jid in list(itertools.islice(self._seen, len(self._seen) - _SEEN_WINDOW)):
                del self._seen[jid]
            # batches older than the oldest receipt still remembered are not needed
            oldest = next((v for v in self._seen.values() if type(v) is int), None)
            keep = self._batch_serial if oldest is None else oldest - oldest % _SERIAL
            for serial in [k for k in self._seen_batches if k < keep]:
                del self._seen_batches[serial]
        if len(self._verified_batches) > _BATCH_WINDOW:
            self._verified_batches.clear()


def _evidence_digest(evidence: list[Any]) -> bytes:
    """``digest_value("evidence", evidence)``. Evidence holds no NaN (its floats pass
    through :func:`_finite`), so the canonical encoding is hashed in one piece, which is
    the same digest without the streaming encoder's per-item cost."""
    return digest("evidence", encode(evidence))


def _output_digests(outputs: Sequence[Any]) -> list[bytes | None]:
    """Each output's digest, None for one that cannot be digested (a fault, not a crash)."""
    try:
        return list(digest_many("output", outputs))
    except _UNDIGESTABLE:
        pass
    out: list[bytes | None] = []
    for o in outputs:
        try:
            out.append(digest_value("output", o))
        except _UNDIGESTABLE:
            out.append(None)
    return out


_UNDIGESTABLE = (MalformedMessage, ConfigError, TypeError, ValueError, OverflowError)


def _finite(x: float) -> float:
    return x if math.isfinite(x) else 1e308

