"""Batch errors and timeouts on the shared Ray instance: never a slash, never a lost task."""

from __future__ import annotations

import numpy as np
import pytest

from posp.compare import RelativeL2
from posp.errors import ClusterError
from posp.runtime import Cluster, NodeSpec

pytestmark = [pytest.mark.ray, pytest.mark.filterwarnings("ignore::RuntimeWarning")]


class Affine:
    def __call__(self):
        return lambda xs: [np.asarray(x, np.float32) * 2 for x in xs]


class RaisesOn:
    """A workload that raises on inputs whose first element is ``bad``."""

    def __init__(self, bad: float) -> None:
        self.bad = bad

    def __call__(self):
        bad = self.bad

        def run(xs):
            if any(float(x[0]) == bad for x in xs):
                raise ValueError("cannot handle this input")
            return [np.asarray(x, np.float32) * 2 for x in xs]

        return run


class Flaky:
    """A behaviour whose batches always raise (a node that never answers properly)."""

    def outputs(self, jobs, compute):
        raise RuntimeError("this node is broken")


def test_a_raising_node_is_dropped_and_never_slashed(ray_session, tmp_path):
    specs = [NodeSpec(Affine()) for _ in range(4)]
    specs[0] = NodeSpec(Affine(), behaviour=Flaky())
    xs = [np.full(3, i, np.float32) for i in range(120)]
    with Cluster(nodes=specs, sample_rate=0.3, ledger=tmp_path / "l.db", batch_size=8,
                 comparator=RelativeL2(1e-6), seed=2) as c:
        res = c.map(xs)
        assert [float(r.output[0]) for r in res] == [2.0 * i for i in range(120)]
        assert c.protocol.stats["slashes"] == 0
        broken = list(c.nodes)[0]
        assert not c.nodes[broken].alive
        kinds = c.ledger.event_counts()
        assert kinds.get("liveness", 0) >= 3 and "slash" not in kinds


def test_an_input_the_workload_cannot_run_is_reported_not_blamed_on_nodes(ray_session,
                                                                           tmp_path):
    xs = [np.full(3, i, np.float32) for i in range(20)]
    with Cluster(RaisesOn(7.0), nodes=3, ledger=tmp_path / "l.db", batch_size=1,
                 comparator=RelativeL2(1e-6), seed=3) as c:
        with pytest.raises(ClusterError, match="cannot handle this input"):
            c.map(xs)
        assert c.protocol.stats["slashes"] == 0
