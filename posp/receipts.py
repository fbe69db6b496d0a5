"""Job receipts: what a node commits to, and the one signature that covers a batch of them.

A :class:`Receipt` says "node N ran job J on input I and got output O under execution
profile P". A node never signs receipts one by one: it builds a Merkle tree over the
receipt digests of a batch and signs one :class:`BatchCommitment` (Ed25519 verification
costs about 70 us; a receipt digest plus Merkle proof check about 20 us for a batch of 256). Each job then travels as a
:class:`SignedReceipt`: the receipt, its index and inclusion proof, and the signed batch.

What is signed
    The node signs ``BatchCommitment.commitment``, the 32-byte digest
    ``digest("batch", encode(["batch", 1, node, batch_seq, count, root]))``, i.e. the
    domain-separated digest of the record's own wire form without its signature field.
    The commitment identifies the batch independently of the signature bytes, which is
    what the sampling PRF takes as input: the node has committed (signed) before any
    sampling decision about the batch can exist.

An :class:`ExecutionProfile` records what decides floating-point results (library
versions, device, dtype, thread count, batching, determinism flags, platform). A receipt
carries its digest; a coordinator that registered the node's profile checks it with
``verify_receipt(..., expected_profile_digest=...)``.

Verification returns the verified value or raises :class:`~posp.errors.BadSignature`
(forgery, tampering) or :class:`~posp.errors.ProfileMismatch` (an authentic receipt made
under another profile); it never returns a bool.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import os
import platform as _platform
import random
import sys
from collections.abc import Callable, MutableMapping, Sequence
from functools import lru_cache
from typing import Any, ClassVar, Protocol

from .digest import digest, digest_value
from .encoding import (
    Record,
    encode,
    encode_flat,
    field_bool,
    field_digest,
    field_fixed_bytes,
    field_list,
    field_record,
    field_str,
    field_uint,
    record,
)
from .errors import BadSignature, ConfigError, MalformedMessage, ProfileMismatch
from .identity import SIGNATURE_BYTES, NodeKey, PublicKey
from .merkle import (
    merkle_levels,
    merkle_proofs,
    merkle_root,
    proof_from_levels,
    verify_inclusion,
)

__all__ = [
    "JOB_ID_BYTES",
    "BatchCommitment",
    "ExecutionProfile",
    "JobIds",
    "Receipt",
    "ReceiptBatch",
    "ReceiptBlock",
    "ReceiptRef",
    "SignedReceipt",
    "capture_profile",
    "commit_batch",
    "commit_block",
    "job_id_from_seed",
    "new_job_id",
    "prove_equivocation",
    "sign_batch",
    "verify_batch",
    "verify_block",
    "verify_receipt",
    "verify_whole_batch",
]

JOB_ID_BYTES = 16
#: a Merkle proof never needs more siblings than this (2**64 leaves)
MAX_PROOF_LEN = 64


# ---- value checks shared by constructors ----------------------------------------------


def _need_bytes(value: Any, n: int, name: str) -> None:
    if type(value) is not bytes:
        raise MalformedMessage(f"expected bytes, got {type(value).__name__}", field=name)
    if len(value) != n:
        raise MalformedMessage(f"expected {n} bytes, got {len(value)}", field=name)


def _need_uint(value: Any, name: str, *, minimum: int = 0) -> None:
    if type(value) is not int:
        raise MalformedMessage(f"expected int, got {type(value).__name__}", field=name)
    if not minimum <= value < 2**64:
        raise MalformedMessage(f"expected an int in [{minimum}, 2**64)", field=name)


def _need_type(value: Any, typ: type, name: str) -> None:
    if type(value) is not typ:
        raise MalformedMessage(
            f"expected {typ.__name__}, got {type(value).__name__}", field=name
        )


def _field_pair(value: Any, name: str) -> tuple[str, str]:
    if not isinstance(value, list) or len(value) != 2:
        raise MalformedMessage("expected a [name, version] pair", field=name)
    return (field_str(value[0], f"{name}[0]"), field_str(value[1], f"{name}[1]"))


def _field_threads(value: Any, name: str) -> int:
    v = field_uint(value, name)
    if v < 1:
        raise MalformedMessage("expected at least 1 thread", field=name)
    return v


# ---- execution profile ----------------------------------------------------------------


@record
@dataclasses.dataclass(frozen=True, slots=True)
class ExecutionProfile(Record):
    """What decides a node's floating-point results.

    ``libraries`` are ``(name, version)`` pairs sorted by name, names unique; a library
    that is not installed has version ``"absent"``. Build one with
    :func:`capture_profile`.
    """

    TAG: ClassVar[str] = "profile"
    VERSION: ClassVar[int] = 1
    WIRE_CHECKS: ClassVar[tuple[Callable[[Any, str], Any], ...]] = (
        field_list(_field_pair),
        field_str,
        field_str,
        _field_threads,
        field_bool,
        field_bool,
        field_str,
    )

    libraries: tuple[tuple[str, str], ...]
    device: str
    dtype: str
    threads: int
    batched: bool
    deterministic: bool
    platform: str

    def __post_init__(self) -> None:
        _need_type(self.libraries, tuple, "profile.libraries")
        for i, pair in enumerate(self.libraries):
            where = f"profile.libraries[{i}]"
            if type(pair) is not tuple or len(pair) != 2:
                raise MalformedMessage("expected a (name, version) tuple", field=where)
            _need_type(pair[0], str, where)
            _need_type(pair[1], str, where)
        names = [name for name, _ in self.libraries]
        if names != sorted(set(names)):
            raise MalformedMessage("names must be sorted and unique", field="profile.libraries")
        for name in ("device", "dtype", "platform"):
            _need_type(getattr(self, name), str, f"profile.{name}")
        _need_uint(self.threads, "profile.threads", minimum=1)
        _need_type(self.batched, bool, "profile.batched")
        _need_type(self.deterministic, bool, "profile.deterministic")

    def digest(self) -> bytes:
        """The 32-byte digest that receipts carry as ``profile_digest``."""
        return digest_value("profile", self)

    @property
    def label(self) -> str:
        """A short human label, e.g. ``cpu/float32/t2/batched``."""
        parts = [self.device, self.dtype, f"t{self.threads}"]
        parts.append("batched" if self.batched else "single")
        if self.deterministic:
            parts.append("det")
        return "/".join(parts)


@lru_cache(maxsize=1)
def _cpu_model() -> str:
    """The CPU model name, when it is cheap to read; whitespace normalised."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, sep, value = line.partition(":")
                if sep and key.strip() in ("model name", "Model", "cpu model"):
                    return " ".join(value.split())
    except OSError:
        pass
    if sys.platform == "darwin":
        return " ".join(_platform.processor().split())
    return ""


def _platform_string() -> str:
    base = (
        f"{_platform.system()}-{_platform.machine()}"
        f"-py{sys.version_info.major}.{sys.version_info.minor}"
    )
    cpu = _cpu_model()
    return f"{base}-{cpu}" if cpu else base


def _library_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def capture_profile(
    *,
    threads: int,
    batched: bool,
    device: str = "cpu",
    dtype: str = "float32",
    deterministic: bool = False,
    libraries: Sequence[str] = ("numpy", "torch"),
) -> ExecutionProfile:
    """The profile of this process: library versions (from package metadata, without
    importing them), the given execution settings, and the platform
    (``System-machine-pyX.Y-CPU model``)."""
    if isinstance(libraries, str):
        raise ConfigError("expected a sequence of library names", key="libraries")
    pairs = tuple((name, _library_version(name)) for name in sorted(set(libraries)))
    return ExecutionProfile(
        libraries=pairs,
        device=device,
        dtype=dtype,
        threads=threads,
        batched=batched,
        deterministic=deterministic,
        platform=_platform_string(),
    )


# ---- receipts -------------------------------------------------------------------------


@record
@dataclasses.dataclass(frozen=True, slots=True)
class Receipt(Record):
    """Node ``node`` ran job ``job_id`` on input ``input_digest`` and got ``output_digest``
    under profile ``profile_digest``; ``seq`` is the node's own receipt counter."""

    TAG: ClassVar[str] = "receipt"
    VERSION: ClassVar[int] = 1
    WIRE_CHECKS: ClassVar[tuple[Callable[[Any, str], Any], ...]] = (
        field_fixed_bytes(JOB_ID_BYTES),
        field_digest,
        field_digest,
        field_digest,
        field_digest,
        field_uint,
    )

    job_id: bytes
    node: bytes
    input_digest: bytes
    output_digest: bytes
    profile_digest: bytes
    seq: int

    def __post_init__(self) -> None:
        # one per job: the common, valid case is checked inline; the helpers below only
        # run to name the field that is wrong
        j, n, i, o, p, q = (self.job_id, self.node, self.input_digest, self.output_digest,
                            self.profile_digest, self.seq)
        if (
            type(j) is bytes and len(j) == JOB_ID_BYTES
            and type(n) is bytes and len(n) == 32
            and type(i) is bytes and len(i) == 32
            and type(o) is bytes and len(o) == 32
            and type(p) is bytes and len(p) == 32
            and type(q) is int and 0 <= q < 2**64
        ):
            return
        _need_bytes(self.job_id, JOB_ID_BYTES, "receipt.job_id")
        _need_bytes(self.node, 32, "receipt.node")
        _need_bytes(self.input_digest, 32, "receipt.input_digest")
        _need_bytes(self.output_digest, 32, "receipt.output_digest")
        _need_bytes(self.profile_digest, 32, "receipt.profile_digest")
        _need_uint(self.seq, "receipt.seq")

    def to_wire(self) -> list[Any]:
        # Hot path (one per job). The fields were checked in __post_init__ to be exact
        # bytes and in-range ints, which is already their wire form; a test pins this to
        # Record.to_wire.
        return [
            self.TAG, self.VERSION, self.job_id, self.node, self.input_digest,
            self.output_digest, self.profile_digest, self.seq,
        ]

    def __repr__(self) -> str:
        return (f"Receipt(job={self.job_id.hex()}, node={self.node.hex()[:16]}…, "
                f"input={self.input_digest.hex()[:16]}…, output={self.output_digest.hex()[:16]}…, "
                f"profile={self.profile_digest.hex()[:16]}…, seq={self.seq})")

    def digest(self) -> bytes:
        """The receipt's Merkle leaf: ``digest_value("receipt", self)``.

        Computed as ``digest("receipt", encode(self))``, which is the same value for a
        record without floats and about twice as fast (one per job).
        """
        return digest("receipt", encode_flat(self.to_wire()))


# msgpack framing of a receipt's wire form around its per-job fields (see ReceiptBlock)
_R_HEAD = b"\x98\xa7receipt\x01\xc4\x10"  # fixarray(8), "receipt", version 1, bin8(16)
_R_BIN32 = b"\xc4\x20"  # bin8(32): every digest field
_R_PREFIX = b"posp/receipt\x00"  # digest("receipt", ...) framing


def _uint_wire(v: int) -> bytes:
    """msgpack's (canonical, smallest) encoding of an unsigned int."""
    if v < 0x80:
        return bytes((v,))
    if v < 0x100:
        return b"\xcc" + v.to_bytes(1, "big")
    if v < 0x10000:
        return b"\xcd" + v.to_bytes(2, "big")
    if v < 0x1_0000_0000:
        return b"\xce" + v.to_bytes(4, "big")
    return b"\xcf" + v.to_bytes(8, "big")


class ReceiptBlock(Sequence[Receipt]):
    """A whole batch's receipts in columnar form: what a node sends back with a batch.

    The receipts of one batch share their node, their profile digest and consecutive
    sequence numbers, so per job only the job id, the input digest and the output
    digest are held. The block is a read-only sequence of :class:`Receipt` (built on
    access); :meth:`leaves` computes every receipt's Merkle leaf straight from the
    columns, byte-identical to ``Receipt.digest()`` (a test pins it). It pickles as
    three byte strings, which is how a batch's receipts cross Ray.
    """

    __slots__ = ("node", "profile_digest", "seq0", "job_ids", "input_digests",
                 "output_digests", "_leaves")

    def __init__(self, node: bytes, profile_digest: bytes, seq0: int,
                 job_ids: Sequence[bytes], input_digests: Sequence[bytes],
                 output_digests: Sequence[bytes]) -> None:
        _need_bytes(node, 32, "block.node")
        _need_bytes(profile_digest, 32, "block.profile_digest")
        n = len(job_ids)
        _need_uint(seq0, "block.seq0")
        _need_uint(seq0 + n, "block.seq0")
        if len(input_digests) != n or len(output_digests) != n:
            raise MalformedMessage("one input and one output digest per job id", field="block")
        for name, col, size in (("job_ids", job_ids, JOB_ID_BYTES),
                                ("input_digests", input_digests, 32),
                                ("output_digests", output_digests, 32)):
            if not all(type(x) is bytes and len(x) == size for x in col):
                raise MalformedMessage(f"every item is {size} bytes", field=f"block.{name}")
        self.node = node
        self.profile_digest = profile_digest
        self.seq0 = seq0
        self.job_ids = tuple(job_ids)
        self.input_digests = tuple(input_digests)
        self.output_digests = tuple(output_digests)
        self._leaves: list[bytes] | None = None

    @classmethod
    def of(cls, receipts: Sequence[Receipt]) -> ReceiptBlock | None:
        """The block holding exactly ``receipts``, or None when they do not share one
        node and profile with consecutive sequence numbers."""
        if not receipts or not all(type(r) is Receipt for r in receipts):
            return None
        r0 = receipts[0]
        for i, r in enumerate(receipts):
            if (r.node != r0.node or r.profile_digest != r0.profile_digest
                    or r.seq != r0.seq + i):
                return None
        return cls(r0.node, r0.profile_digest, r0.seq,
                   [r.job_id for r in receipts], [r.input_digest for r in receipts],
                   [r.output_digest for r in receipts])

    def __len__(self) -> int:
        return len(self.job_ids)

    def receipt(self, i: int) -> Receipt:
        return Receipt(job_id=self.job_ids[i], node=self.node,
                       input_digest=self.input_digests[i],
                       output_digest=self.output_digests[i],
                       profile_digest=self.profile_digest, seq=self.seq0 + i)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self.receipt(k) for k in range(*i.indices(len(self)))]
        n = len(self)
        if not -n <= i < n:
            raise IndexError("receipt index out of range")
        return self.receipt(i % n)

    def leaves(self) -> list[bytes]:
        """Every receipt's Merkle leaf, ``Receipt.digest()``, computed from the columns
        (once; :func:`verify_block` always recomputes them)."""
        if self._leaves is None:
            self._leaves = self.compute_leaves()
        return self._leaves

    def compute_leaves(self) -> list[bytes]:
        """:meth:`leaves`, recomputed from the columns now, never from a cache."""
        sha = hashlib.sha256
        mid = _R_BIN32 + self.node + _R_BIN32
        tail = _R_BIN32 + self.profile_digest
        pre = _R_PREFIX + _R_HEAD
        seq = self.seq0
        out = []
        for j, i, o in zip(self.job_ids, self.input_digests, self.output_digests, strict=True):
            # lengths are part of the framing: a wrong-sized item must not hash as a receipt
            if len(j) != JOB_ID_BYTES or len(i) != 32 or len(o) != 32:
                raise ValueError("a column item has the wrong length")
            out.append(sha(b"".join((pre, j, mid, i, _R_BIN32, o, tail,
                                     _uint_wire(seq)))).digest())
            seq += 1
        return out

    def __reduce__(self) -> tuple[Any, ...]:
        return (_block_from_wire, (self.node, self.profile_digest, self.seq0,
                                   b"".join(self.job_ids), b"".join(self.input_digests),
                                   b"".join(self.output_digests)))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ReceiptBlock):
            return NotImplemented
        return self.__reduce__()[1] == other.__reduce__()[1]

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"ReceiptBlock(node={self.node.hex()[:16]}…, jobs={len(self)}, seq0={self.seq0})"


def _split(blob: Any, size: int, name: str) -> list[bytes]:
    if type(blob) is not bytes or len(blob) % size:
        raise MalformedMessage(f"a concatenation of {size}-byte items", field=f"block.{name}")
    return [blob[i : i + size] for i in range(0, len(blob), size)]


def _block_from_wire(node: bytes, profile: bytes, seq0: int, jids: bytes, ins: bytes,
                     outs: bytes) -> ReceiptBlock:
    return ReceiptBlock(node, profile, seq0, _split(jids, JOB_ID_BYTES, "job_ids"),
                        _split(ins, 32, "input_digests"), _split(outs, 32, "output_digests"))


def _header_digest(node: bytes, batch_seq: int, count: int, root: bytes) -> bytes:
    # every caller passes checked wire values (bytes and uints): no conversion pass
    header = [BatchCommitment.TAG, BatchCommitment.VERSION, node, batch_seq, count, root]
    return digest("batch", encode_flat(header))


@record
@dataclasses.dataclass(frozen=True, slots=True)
class BatchCommitment(Record):
    """A node's signature over the Merkle root of ``count`` receipts.

    ``signature`` signs :attr:`commitment` (see the module docstring). ``batch_seq`` is
    the node's own batch counter.
    """

    TAG: ClassVar[str] = "batch"
    VERSION: ClassVar[int] = 1
    WIRE_CHECKS: ClassVar[tuple[Callable[[Any, str], Any], ...]] = (
        field_digest,
        field_uint,
        field_uint,
        field_digest,
        field_fixed_bytes(SIGNATURE_BYTES),
    )

    node: bytes
    batch_seq: int
    count: int
    root: bytes
    signature: bytes

    def __post_init__(self) -> None:
        _need_bytes(self.node, 32, "batch.node")
        _need_uint(self.batch_seq, "batch.batch_seq")
        _need_uint(self.count, "batch.count", minimum=1)
        _need_bytes(self.root, 32, "batch.root")
        _need_bytes(self.signature, SIGNATURE_BYTES, "batch.signature")

    def to_wire(self) -> list[Any]:
        # fields are already in wire form (checked in __post_init__); see Receipt.to_wire
        return [self.TAG, self.VERSION, self.node, self.batch_seq, self.count, self.root,
                self.signature]

    @property
    def commitment(self) -> bytes:
        """The 32-byte digest of the header (everything but the signature): the signed
        message, and the batch's identity for the sampling PRF."""
        return _header_digest(self.node, self.batch_seq, self.count, self.root)

    def verify(self) -> BatchCommitment:
        """Return ``self`` if the node's signature covers this header; else raise
        :class:`~posp.errors.BadSignature`."""
        PublicKey(self.node).verify(self.commitment, self.signature)
        return self


_proof_items = field_list(field_digest)


def _field_proof(value: Any, name: str) -> tuple[bytes, ...]:
    if isinstance(value, list) and len(value) > MAX_PROOF_LEN:
        raise MalformedMessage(f"more than {MAX_PROOF_LEN} proof items", field=name)
    return _proof_items(value, name)


@record
@dataclasses.dataclass(frozen=True, slots=True)
class SignedReceipt(Record):
    """One job's receipt with its Merkle inclusion proof and its node's signed batch."""

    TAG: ClassVar[str] = "signed_receipt"
    VERSION: ClassVar[int] = 1
    WIRE_CHECKS: ClassVar[tuple[Callable[[Any, str], Any], ...]] = (
        field_record(Receipt),
        field_uint,
        _field_proof,
        field_record(BatchCommitment),
    )

    receipt: Receipt
    index: int
    proof: tuple[bytes, ...]
    batch: BatchCommitment

    def __post_init__(self) -> None:
        _need_type(self.receipt, Receipt, "signed_receipt.receipt")
        _need_uint(self.index, "signed_receipt.index")
        _need_type(self.proof, tuple, "signed_receipt.proof")
        if len(self.proof) > MAX_PROOF_LEN:
            raise MalformedMessage(
                f"more than {MAX_PROOF_LEN} proof items", field="signed_receipt.proof"
            )
        for i, item in enumerate(self.proof):
            _need_bytes(item, 32, f"signed_receipt.proof[{i}]")
        _need_type(self.batch, BatchCommitment, "signed_receipt.batch")

    def to_wire(self) -> list[Any]:
        return [self.TAG, self.VERSION, self.receipt.to_wire(), self.index, list(self.proof),
                self.batch.to_wire()]


# ---- signing and verification ---------------------------------------------------------


def commit_batch(key: NodeKey, receipts: Sequence[Receipt], *, batch_seq: int) -> BatchCommitment:
    """Sign ``receipts`` with one Ed25519 signature, without building inclusion proofs.

    What a node returns with its outputs: the coordinator, holding the whole batch,
    checks it by recomputing the root (:func:`verify_whole_batch`) and builds a job's
    proof only when the job needs portable evidence (:meth:`ReceiptBatch.signed`).
    """
    return _commit(key, receipts, batch_seq)[0]


def _commit(
    key: NodeKey, receipts: Sequence[Receipt], batch_seq: int
) -> tuple[BatchCommitment, list[bytes]]:
    if not receipts:
        raise ConfigError("cannot sign an empty batch", key="receipts")
    _need_uint(batch_seq, "batch_seq")
    node = bytes(key.public)
    seen: set[bytes] = set()
    for i, r in enumerate(receipts):
        if not isinstance(r, Receipt):
            raise ConfigError(f"expected a Receipt, got {type(r).__name__}", key=f"receipts[{i}]")
        if r.node != node:
            raise ConfigError(
                f"receipt names node {r.node[:4].hex()}, not the signing key "
                f"{key.public.short}",
                key=f"receipts[{i}].node",
            )
        if r.job_id in seen:
            raise ConfigError(
                f"job id {r.job_id.hex()} appears twice in the batch", key=f"receipts[{i}].job_id"
            )
        seen.add(r.job_id)
    leaves = [r.digest() for r in receipts]
    root = merkle_root(leaves)
    count = len(leaves)
    signature = key.sign(_header_digest(node, batch_seq, count, root))
    batch = BatchCommitment(
        node=node, batch_seq=batch_seq, count=count, root=root, signature=signature
    )
    return batch, leaves


def commit_block(key: NodeKey, block: ReceiptBlock, *, batch_seq: int) -> BatchCommitment:
    """:func:`commit_batch` for a :class:`ReceiptBlock` (a node's hot path): the leaves
    come straight from the columns, one Merkle root, one signature."""
    if not len(block):
        raise ConfigError("cannot sign an empty batch", key="receipts")
    _need_uint(batch_seq, "batch_seq")
    node = bytes(key.public)
    if block.node != node:
        raise ConfigError(
            f"block names node {block.node[:4].hex()}, not the signing key {key.public.short}",
            key="block.node",
        )
    if len(set(block.job_ids)) != len(block):
        raise ConfigError("a job id appears twice in the batch", key="block.job_ids")
    count = len(block)
    root = merkle_root(block.leaves())
    signature = key.sign(_header_digest(node, batch_seq, count, root))
    return BatchCommitment(node=node, batch_seq=batch_seq, count=count, root=root,
                           signature=signature)


class ReceiptBatch:
    """A verified whole batch: its commitment, its receipts, their leaf digests.

    Inclusion proofs are built on first demand, all at once (O(n log n)), so a job that
    never needs portable evidence costs no proof at all.
    """

    __slots__ = ("batch", "receipts", "_leaves", "_levels")

    def __init__(self, batch: BatchCommitment, receipts: Sequence[Receipt],
                 leaves: Sequence[bytes]) -> None:
        self.batch = batch
        # a ReceiptBlock stays columnar (receipts built on access); a list becomes a tuple
        self.receipts: Sequence[Receipt] = (
            receipts if isinstance(receipts, ReceiptBlock) else tuple(receipts))
        self._leaves = list(leaves)
        self._levels: list[list[bytes]] | None = None

    def signed(self, index: int) -> SignedReceipt:
        if self._levels is None:  # the tree once, O(n); then each proof is O(log n)
            self._levels = merkle_levels(self._leaves)
        return SignedReceipt(receipt=self.receipts[index], index=index,
                             proof=proof_from_levels(self._levels, index), batch=self.batch)


class ReceiptRef:
    """One job's receipt as the coordinator holds it: the receipt (built on first access
    when it sits in a :class:`ReceiptBlock`), its portable :class:`SignedReceipt` (with
    proof) when asked."""

    __slots__ = ("_receipt", "_rb", "_index", "_signed")

    def __init__(self, receipt: Receipt | None, *, batch: ReceiptBatch | None = None,
                 index: int = 0, signed: SignedReceipt | None = None) -> None:
        if receipt is None and batch is None:
            raise ConfigError("a receipt or its batch is needed", key="receipt")
        self._receipt = receipt
        self._rb = batch
        self._index = index
        self._signed = signed

    @property
    def receipt(self) -> Receipt:
        r = self._receipt
        if r is None:
            assert self._rb is not None
            r = self._receipt = self._rb.receipts[self._index]
        return r

    def _block(self) -> ReceiptBlock | None:
        """The columns this receipt sits in, while its object has not been built."""
        if self._receipt is None and self._rb is not None:
            rs = self._rb.receipts
            if isinstance(rs, ReceiptBlock):
                return rs
        return None

    @property
    def job_id(self) -> bytes:
        """The receipt's job id, without building the receipt."""
        b = self._block()
        return self.receipt.job_id if b is None else b.job_ids[self._index]

    @property
    def output_digest(self) -> bytes:
        """The receipt's output digest, without building the receipt."""
        b = self._block()
        return self.receipt.output_digest if b is None else b.output_digests[self._index]

    @property
    def profile_digest(self) -> bytes:
        """The receipt's profile digest, without building the receipt."""
        b = self._block()
        return self.receipt.profile_digest if b is None else b.profile_digest

    @classmethod
    def of(cls, signed: SignedReceipt) -> ReceiptRef:
        return cls(signed.receipt, signed=signed)

    def signed(self) -> SignedReceipt:
        if self._signed is None:
            assert self._rb is not None
            self._signed = self._rb.signed(self._index)
        return self._signed

    def __repr__(self) -> str:
        r = self.receipt
        return f"ReceiptRef(job={r.job_id.hex()[:12]}, node={r.node.hex()[:8]})"


def verify_whole_batch(
    batch: BatchCommitment,
    receipts: Sequence[Receipt],
    *,
    expected_profile_digest: bytes | None = None,
    verified_batches: MutableMapping[BatchCommitment, bytes] | None = None,
) -> ReceiptBatch:
    """:func:`verify_batch`, keeping the leaf digests for later proofs."""
    if len(receipts) != batch.count:
        raise BadSignature(f"batch signs {batch.count} receipts, got {len(receipts)}")
    for i, r in enumerate(receipts):
        if type(r) is not Receipt:
            raise BadSignature(f"receipts[{i}] is not a Receipt")
        if r.node != batch.node:
            raise BadSignature(f"receipts[{i}] names another node than the batch's signer")
    leaves = [r.digest() for r in receipts]
    if merkle_root(leaves) != batch.root:
        raise BadSignature("receipts do not hash to the signed root")
    _verify_batch_cached(batch, verified_batches)
    for r in receipts:
        _check_profile(r, expected_profile_digest)
    return ReceiptBatch(batch, receipts, leaves)


def verify_block(
    batch: BatchCommitment,
    block: ReceiptBlock,
    *,
    expected_profile_digest: bytes | None = None,
    verified_batches: MutableMapping[BatchCommitment, bytes] | None = None,
) -> ReceiptBatch:
    """:func:`verify_whole_batch` for a :class:`ReceiptBlock`: one root recomputation from
    the columns and one (cached) signature check, without building a receipt object."""
    if type(block) is not ReceiptBlock:
        raise BadSignature("not a ReceiptBlock")
    if len(block) != batch.count:
        raise BadSignature(f"batch signs {batch.count} receipts, got {len(block)}")
    if block.node != batch.node:
        raise BadSignature("the block names another node than the batch's signer")
    # recomputed from the columns as they are now: a cached leaf list (a block mutated
    # after hashing, or crafted to skip the constructor's checks) is never trusted
    try:
        cols = (block.job_ids, block.input_digests, block.output_digests)
        if not all(type(c) is tuple and len(c) == batch.count for c in cols):
            raise BadSignature("the block's columns are malformed")
        prof, seq0 = block.profile_digest, block.seq0
        if not (type(prof) is bytes and len(prof) == 32 and type(seq0) is int
                and 0 <= seq0 and seq0 + batch.count < 2**64):
            raise BadSignature("the block's header is malformed")
        leaves = block.compute_leaves()
    except (TypeError, ValueError, AttributeError) as exc:
        raise BadSignature(f"the block is malformed: {exc}") from exc
    block._leaves = leaves
    if merkle_root(leaves) != batch.root:
        raise BadSignature("receipts do not hash to the signed root")
    _verify_batch_cached(batch, verified_batches)
    if expected_profile_digest is not None and block.profile_digest != expected_profile_digest:
        _check_profile(block.receipt(0), expected_profile_digest)
    return ReceiptBatch(batch, block, leaves)


def sign_batch(
    key: NodeKey, receipts: Sequence[Receipt], *, batch_seq: int
) -> tuple[BatchCommitment, list[SignedReceipt]]:
    """Sign ``receipts`` with one Ed25519 signature; give each its inclusion proof.

    Every receipt must name ``key``'s public key as its node, and job ids must be unique
    within the batch (a node that commits twice to one job has equivocated); otherwise
    :class:`~posp.errors.ConfigError` names the offending receipt.
    """
    batch, leaves = _commit(key, receipts, batch_seq)
    proofs = merkle_proofs(leaves)
    signed = [
        SignedReceipt(receipt=r, index=i, proof=tuple(p), batch=batch)
        for i, (r, p) in enumerate(zip(receipts, proofs, strict=True))
    ]
    return batch, signed


def _verify_batch_cached(
    batch: BatchCommitment, cache: MutableMapping[BatchCommitment, bytes] | None
) -> None:
    if cache is not None and batch in cache:
        return
    commitment = batch.commitment
    PublicKey(batch.node).verify(commitment, batch.signature)
    if cache is not None:
        cache[batch] = commitment


def _check_profile(receipt: Receipt, expected: bytes | None) -> None:
    if expected is not None and receipt.profile_digest != expected:
        raise ProfileMismatch(
            f"job {receipt.job_id.hex()}: node {receipt.node[:4].hex()} ran under profile "
            f"{receipt.profile_digest[:4].hex()}, registered profile is {expected[:4].hex()}"
        )


def verify_receipt(
    signed: SignedReceipt,
    *,
    expected_profile_digest: bytes | None = None,
    verified_batches: MutableMapping[BatchCommitment, bytes] | None = None,
) -> Receipt:
    """Return the receipt if its node signed it; else raise.

    Checks that the receipt names the batch's node, that the batch signature verifies,
    that the inclusion proof leads from the receipt to the signed root, and then (only
    for an authentic receipt) that its profile is ``expected_profile_digest``.

    ``verified_batches`` is a cache the caller keeps (batch -> commitment): a batch
    found there (equal in every field, signature included) is not verified again, and
    a batch verified here is added. Per job, a cache hit costs one Merkle proof check.
    The caller decides its lifetime (e.g. drop a node's batches once settled).

    Raises :class:`~posp.errors.BadSignature` (bad signature, bad proof, node mismatch)
    or :class:`~posp.errors.ProfileMismatch`.
    """
    receipt = signed.receipt
    batch = signed.batch
    if receipt.node != batch.node:
        raise BadSignature(
            f"receipt names node {receipt.node[:4].hex()}, batch is signed by "
            f"{batch.node[:4].hex()}"
        )
    verify_inclusion(receipt.digest(), signed.index, batch.count, signed.proof, batch.root)
    _verify_batch_cached(batch, verified_batches)
    _check_profile(receipt, expected_profile_digest)
    return receipt


def verify_batch(
    batch: BatchCommitment,
    receipts: Sequence[Receipt],
    *,
    expected_profile_digest: bytes | None = None,
    verified_batches: MutableMapping[BatchCommitment, bytes] | None = None,
) -> list[Receipt]:
    """Return all of a batch's receipts, in order, if they are exactly what was signed.

    The fast path when the coordinator holds the whole batch: the root is recomputed
    from the receipts (no proofs) and the signature checked once. Raises
    :class:`~posp.errors.BadSignature` or :class:`~posp.errors.ProfileMismatch`.
    """
    if len(receipts) != batch.count:
        raise BadSignature(f"batch signs {batch.count} receipts, got {len(receipts)}")
    for i, r in enumerate(receipts):
        if r.node != batch.node:
            raise BadSignature(
                f"receipts[{i}] names node {r.node[:4].hex()}, batch is signed by "
                f"{batch.node[:4].hex()}"
            )
    if merkle_root([r.digest() for r in receipts]) != batch.root:
        raise BadSignature("receipts do not hash to the signed root")
    _verify_batch_cached(batch, verified_batches)
    for r in receipts:
        _check_profile(r, expected_profile_digest)
    return list(receipts)


# ---- job ids --------------------------------------------------------------------------


def new_job_id() -> bytes:
    """A fresh 16-byte job id from the operating system's randomness."""
    return os.urandom(JOB_ID_BYTES)


class JobIds:
    """A source of fresh 16-byte job ids from the operating system's randomness, drawn
    4 KiB at a time (one system call per 256 ids instead of one per id)."""

    __slots__ = ("_buf", "_pos")

    def __init__(self) -> None:
        self._buf = b""
        self._pos = 0

    def __call__(self) -> bytes:
        pos = self._pos
        if pos >= len(self._buf):
            self._buf = os.urandom(256 * JOB_ID_BYTES)
            pos = 0
        self._pos = pos + JOB_ID_BYTES
        return self._buf[pos : pos + JOB_ID_BYTES]


class _BytesRng(Protocol):
    def bytes(self, length: int, /) -> bytes: ...


def job_id_from_seed(rng: random.Random | _BytesRng | int) -> bytes:
    """A reproducible 16-byte job id for simulations.

    ``rng`` is a :class:`random.Random`, a numpy ``Generator`` (anything with
    ``.bytes(n)``), which advance; or an ``int``, which maps to one fixed id
    (``digest("job_id", encode(n))[:16]``).
    """
    if isinstance(rng, bool):
        raise ConfigError("expected an rng or an int seed, got bool", key="rng")
    if isinstance(rng, int):
        return digest("job_id", encode(rng))[:JOB_ID_BYTES]
    if isinstance(rng, random.Random):
        return rng.randbytes(JOB_ID_BYTES)
    if hasattr(rng, "bytes"):
        out = rng.bytes(JOB_ID_BYTES)
        if type(out) is bytes and len(out) == JOB_ID_BYTES:
            return out
    raise ConfigError(f"cannot draw bytes from {type(rng).__name__}", key="rng")


# ---- equivocation ---------------------------------------------------------------------


def prove_equivocation(
    a: SignedReceipt,
    b: SignedReceipt,
    *,
    verified_batches: MutableMapping[BatchCommitment, bytes] | None = None,
) -> tuple[Receipt, Receipt]:
    """Return both receipts if they are authentic, by the same node, for the same job id,
    with different output digests: the node signed two results for one job.

    This is evidence of two commitments, not by itself proof of a wrong output: an
    honest node that ran a job twice (a retry after a crash, a different batch) may get
    results that differ in the last bits. The protocol must hand such evidence to the
    comparator and arbitration, not slash on it directly; and it must give every
    dispatch a fresh job id, so that an honest node never sees one job id twice.

    Raises :class:`~posp.errors.BadSignature` if either receipt does not verify, and
    :class:`~posp.errors.ConfigError` if the pair is not an equivocation.
    """
    ra = verify_receipt(a, verified_batches=verified_batches)
    rb = verify_receipt(b, verified_batches=verified_batches)
    if ra.node != rb.node:
        raise ConfigError("receipts are signed by different nodes", key="b")
    if ra.job_id != rb.job_id:
        raise ConfigError("receipts are for different job ids", key="b")
    if ra.output_digest == rb.output_digest:
        raise ConfigError("receipts commit to the same output", key="b")
    return ra, rb
