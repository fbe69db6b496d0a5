"""The coordinator's Ray-free rules, driven through LocalDriver with numpy nodes."""

from __future__ import annotations

import random

import numpy as np
import pytest

from posp.compare import RelativeL2
from posp.errors import NotEnoughNodes
from posp.identity import NodeKey
from posp.ledger import Ledger
from posp.node import CheatRate, Honest, Job, NodeCore
from posp.protocol import Protocol, ProtocolParams, Role, State
from posp.receipts import capture_profile
from posp.sampling import EpochSeed, UniformPolicy
from posp.scheduler import LocalDriver, Scheduler

W = np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32)


def honest_runner(xs):
    return [np.tanh(W @ x) for x in xs]


def drifting_runner(xs):
    # same function, different float path: sum order changes the last bits
    return [np.tanh((W.astype(np.float64) @ x.astype(np.float64)).astype(np.float32))
            for x in xs]


def zeros(xs):
    return [np.zeros(16, np.float32) for _ in xs]


def make_nodes(n, *, cheaters=(), rate=1.0, runners=None, seed=0):
    out = []
    for i in range(n):
        key = NodeKey.from_seed(bytes([seed, i]) + bytes(30))
        prof = capture_profile(threads=1 + (i % 2), batched=bool(i % 3))
        beh = CheatRate(rate, zeros, seed=i) if i in cheaters else Honest()
        runner = runners[i] if runners else honest_runner
        out.append(NodeCore(key, prof, runner, beh))
    return out


def make_protocol(tmp_path, *, p=0.3, seed=1, params=None, ledger=True):
    led = Ledger(tmp_path / "l.db") if ledger else None
    rng = random.Random(seed)
    return Protocol(
        ledger=led,
        comparator=RelativeL2(1e-5),
        policy=UniformPolicy(p),
        params=params or ProtocolParams(),
        rng=rng,
        job_ids=lambda: rng.randbytes(16),
        epoch_seed=EpochSeed(bytes([seed]) * 32),
    )


def inputs(n, seed=5):
    g = np.random.default_rng(seed)
    return [g.standard_normal(8).astype(np.float32) for _ in range(n)]


def test_honest_run_with_drift_never_slashes(tmp_path):
    runners = [honest_runner, drifting_runner, honest_runner, drifting_runner]
    nodes = make_nodes(4, runners=runners)
    proto = make_protocol(tmp_path, p=0.5)
    drv = LocalDriver(nodes, proto, batch_size=16, rng=random.Random(2))
    outs = drv.run(inputs(400))
    assert len(outs) == 400
    states = {o.state for o in outs}
    assert states <= {State.NOT_SAMPLED, State.AGREED}
    assert proto.stats["slashes"] == 0
    assert proto.stats["sampled"] > 100
    for o, x in zip(outs, inputs(400), strict=True):
        np.testing.assert_allclose(o.output, np.tanh(W @ x), rtol=1e-5, atol=1e-6)
    assert proto.ledger.verify().ok


def test_full_time_cheater_is_slashed_and_overturned(tmp_path):
    nodes = make_nodes(6, cheaters={0})
    proto = make_protocol(tmp_path, p=0.5, params=ProtocolParams(slash=6000, bond=10_000))
    drv = LocalDriver(nodes, proto, batch_size=8, rng=random.Random(3))
    outs = drv.run(inputs(200))
    cheater = nodes[0].public
    assert proto.nodes[cheater].ejected
    assert proto.stats["slashes"] >= 1
    # every slash hit the cheater only
    led = proto.ledger
    slashed = {ev["node"] for ev in led.events() if ev.kind == "slash"}
    assert slashed == {cheater}
    overturned = [o for o in outs if o.state is State.OVERTURNED]
    assert overturned, "a caught cheat's output must be replaced"
    for o in outs:
        if o.state is not State.NOT_SAMPLED or o.result.asserter != cheater:
            assert not np.all(o.output == 0)


def test_validation_jobs_look_like_first_jobs(tmp_path):
    nodes = make_nodes(3)
    proto = make_protocol(tmp_path, p=1.0)
    for n in nodes:
        proto.register(n.public, n.profile_digest)
    proto.open_epoch()
    sched = Scheduler(proto, batch_size=4, rng=random.Random(0))
    for x in inputs(8):
        sched.add_task(x)
    b = sched.next_batch(nodes[0].public)
    res = nodes[0].run_batch(b.jobs)
    follow = proto.on_batch(nodes[0].public, res.batch, res.receipts, res.outputs)
    assert follow and all(a.role is Role.VALIDATE for a in follow)
    sched.add_follow_ups(follow)
    target = follow[0].node
    vb = sched.next_batch(target)
    # the same message type and fields for every job; ids carry no role
    assert all(type(j) is Job and len(j.job_id) == 16 for j in vb.jobs)
    assert {type(j).__slots__ for j in vb.jobs} == {Job.__slots__}
    # mixed with first executions (tasks remain), not a batch of its own
    roles = {proto.job(j.job_id)[2] for j in vb.jobs}
    assert roles == {Role.FIRST, Role.VALIDATE}


def test_tail_batches_are_padded_with_decoys(tmp_path):
    nodes = make_nodes(3)
    proto = make_protocol(tmp_path, p=1.0)
    for n in nodes:
        proto.register(n.public, n.profile_digest)
    proto.open_epoch()
    sched = Scheduler(proto, batch_size=8, rng=random.Random(0))
    sched.add_task(inputs(1)[0])
    b = sched.next_batch(nodes[0].public)
    res = nodes[0].run_batch(b.jobs)
    follow = proto.on_batch(nodes[0].public, res.batch, res.receipts, res.outputs)
    sched.add_follow_ups(follow)
    vb = sched.next_batch(follow[0].node)
    assert len(vb.jobs) >= 4 and len(vb.decoys) == len(vb.jobs) - 1


def test_refuses_verification_with_one_node(tmp_path):
    nodes = make_nodes(1)
    proto = make_protocol(tmp_path)
    drv = LocalDriver(nodes, proto)
    with pytest.raises(NotEnoughNodes, match="refusing"):
        drv.run(inputs(3))


def test_crash_is_liveness_not_slash(tmp_path):
    nodes = make_nodes(4)
    proto = make_protocol(tmp_path, p=0.5)
    drv = LocalDriver(nodes, proto, batch_size=8, rng=random.Random(4))
    calls = {"n": 0}

    def crash(node, batch):
        calls["n"] += 1
        return node == nodes[1].public and calls["n"] == 6

    drv.crash = crash
    outs = drv.run(inputs(120))
    assert len(outs) == 120 and all(o.output is not None for o in outs)
    assert proto.stats["slashes"] == 0
    kinds = [ev.kind for ev in proto.ledger.events()]
    assert "liveness" in kinds and "slash" not in kinds
    assert proto.ledger.verify().ok


def test_unresolved_disputes_pay_the_cheater_nothing(tmp_path):
    # 4 nodes: a dispute's 2 parties leave only 2 of the 3 arbiters it needs
    nodes = make_nodes(4, cheaters={0})
    proto = make_protocol(tmp_path, p=1.0)
    drv = LocalDriver(nodes, proto, batch_size=8, rng=random.Random(1))
    outs = drv.run(inputs(64))
    assert proto.stats["unresolved"] > 0 and proto.stats["slashes"] == 0
    assert any(o.state is State.UNRESOLVED for o in outs)
    balances = {n.public: proto.ledger.balance(n.public) for n in nodes}
    cheater = nodes[0].public
    assert balances[cheater] == ProtocolParams().bond  # not a unit of reward
    assert all(balances[n.public] > balances[cheater] for n in nodes[1:])


def test_ejections_never_stall_the_driver(tmp_path):
    for seed in range(4):
        (tmp_path / str(seed)).mkdir()
        nodes = make_nodes(7, cheaters={0, 1}, seed=seed)
        proto = make_protocol(tmp_path / str(seed), p=0.5, seed=seed,
                              params=ProtocolParams(slash=10_000, bond=10_000))
        drv = LocalDriver(nodes, proto, batch_size=8, rng=random.Random(seed))
        outs = drv.run(inputs(150, seed=seed))
        assert len(outs) == 150 and all(o.output is not None for o in outs)
        assert proto.nodes[nodes[0].public].ejected


def test_zero_rewards_and_slashes_settle(tmp_path):
    nodes = make_nodes(6, cheaters={0})
    proto = make_protocol(tmp_path, p=1.0, params=ProtocolParams(reward=0, validator_reward=0,
                                                                 slash=0))
    outs = LocalDriver(nodes, proto, batch_size=8).run(inputs(40))
    assert len(outs) == 40 and proto.unflushed == 0
    assert proto.ledger.verify().ok


def test_an_output_other_than_the_signed_one_is_a_fault(tmp_path):
    nodes = make_nodes(3)
    proto = make_protocol(tmp_path, p=0.0)
    for n in nodes:
        proto.register(n.public, n.profile_digest)
    proto.open_epoch()
    sched = Scheduler(proto, batch_size=4, rng=random.Random(0))
    for x in inputs(4):
        sched.add_task(x)
    b = sched.next_batch(nodes[0].public)
    res = nodes[0].run_batch(b.jobs)
    swapped = [o + 1 for o in res.outputs]  # not what the receipts sign
    follow = proto.on_batch(nodes[0].public, res.batch, res.receipts, swapped)
    assert proto.stats["bad_receipts"] == 4 and len(follow) == 4
    assert all(a.role is Role.FIRST and a.node != nodes[0].public for a in follow)


def test_every_slash_rests_on_signed_evidence_in_the_ledger(tmp_path):
    from posp.digest import digest_value
    from posp.receipts import SignedReceipt, verify_receipt

    nodes = make_nodes(6, cheaters={0})
    proto = make_protocol(tmp_path, p=0.5, params=ProtocolParams(slash=2000, bond=10_000))
    LocalDriver(nodes, proto, batch_size=8, rng=random.Random(5)).run(inputs(80))
    events = list(proto.ledger.events())
    disputes = {ev["ref"]: ev["outcome"] for ev in events if ev.kind == "dispute"}
    slashes = [ev for ev in events if ev.kind == "slash"]
    assert slashes
    for ev in slashes:
        evidence = disputes[ev["ref"]]
        assert digest_value("evidence", evidence) == ev["evidence"]
        tag, _version, input_digest, winning_digest, entries = evidence
        assert tag == "dispute-evidence"
        slashed_entry = [e for e in entries if e[1] == ev["node"]]
        assert slashed_entry and slashed_entry[0][3] == "mismatch"
        for _role, node, wire, *_ in entries:
            signed = SignedReceipt.from_wire(wire)
            r = verify_receipt(signed)  # every receipt in the evidence verifies
            assert r.node == node and r.input_digest == input_digest
        agreeing = [e for e in entries if e[3] != "mismatch"]
        assert len(agreeing) >= 2 and winning_digest


def test_decisions_record_roles_and_the_audit_catches_an_exempted_first_job(tmp_path):
    from posp.audit import audit
    from posp.sampling import decide

    nodes = make_nodes(4)
    proto = make_protocol(tmp_path, p=0.5)
    LocalDriver(nodes, proto, batch_size=8, rng=random.Random(2)).run(inputs(60))
    proto.close_epoch()
    proto.flush()
    decisions = [ev for ev in proto.ledger.events() if ev.kind == "decision"]
    roles = b"".join(ev["roles"] for ev in decisions)
    assert roles.count(b"f") == 60 and roles.count(b"v") > 0
    assert audit(proto.ledger).ok

    # a coordinator that quietly exempts a node's first job from sampling is caught
    led = Ledger(tmp_path / "bad.db")
    seed = EpochSeed(b"\x05" * 32)
    node = nodes[0].public
    led.bond(node, 10_000, profile=nodes[0].profile_digest)
    led.epoch_open(1, seed.commitment)
    commitment = b"\x11" * 32
    ppb = [0, 500_000_000]
    flags = decide(seed, commitment, ppb=ppb)
    led.decision(1, node, commitment, count=2, rates_ppb=ppb,
                 sampled=[i for i, f in enumerate(flags) if f], roles=b"ff")
    led.epoch_reveal(1, bytes(seed))
    rep = audit(led)
    assert not rep.ok and "rate 0" in str(rep.to_dict())

    # p = 0 for a whole batch is a policy, not an exemption
    led2 = Ledger(tmp_path / "zero.db")
    led2.bond(node, 10_000, profile=nodes[0].profile_digest)
    led2.epoch_open(1, seed.commitment)
    led2.decision(1, node, commitment, count=2, rates_ppb=[0, 0], sampled=[], roles=b"ff")
    led2.epoch_reveal(1, bytes(seed))
    assert audit(led2).ok
