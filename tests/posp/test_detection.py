"""Jobs to detection of a 10% cheater follow the geometric law of the protocol as built.

On its own asserted jobs, a cheater that cheats on each job with probability q and is
sampled with probability p (no collusion, honest arbiters) is caught per job with
d = p q. Across many seeded runs, the index of the own job that first gets it slashed is
geometric: mean 1/d, standard deviation sqrt(1 - d)/d. The slash is kept small against
the bond so that other channels (validation jobs it cheats on) do not eject it first.
"""

from __future__ import annotations

import math
import random

import numpy as np

from posp.compare import RelativeL2
from posp.identity import NodeKey
from posp.node import CheatRate, Honest, NodeCore
from posp.protocol import Protocol, ProtocolParams
from posp.receipts import capture_profile
from posp.sampling import EpochSeed, UniformPolicy
from posp.scheduler import LocalDriver

W = np.random.default_rng(0).standard_normal((4, 4)).astype(np.float32)
P, Q = 0.2, 0.1


def honest(xs):
    return [W @ x for x in xs]


def garbage(xs):
    return [np.full(4, 9.0, np.float32) for _ in xs]


def one_run(seed: int, tasks: int = 2400) -> int | None:
    rng = random.Random(seed)
    nodes = []
    for i in range(6):
        key = NodeKey.from_seed(rng.randbytes(32))
        beh = CheatRate(Q, garbage, seed=seed * 7 + 1) if i == 0 else Honest()
        nodes.append(NodeCore(key, capture_profile(threads=1, batched=True), honest, beh))
    cheater = nodes[0].public
    proto = Protocol(
        ledger=None, comparator=RelativeL2(1e-5), policy=UniformPolicy(P),
        params=ProtocolParams(slash=1, bond=10**9), rng=random.Random(seed),
        job_ids=lambda: rng.randbytes(16), epoch_seed=EpochSeed(rng.randbytes(32)),
    )
    ordinal: dict[bytes, int] = {}
    first_jobs = proto.first_jobs

    def counting_first_jobs(tasks, node):
        ids = first_jobs(tasks, node)
        if node == cheater:
            for jid in ids:
                ordinal[jid] = len(ordinal) + 1
        return ids

    proto.first_jobs = counting_first_jobs  # type: ignore[method-assign]
    drv = LocalDriver(nodes, proto, batch_size=64, rng=random.Random(seed + 1))
    g = np.random.default_rng(seed)
    outs = drv.run([g.standard_normal(4).astype(np.float32) for _ in range(tasks)])
    caught = [ordinal[o.result.job_id] for o in outs
              if o.result.asserter == cheater and cheater in o.result.slashed]
    return min(caught) if caught else None


def test_jobs_to_detection_is_geometric():
    d = P * Q
    ks = [one_run(s) for s in range(50)]
    assert all(k is not None for k in ks), "a run ended before the cheater was caught"
    ks_arr = np.array(ks, dtype=float)
    mean, n = ks_arr.mean(), len(ks_arr)
    stderr = math.sqrt(1 - d) / d / math.sqrt(n)
    assert abs(mean - 1 / d) <= 3 * stderr, (mean, 1 / d, stderr)
    # the shape too: the share caught within the median of the law
    median = math.ceil(math.log(0.5) / math.log(1 - d))
    share = float((ks_arr <= median).mean())
    law = 1 - (1 - d) ** median
    assert abs(share - law) <= 3 * math.sqrt(law * (1 - law) / n), (share, law)
    # a wrong law (p doubled) is rejected by the same check
    assert abs(mean - 1 / (2 * d)) > 3 * stderr
