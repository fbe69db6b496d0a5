"""posp on a multi-node Ray cluster (ray.cluster_utils.Cluster), joined by address.

It runs in a subprocess: the test session already holds its own Ray instance, and one
process drives one Ray cluster at a time.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.ray

SCRIPT = textwrap.dedent("""
    import json, sys, tempfile
    from pathlib import Path
    import numpy as np
    import ray
    from ray.cluster_utils import Cluster as RayCluster
    from posp.compare import RelativeL2
    from posp.runtime import Cluster

    class Affine:
        def __call__(self):
            w = np.arange(12, dtype=np.float32).reshape(3, 4) / 10
            return lambda xs: [w @ x for x in xs]

    rc = RayCluster(initialize_head=True, head_node_args={"num_cpus": 1})
    for _ in range(2):
        rc.add_node(num_cpus=2)
    rc.wait_for_nodes()
    ray.init(address=rc.address, log_to_driver=False)
    d = Path(tempfile.mkdtemp())
    xs = [np.full(4, i, np.float32) for i in range(200)]
    with Cluster(Affine(), nodes=5, sample_rate=0.3, ledger=d / "l.db",
                 address=rc.address, comparator=RelativeL2(1e-6), batch_size=16) as c:
        res = c.map(xs)
        hosts = {ray.get(n.actor.where.remote()) for n in c.nodes.values()}
        stats = dict(c.protocol.stats)
    ray.shutdown()
    rc.shutdown()
    print(json.dumps({"n": len(res), "ray_nodes_used": len(hosts),
                      "slashes": stats.get("slashes", 0), "sampled": stats.get("sampled", 0),
                      "ok": all(np.allclose(r.output, np.arange(12, dtype=np.float32)
                                            .reshape(3, 4) / 10 @ x) for r, x in zip(res, xs))}))
""")


def test_runs_on_a_multi_node_ray_cluster(tmp_path):
    script = tmp_path / "multinode.py"
    script.write_text(SCRIPT)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["n"] == 200 and out["ok"]
    assert out["slashes"] == 0 and out["sampled"] > 20
    assert out["ray_nodes_used"] >= 2  # the node actors really spread over Ray nodes
