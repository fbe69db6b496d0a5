"""The Ray runtime on the shared Ray instance: honest runs, cheaters, faults, restart."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from posp.compare import RelativeL2
from posp.errors import ConfigError, NotEnoughNodes
from posp.ledger import Ledger
from posp.node import CheatRate
from posp.protocol import ProtocolParams, State
from posp.runtime import Cluster, NodeSpec, verified
from posp.sampling import ImportancePolicy

pytestmark = pytest.mark.ray

W = np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32)


class Linear:
    """A picklable numpy workload factory (no torch: fast actor start)."""

    def __init__(self, wide: bool = False) -> None:
        self.wide = wide

    def __call__(self):
        w = W.astype(np.float64) if self.wide else W

        def run(xs):
            return [np.tanh(w @ np.asarray(x, w.dtype)).astype(np.float32) for x in xs]

        return run


def zeros(xs):
    return [np.zeros(16, np.float32) for _ in xs]


def inputs(n, seed=1):
    g = np.random.default_rng(seed)
    return [g.standard_normal(8).astype(np.float32) for _ in range(n)]


def test_honest_run_with_drift_zero_slashes(ray_session, tmp_path):
    specs = [NodeSpec(Linear(wide=i % 2 == 1), threads=1, batched=i % 3 != 0) for i in range(4)]
    with Cluster(nodes=specs, sample_rate=0.3, ledger=tmp_path / "l.db", batch_size=32,
                 comparator=RelativeL2(1e-5), seed=3) as c:
        res = c.map(inputs(1000))
        assert len(res) == 1000
        assert c.protocol.stats["slashes"] == 0
        assert c.protocol.stats["sampled"] > 200
        assert {r.state for r in res} <= {State.AGREED, State.NOT_SAMPLED}
        for r, x in zip(res, inputs(1000), strict=True):
            np.testing.assert_allclose(r.output, np.tanh(W @ x), rtol=1e-5, atol=1e-6)
            assert r.receipt is not None
    led = Ledger(tmp_path / "l.db", create=False)
    assert led.verify().ok
    assert "slash" not in led.event_counts()
    led.close()


def test_cheater_caught_and_output_overturned(ray_session, tmp_path):
    # a dispute needs its 2 parties plus 3 arbiters: 5 nodes at least
    specs = [NodeSpec(Linear()) for _ in range(6)]
    specs[0] = NodeSpec(Linear(), behaviour=CheatRate(1.0, zeros, seed=1), role="cheater")
    params = ProtocolParams(slash=6000, bond=10_000)
    with Cluster(nodes=specs, sample_rate=0.5, params=params, ledger=tmp_path / "l.db",
                 batch_size=8, comparator=RelativeL2(1e-5), seed=5) as c:
        res = c.map(inputs(200))
        cheater = list(c.nodes)[0]
        assert c.nodes[cheater].slashed_after is not None
        over = [r for r in res if r.state is State.OVERTURNED]
        assert over and all(np.abs(r.output).sum() > 0 for r in over)
        slashed = {ev["node"] for ev in c.ledger.events() if ev.kind == "slash"}
        assert slashed == {cheater}


def test_killed_node_run_completes_without_slash(ray_session, tmp_path):
    specs = [NodeSpec(Linear()) for _ in range(4)]
    with Cluster(nodes=specs, sample_rate=0.3, ledger=tmp_path / "l.db", batch_size=16,
                 comparator=RelativeL2(1e-5), seed=9) as c:
        first = c.map(inputs(64))
        c.kill_node(1)
        res = c.map(inputs(300, seed=2))
        assert len(first) == 64 and len(res) == 300
        assert all(r.output is not None for r in res)
        assert c.protocol.stats["slashes"] == 0
        kinds = c.ledger.event_counts()
        assert kinds.get("liveness", 0) >= 1 and "slash" not in kinds
    led = Ledger(tmp_path / "l.db", create=False)
    assert led.verify().ok
    led.close()


def test_one_node_refuses_to_claim_verification(ray_session, tmp_path):
    with Cluster(Linear(), nodes=1, ledger=tmp_path / "l.db") as c:
        with pytest.raises(NotEnoughNodes, match="refusing"):
            c.map(inputs(3))


@pytest.mark.filterwarnings("ignore:.*disputes will stay unresolved")
def test_restart_reveals_the_open_epoch(ray_session, tmp_path):
    path = tmp_path / "l.db"
    c = Cluster(Linear(), nodes=2, ledger=path, sample_rate=0.5)
    c.map(inputs(10))
    seed_file = c.seed_path
    assert stat.S_IMODE(os.stat(seed_file).st_mode) == 0o600
    # simulate a coordinator that stopped without closing: drop it on the floor
    c._shutdown()
    c2 = Cluster(Linear(), nodes=2, ledger=path, sample_rate=0.5)
    try:
        kinds = [ev.kind for ev in c2.ledger.events()]
        assert kinds.count("epoch_reveal") == 1 and kinds.count("epoch_open") == 2
        c2.map(inputs(10))
    finally:
        c2.close()
    from posp.audit import audit

    rep = audit(path)
    assert rep.ok


def test_verified_wrapper_and_bad_options(ray_session, tmp_path):
    with verified(Linear(), nodes=2, sample_rate=1.0, ledger=tmp_path / "v.db") as f:
        with pytest.warns(RuntimeWarning, match="disputes will stay unresolved"):
            r = f(inputs(1)[0])
        assert r.state is State.AGREED and r.checked
    with pytest.raises(ConfigError):
        Cluster(Linear(), nodes=2, sample_rate=1.5)


@pytest.mark.filterwarnings("ignore:.*disputes will stay unresolved")
def test_map_registers_tasks_as_it_dispatches_and_reports_its_costs(ray_session, tmp_path):
    # important tasks always sampled, the others never: each importance must stay with
    # its own input while tasks are registered a few batches ahead of dispatch
    xs = inputs(500, seed=4)
    imp = [100.0 if i % 7 == 0 else 0.0 for i in range(len(xs))]
    with Cluster(Linear(), nodes=2, policy=ImportancePolicy(0.01, 0.0), params=ProtocolParams(),
                 ledger=tmp_path / "l.db", batch_size=16, in_flight=2,
                 comparator=RelativeL2(1e-5), seed=4) as c:
        before = dict(c.protocol.stats)
        res = c.map(xs, importance=imp)
        for i, (r, x) in enumerate(zip(res, xs, strict=True)):
            assert r.state is (State.AGREED if imp[i] else State.NOT_SAMPLED)
            np.testing.assert_allclose(r.output, np.tanh(W @ x), rtol=1e-5, atol=1e-6)
        m = c.last_map
        assert m is not None and m.tasks == 500
        assert 0.0 <= m.startup_s <= m.last_first_s <= m.wall_s
        assert m.tail_s == pytest.approx(m.wall_s - m.last_first_s)
        assert m.batches >= 500 // 16
        sent = {k: c.protocol.stats[k] - before.get(k, 0) for k in ("jobs_first", "jobs_validate")}
        assert sent["jobs_validate"] == sum(1 for v in imp if v)
        assert m.jobs == sent["jobs_first"] + sent["jobs_validate"] + m.decoys
