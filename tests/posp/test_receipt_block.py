"""The columnar receipt block: byte-identical to per-receipt hashing, strict on the wire."""

from __future__ import annotations

import os
import pickle
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from posp.compare import Exact
from posp.digest import digest_many, digest_value
from posp.errors import BadSignature, MalformedMessage, ProfileMismatch
from posp.identity import NodeKey
from posp.node import BatchResult, NodeCore
from posp.protocol import Protocol, State
from posp.receipts import (
    JobIds,
    Receipt,
    ReceiptBlock,
    capture_profile,
    commit_batch,
    commit_block,
    verify_block,
    verify_receipt,
)
from posp.sampling import UniformPolicy, decide, rates_to_ppb

KEY = NodeKey.from_seed(b"k" * 32)
NODE = bytes(KEY.public)
PROFILE = b"p" * 32


def _receipts(n: int, seq0: int) -> list[Receipt]:
    rng = random.Random(n * 7919 + seq0)
    return [Receipt(rng.randbytes(16), NODE, rng.randbytes(32), rng.randbytes(32), PROFILE,
                    seq0 + i) for i in range(n)]


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 70), seq0=st.sampled_from([0, 1, 100, 127, 128, 255, 256, 65535,
                                                   65536, 2**32 - 3, 2**32, 2**63]))
def test_block_leaves_and_commitment_equal_per_receipt_hashing(n: int, seq0: int) -> None:
    rs = _receipts(n, seq0)
    block = ReceiptBlock.of(rs)
    assert block is not None
    assert block.leaves() == [r.digest() for r in rs]
    assert list(block) == rs and block[-1] == rs[-1] and block[1:3] == rs[1:3]
    assert commit_block(KEY, block, batch_seq=5) == commit_batch(KEY, rs, batch_seq=5)


def test_block_pickles_compactly_and_round_trips() -> None:
    rs = _receipts(64, 10)
    block = ReceiptBlock.of(rs)
    assert block is not None
    wire = pickle.dumps(block, protocol=5)
    back = pickle.loads(wire)
    assert back == block and back.leaves() == block.leaves()
    assert len(wire) < 64 * (16 + 32 + 32) + 400  # three byte strings, not 64 objects


def test_block_refuses_what_it_cannot_hold() -> None:
    rs = _receipts(3, 0)
    gap = [rs[0], rs[1], Receipt(rs[2].job_id, NODE, rs[2].input_digest, rs[2].output_digest,
                                 PROFILE, 7)]
    assert ReceiptBlock.of(gap) is None
    assert ReceiptBlock.of([]) is None
    with pytest.raises(MalformedMessage):
        ReceiptBlock(NODE, PROFILE, 0, [b"x" * 15], [b"i" * 32], [b"o" * 32])
    with pytest.raises(MalformedMessage):
        ReceiptBlock(NODE, PROFILE, 0, [b"x" * 16], [b"i" * 32], [])
    # a truncated column on the wire is a typed error
    rebuild, (node, prof, seq0, jids, ins, outs) = ReceiptBlock.of(rs).__reduce__()  # type: ignore[union-attr]
    with pytest.raises(MalformedMessage):
        rebuild(node, prof, seq0, jids, ins[:-1], outs)
    with pytest.raises(MalformedMessage):
        rebuild(node, prof, seq0, jids, "not bytes", outs)


def test_verify_block_catches_any_changed_column_and_the_profile() -> None:
    rs = _receipts(9, 3)
    block = ReceiptBlock.of(rs)
    assert block is not None
    batch = commit_block(KEY, block, batch_seq=1)
    rb = verify_block(batch, block, expected_profile_digest=PROFILE)
    verify_receipt(rb.signed(4), expected_profile_digest=PROFILE)
    for col in ("job_ids", "input_digests", "output_digests"):
        bad = pickle.loads(pickle.dumps(block))
        items = list(getattr(bad, col))
        items[5] = bytes([items[5][0] ^ 1]) + items[5][1:]
        setattr(bad, col, tuple(items))
        with pytest.raises(BadSignature):
            verify_block(batch, bad)
    shifted = ReceiptBlock(NODE, PROFILE, 4, block.job_ids, block.input_digests,
                           block.output_digests)
    with pytest.raises(BadSignature):
        verify_block(batch, shifted)
    with pytest.raises(ProfileMismatch):
        verify_block(batch, block, expected_profile_digest=b"q" * 32)


@settings(max_examples=40, deadline=None)
@given(kind=st.sampled_from(["f4", "f8", "int", "mixed", "nan", "scalar", "negzero",
                             "strided"]),
       n=st.integers(0, 40))
def test_digest_many_is_digest_value_per_item(kind: str, n: int) -> None:
    g = np.random.default_rng(n)
    if kind == "f4":
        values: list = list(g.random((n, 7)).astype(np.float32))
    elif kind == "f8":
        values = [g.random((2, 3)) for _ in range(n)]
    elif kind == "int":
        values = [int(v) for v in g.integers(-(2**40), 2**40, n)]
    elif kind == "mixed":
        values = [g.random(3).astype(np.float32) if i % 2 else g.random(4) for i in range(n)]
    elif kind == "nan":
        values = list(g.random((n, 5)).astype(np.float32))
        if n:
            values[n // 2][1] = np.nan
    elif kind == "negzero":
        values = [np.array([0.0, -0.0][i % 2], np.float32).reshape(1) for i in range(n)]
    elif kind == "strided":
        values = [g.random((4, 6))[:, ::2] for _ in range(n)]
    else:
        values = [float(v) for v in g.random(n)]
    assert digest_many("output", values) == [digest_value("output", v) for v in values]


def test_job_ids_are_fresh_and_sixteen_bytes() -> None:
    ids = JobIds()
    drawn = [ids() for _ in range(1000)]
    assert all(len(i) == 16 for i in drawn)
    assert len(set(drawn)) == 1000


def test_one_rate_fast_path_decides_like_mixed_rates() -> None:
    seed, c = os.urandom(32), os.urandom(32)
    for r in (0.0, 0.05, 0.5, 1.0, 1e-9):
        same = decide(seed, c, ppb=rates_to_ppb([r] * 64))
        mixed = decide(seed, c, ppb=rates_to_ppb([r] * 63 + [0.3]))
        assert same[:63] == mixed[:63]


def _ray_like_round_trip(obj):  # type: ignore[no-untyped-def]
    """pickle with out-of-band buffers handed back read-only, as Ray's object store does."""
    bufs: list = []
    wire = pickle.dumps(obj, protocol=5, buffer_callback=bufs.append)
    return pickle.loads(wire, buffers=[memoryview(b.raw()).toreadonly() for b in bufs])


@pytest.mark.parametrize("shape", [(3,), (2, 2), ()])
@pytest.mark.parametrize("n", [1, 5])
def test_batch_result_crosses_the_wire_writable_and_digest_equal(shape, n) -> None:
    from posp.node import Job

    core = NodeCore(KEY, capture_profile(threads=1, batched=True),
                    lambda xs: [np.array(np.asarray(x, np.float32) * 2) for x in xs])
    res = core.run_batch([Job(os.urandom(16), np.full(shape, i, np.float32))
                          for i in range(n)])
    back: BatchResult = _ray_like_round_trip(res)
    assert back.batch == res.batch and back.receipts == res.receipts
    assert all(type(o) is np.ndarray and o.shape == shape and o.flags.writeable
               for o in back.outputs)
    # what arrives hashes to what was signed (0-d arrays must not become numpy scalars)
    assert digest_many("output", list(back.outputs)) == list(res.receipts.output_digests)


@pytest.mark.parametrize("shape", [(4,), ()])
def test_packed_inputs_keep_their_digests(shape) -> None:
    from posp.node import pack_values, unpack_values

    xs = [np.full(shape, i, np.float64) for i in range(6)]
    back = unpack_values(_ray_like_round_trip(pack_values(xs)))
    assert digest_many("input", list(back)) == digest_many("input", xs)


def test_verify_block_never_trusts_cached_leaves() -> None:
    rs = _receipts(6, 0)
    block = ReceiptBlock.of(rs)
    assert block is not None
    batch = commit_block(KEY, block, batch_seq=2)
    block.leaves()  # cached: the signed leaves
    # a column changed after hashing (or a crafted pickle with a pre-filled cache)
    block.output_digests = (b"\x00" * 32, *block.output_digests[1:])
    with pytest.raises(BadSignature):
        verify_block(batch, block)
    # a column of the wrong type is a typed error, not a crash
    block.output_digests = [r.output_digest for r in rs]  # type: ignore[assignment]
    with pytest.raises(BadSignature):
        verify_block(batch, block)


def test_protocol_takes_a_block_and_rejects_a_forged_one() -> None:
    nodes = [NodeCore(NodeKey.from_seed(bytes([i]) * 32), capture_profile(threads=1, batched=True),
                      lambda xs: [x * 3 for x in xs]) for i in range(2)]
    proto = Protocol(ledger=None, comparator=Exact(), policy=UniformPolicy(0.0))
    for n in nodes:
        proto.register(n.public, n.profile_digest)
    from posp.node import Job

    tids = [proto.new_task(digest_value("input", x)) for x in range(4)]
    jids = proto.first_jobs(tids, nodes[0].public)
    res = nodes[0].run_batch([Job(j, x) for j, x in zip(jids, range(4), strict=True)])
    # a forged block (an output digest swapped after signing): every job is a fault
    forged = pickle.loads(pickle.dumps(res.receipts))
    forged.output_digests = (digest_value("output", 99), *forged.output_digests[1:])
    follow = proto.on_batch(nodes[0].public, res.batch, forged, list(res.outputs))
    assert proto.stats["bad_receipts"] == 4 and len(follow) == 4
    # the re-issued jobs, answered honestly, settle unsampled
    again = nodes[1].run_batch([Job(a.job_id, tids.index(a.task)) for a in follow])
    proto.on_batch(nodes[1].public, again.batch, again.receipts, again.outputs)
    done = proto.flush()
    assert sorted(r.task for r in done) == tids
    assert all(r.state is State.NOT_SAMPLED and r.job_id is not None for r in done)


def test_unsampled_tasks_share_empties_that_disputes_never_write() -> None:
    import posp.protocol as P
    from posp.compare import Exact as _Exact
    from posp.node import CheatRate
    from posp.scheduler import LocalDriver

    cores = [NodeCore(NodeKey.from_seed(bytes([i + 1]) * 32),
                      capture_profile(threads=1, batched=True), lambda xs: [x * 3 for x in xs],
                      CheatRate(1.0, lambda xs: [x + 1 for x in xs], seed=i) if i < 2 else None)
             for i in range(7)]
    proto = Protocol(ledger=None, comparator=_Exact(), policy=UniformPolicy(0.5),
                     rng=random.Random(3))
    out = LocalDriver(cores, proto, batch_size=8, rng=random.Random(4)).run(list(range(300)))
    assert proto.stats["disputes"] > 0 and any(o.overturned for o in out)
    # the shared empties are immutable: any write to one would have raised above
    assert len(P._NO_RESULTS) == 0 and P._NO_NODES == frozenset() and P._NO_VERDICTS == ()


class _Flip:
    """Honest, except that it answers ``x + 1000`` once ``flip`` is set."""

    def __init__(self) -> None:
        self.flip = False

    def outputs(self, jobs, compute):  # type: ignore[no-untyped-def]
        outs = compute([j.input for j in jobs])
        return [o + 1000 for o in outs] if self.flip else outs


def test_equivocation_is_caught_through_the_windowed_int_index(monkeypatch) -> None:
    import posp.protocol as P
    from posp.node import Job

    monkeypatch.setattr(P, "_SEEN_WINDOW", 40)
    beh = _Flip()
    cores = [NodeCore(NodeKey.from_seed(bytes([i + 9]) * 32),
                      capture_profile(threads=1, batched=True), lambda xs: [x * 3 for x in xs],
                      beh if i == 0 else None) for i in range(2)]
    proto = Protocol(ledger=None, comparator=Exact(), policy=UniformPolicy(0.0))
    for c in cores:
        proto.register(c.public, c.profile_digest)
    a = cores[0]
    sent: list[tuple[bytes, int]] = []
    for b in range(20):
        xs = list(range(b * 8, b * 8 + 8))
        tids = [proto.new_task(digest_value("input", x)) for x in xs]
        jids = proto.first_jobs(tids, a.public)
        res = a.run_batch([Job(j, x) for j, x in zip(jids, xs, strict=True)])
        proto.on_batch(a.public, res.batch, res.receipts, res.outputs)
        proto.flush()
        sent.extend(zip(jids, xs, strict=True))
    # the window is bounded, and so are the batches it points into
    assert len(proto._seen) <= 40 + 40 // 8 + 8
    assert len(proto._seen_batches) <= 8
    # an old job id has left the window: a conflicting receipt for it is just unmatched
    beh.flip = True
    old_j, old_x = sent[0]
    res = a.run_batch([Job(old_j, old_x)])
    proto.on_batch(a.public, res.batch, res.receipts, res.outputs)
    assert proto.stats["equivocations"] == 0
    # a recent one is still remembered: signing a second, different output for it is
    # equivocation, slashed without re-execution
    new_j, new_x = sent[-1]
    res = a.run_batch([Job(new_j, new_x)])
    proto.on_batch(a.public, res.batch, res.receipts, res.outputs)
    assert proto.stats["equivocations"] == 1 and proto.stats["slashes"] == 1



def test_evidence_digest_is_digest_value() -> None:
    from posp.protocol import _evidence_digest, _finite

    rs = _receipts(3, 0)
    block = ReceiptBlock.of(rs)
    assert block is not None
    rb = verify_block(commit_block(KEY, block, batch_seq=0), block)
    evidence = ["dispute-evidence", 1, b"i" * 32, b"o" * 32,
                [["asserter", NODE, rb.signed(i).to_wire(), "mismatch", "rel_l2",
                  _finite(float("inf")), _finite(0.25)] for i in range(3)]]
    assert _evidence_digest(evidence) == digest_value("evidence", evidence)


def test_digest_many_of_0d_and_empty_arrays_is_digest_value() -> None:
    for values in ([np.array(float(i), np.float32) for i in range(5)],
                   [np.zeros((0, 3), np.float32) for _ in range(3)]):
        assert digest_many("output", values) == [digest_value("output", v) for v in values]
