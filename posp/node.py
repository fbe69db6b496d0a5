"""A node's side of the protocol, free of Ray: run a batch of jobs, sign one commitment.

:class:`NodeCore` is the plain class that the Ray actor (``posp.runtime``) wraps and
that tests and the simulator use directly. A node sees only :class:`Job` messages (a
fresh job id and an input); it cannot tell a first execution from a validation or an
arbitration job, and it never sees another node's output.

Behaviours (public API)
-----------------------
What a node returns is decided by its *behaviour*, any object with::

    outputs(jobs: Sequence[Job], compute: Callable[[Sequence[Any]], list[Any]]) -> list[Any]

``compute`` runs the real workload on a list of inputs (one torch batch, or one job at a
time, as the node was configured). :class:`Honest` returns ``compute([j.input ...])``.
A cheater returns something cheaper for some jobs; a lazy validator guesses; colluders
share outputs out of band. The node then signs whatever the behaviour returned: a receipt
binds the job id, the node key, the input digest, the output digest, the execution
profile digest and a per-node sequence number, and one Ed25519 signature covers the
Merkle root of the batch's receipts (made before any sampling decision exists).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from .digest import digest_many
from .encoding import Record, field_any, field_fixed_bytes, record
from .identity import NodeKey
from .receipts import BatchCommitment, ExecutionProfile, ReceiptBlock, commit_block

__all__ = [
    "Behaviour", "BatchResult", "CheatRate", "Honest", "Job", "NodeCore", "Runner",
    "pack_values", "unpack_values",
]

#: builds outputs for a list of inputs (the workload, built once per node)
Runner = Callable[[Sequence[Any]], list[Any]]


@record
@dataclass(frozen=True, slots=True)
class Job(Record):
    """The only message a node receives per job: the same fields whatever the role."""

    TAG = "job"
    VERSION = 1
    WIRE_CHECKS = (field_fixed_bytes(16), field_any)

    job_id: bytes
    input: Any


class Behaviour(Protocol):
    """Decides what output a node returns for each job of a batch (public API)."""

    def outputs(
        self, jobs: Sequence[Job], compute: Callable[[Sequence[Any]], list[Any]]
    ) -> list[Any]: ...


class Honest:
    """Computes every job."""

    def outputs(
        self, jobs: Sequence[Job], compute: Callable[[Sequence[Any]], list[Any]]
    ) -> list[Any]:
        return compute([j.input for j in jobs])

    def __repr__(self) -> str:
        return "Honest()"


class CheatRate:
    """Cheats on a fraction ``rate`` of its jobs (every kind: it cannot tell them apart),
    returning ``substitute(inputs)`` for those and computing the rest honestly."""

    def __init__(
        self,
        rate: float,
        substitute: Callable[[Sequence[Any]], list[Any]],
        *,
        seed: int | None = None,
    ) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError("rate must be in [0, 1]")
        self.rate = rate
        self.substitute = substitute
        self._rng = random.Random(seed)
        self.cheated = 0

    def outputs(
        self, jobs: Sequence[Job], compute: Callable[[Sequence[Any]], list[Any]]
    ) -> list[Any]:
        cheat = [self._rng.random() < self.rate for _ in jobs]
        out: list[Any] = [None] * len(jobs)
        honest_idx = [i for i, c in enumerate(cheat) if not c]
        cheat_idx = [i for i, c in enumerate(cheat) if c]
        if honest_idx:
            for i, o in zip(honest_idx, compute([jobs[i].input for i in honest_idx]), strict=True):
                out[i] = o
        if cheat_idx:
            subs = self.substitute([jobs[i].input for i in cheat_idx])
            for i, o in zip(cheat_idx, subs, strict=True):
                out[i] = o
        self.cheated += len(cheat_idx)
        return out

    def __repr__(self) -> str:
        return f"CheatRate({self.rate})"


@dataclass(frozen=True)
class BatchResult:
    """What a node returns for a batch: outputs, its receipts, one signed commitment.

    ``receipts`` is a :class:`~posp.receipts.ReceiptBlock` (a sequence of receipts held
    as columns). Inclusion proofs are not sent: the coordinator holds the whole batch and
    checks it by recomputing the Merkle root, building a job's proof only where evidence
    needs one. Pickled (how it crosses Ray), outputs that are arrays of one dtype and
    shape (at least 1-d) travel as one stacked array and come back as its rows; any
    other outputs travel as they are. Arrays that come back are always writable.
    """

    batch: BatchCommitment
    receipts: ReceiptBlock
    outputs: tuple[Any, ...]

    def __reduce__(self) -> tuple[Any, ...]:
        return (_batch_result, (self.batch, self.receipts, pack_values(self.outputs)))


def pack_values(values: Sequence[Any]) -> tuple[str, Any]:
    """A batch's inputs or outputs for the wire: arrays of one dtype and shape as one
    stacked array (one buffer to serialise instead of one object per job), anything else
    as it is. :func:`unpack_values` gives the values back (arrays as rows of the stack)."""
    if len(values) > 1 and type(values[0]) is np.ndarray and values[0].ndim >= 1:
        # (0-d arrays stay a list: the rows of their stack would be numpy scalars)
        v0 = values[0]
        dtype, shape = v0.dtype, v0.shape
        if not dtype.hasobject and all(
            type(v) is np.ndarray and v.dtype == dtype and v.shape == shape for v in values
        ):
            return ("stacked", np.stack(values))
    return ("list", tuple(values))


def unpack_values(packed: tuple[str, Any], *, writable: bool = False) -> tuple[Any, ...]:
    """Inverse of :func:`pack_values`. With ``writable`` every array that comes back is
    one the caller may write to: Ray hands out read-only buffers, which are copied."""
    kind, data = packed
    if kind == "stacked" and type(data) is np.ndarray and data.ndim >= 2:
        if writable and not data.flags.writeable:
            data = np.array(data, copy=True)
        return tuple(data)
    if kind == "list" and type(data) in (tuple, list):
        if writable:
            return tuple(np.array(v, copy=True) if type(v) is np.ndarray
                         and not v.flags.writeable else v for v in data)
        return tuple(data)
    raise ValueError("not a packed batch")


def _batch_result(batch: BatchCommitment, receipts: ReceiptBlock, packed: Any) -> BatchResult:
    # outputs become the user's results: arrays the user may write to
    return BatchResult(batch, receipts, unpack_values(packed, writable=True))


class NodeCore:
    """A node: identity, declared execution profile, workload runner, behaviour."""

    def __init__(
        self,
        key: NodeKey,
        profile: ExecutionProfile,
        runner: Runner,
        behaviour: Behaviour | None = None,
    ) -> None:
        self.key = key
        self.public = bytes(key.public)
        self.profile = profile
        self.profile_digest = profile.digest()
        self.runner = runner
        self.behaviour: Behaviour = behaviour or Honest()
        self._seq = 0
        self._batch_seq = 0
        self.jobs_run = 0

    def run_batch(self, jobs: Sequence[Job]) -> BatchResult:
        outputs = self.behaviour.outputs(jobs, self.runner)
        if len(outputs) != len(jobs):
            raise ValueError("behaviour returned the wrong number of outputs")
        n = len(jobs)
        block = ReceiptBlock(
            self.public, self.profile_digest, self._seq,
            [j.job_id for j in jobs],
            digest_many("input", [j.input for j in jobs]),
            digest_many("output", outputs),
        )
        self._seq += n
        batch = commit_block(self.key, block, batch_seq=self._batch_seq)
        self._batch_seq += 1
        self.jobs_run += n
        return BatchResult(batch, block, tuple(outputs))
