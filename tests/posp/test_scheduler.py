"""Batch composition: the reserve of new tasks, how it is dipped into and released, and
decoys only where a batch would otherwise hold re-executions only."""

from __future__ import annotations

import math
import random

import numpy as np

from posp.compare import RelativeL2
from posp.identity import NodeKey
from posp.ledger import Ledger
from posp.node import Honest, NodeCore
from posp.protocol import Protocol, ProtocolParams, Role
from posp.receipts import capture_profile
from posp.sampling import EpochSeed, UniformPolicy
from posp.scheduler import Batch, LocalDriver, Scheduler

W = np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32)


def runner(xs):
    return [np.tanh(W @ x) for x in xs]


def inputs(n, seed=1):
    g = np.random.default_rng(seed)
    return [g.standard_normal(8).astype(np.float32) for _ in range(n)]


def make_nodes(n):
    return [NodeCore(NodeKey.from_seed(bytes([7, i]) + bytes(30)),
                     capture_profile(threads=1, batched=True), runner, Honest())
            for i in range(n)]


def make_protocol(tmp_path, nodes, p):
    rng = random.Random(1)
    proto = Protocol(ledger=Ledger(tmp_path / "l.db"), comparator=RelativeL2(1e-5),
                     policy=UniformPolicy(p), params=ProtocolParams(), rng=rng,
                     job_ids=lambda: rng.randbytes(16), epoch_seed=EpochSeed(bytes(32)))
    for n in nodes:
        proto.register(n.public, n.profile_digest)
    proto.open_epoch()
    return proto


def roles(proto: Protocol, batch: Batch) -> list[Role | None]:
    out = []
    for j in batch.jobs:
        job = proto.job(j.job_id)
        out.append(None if job is None else job[2])
    return out


def test_first_only_batches_leave_the_reserve_and_a_forced_release_shares_it(tmp_path):
    nodes = make_nodes(3)
    proto = make_protocol(tmp_path, nodes, p=1.0)
    sched = Scheduler(proto, batch_size=8, rng=random.Random(0))
    sched.add_tasks(inputs(12))
    first = sched.next_batch(nodes[0].public)
    assert first is not None and first.firsts == 8  # nothing open yet: no reserve
    assert sched.fresh_count() == sched.reserve == 4
    # tasks are open now: a batch of first executions only would take the reserve
    assert sched.next_batch(nodes[1].public) is None
    # released, each node takes its share, so that the nodes finish together
    share = math.ceil(sched.reserve / 3)
    b1 = sched.next_batch(nodes[1].public, force=True)
    b2 = sched.next_batch(nodes[2].public, force=True)
    assert b1 is not None and b2 is not None
    assert (b1.firsts, b2.firsts) == (share, 4 - share)
    assert sched.fresh_count() == 0


def test_reexecutions_dip_into_the_reserve_sparingly_and_travel_with_first_jobs(tmp_path):
    nodes = make_nodes(3)
    proto = make_protocol(tmp_path, nodes, p=0.25)
    sched = Scheduler(proto, batch_size=16, rng=random.Random(0))
    sched.add_tasks(inputs(24))
    b = sched.next_batch(nodes[0].public)
    assert b is not None and b.firsts == 16
    res = nodes[0].run_batch(b.jobs)
    follow = proto.on_batch(nodes[0].public, res.batch, res.receipts, res.outputs)
    assert follow and all(a.role is Role.VALIDATE for a in follow)
    sched.add_follow_ups(follow)
    target = follow[0].node
    k = sum(1 for a in follow if a.node == target)
    before = sched.fresh_count()
    assert before == sched.reserve == 8
    vb = sched.next_batch(target)
    assert vb is not None and not vb.decoys
    got = roles(proto, vb)
    assert got.count(Role.VALIDATE) == k
    # mixed with real first executions, but only as many as a decoy batch would pad
    # with: the rest of the reserve stays for the next rounds of re-executions
    assert 1 <= vb.firsts == got.count(Role.FIRST) <= max(k, 4 - k)
    assert sched.fresh_count() == before - vb.firsts > 0


def test_decoys_only_beside_reexecutions_and_every_task_settles(tmp_path):
    nodes = make_nodes(3)
    proto = make_protocol(tmp_path, nodes, p=0.3)
    drv = LocalDriver(nodes, proto, batch_size=8, rng=random.Random(2), register=False)
    proto.flush()
    xs = inputs(150, seed=3)
    outs = drv.run(xs)
    assert len(outs) == 150
    for o, x in zip(outs, xs, strict=True):
        np.testing.assert_allclose(o.output, np.tanh(W @ x), rtol=1e-6)
    log = list(drv.scheduler.log)
    # decoys pad only batches that would otherwise hold re-executions only
    assert all(not (decoys and firsts) for _follow, firsts, decoys in log)
    # and re-executions travel among first executions while there are new tasks
    assert any(follow and firsts for follow, firsts, _decoys in log)
    assert proto.pending_tasks == 0
