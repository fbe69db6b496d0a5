"""posp.vectorised matches the scalar rules it stands for."""

from __future__ import annotations

import random

import numpy as np
import pytest

from posp.compare import Exact
from posp.identity import NodeKey
from posp.node import NodeCore
from posp.protocol import Protocol, ProtocolParams
from posp.receipts import capture_profile
from posp.sampling import EpochSeed, UniformPolicy, decide
from posp.scheduler import LocalDriver
from posp.vectorised import (
    NO_MAJORITY,
    disputes,
    ejected,
    losers,
    majority,
    paid,
    sample_mask,
)


@pytest.mark.parametrize("rate", [0.01, 0.3, 0.9])
def test_sample_mask_matches_decide_in_distribution(rate):
    seed = EpochSeed(bytes(32))
    scalar = sum(sum(decide(seed, i.to_bytes(32, "big"), [rate] * 100)) for i in range(200))
    vec = int(sample_mask(np.random.default_rng(0), rate, 20_000).sum())
    se = np.sqrt(20_000 * rate * (1 - rate))
    assert abs(scalar - 20_000 * rate) < 4 * se
    assert abs(vec - scalar) < 5 * se


def test_majority_and_losers_small_cases():
    arbs = np.array([[0, 0, 5], [1, 2, 3], [4, 6, 6], [7, 7, 7]])
    assert majority(arbs).tolist() == [0, NO_MAJORITY, 6, 7]
    lab = np.array([[0, 9, 0, 0, 5], [1, 1, 1, 2, 3]])
    win = np.array([0, NO_MAJORITY])
    assert losers(lab, win).tolist() == [[False, True, False, False, True], [False] * 5]
    assert disputes(np.array([1, 1]), np.array([[1], [2]])).tolist() == [False, True]
    assert ejected(np.array([999, 1000]), 1000).tolist() == [True, False]
    # paid: a resolved dispute pays everyone not slashed; an unresolved one the arbiters
    # only (2 parties here: asserter and one validator)
    assert paid(win, losers(lab, win), 2).tolist() == [
        [True, False, True, True, False], [False, False, True, True, True]]


class _Scripted:
    """Returns this node's scripted label for every job; records the roles it served."""

    def __init__(self, table, i, seen):
        self.table, self.i, self.seen = table, i, seen
        self.proto = None

    def outputs(self, jobs, compute):
        for j in jobs:
            info = self.proto.job(j.job_id)
            if info is not None:
                self.seen.append((info[2].value, self.i))
        return [self.table[self.i] for _ in jobs]


def test_arbitration_rule_matches_protocol():
    """Random outputs on 7 nodes: the protocol's slashes and payments equal
    posp.vectorised's (disputes without a majority included)."""
    prof = capture_profile(threads=1, batched=False, libraries=("numpy",))
    g = np.random.default_rng(1)
    checked = unresolved = 0
    for trial in range(60):
        table = g.integers(0, 3, size=7).tolist()
        seen: list[tuple[str, int]] = []
        behs = [_Scripted(table, i, seen) for i in range(7)]
        nodes = [NodeCore(NodeKey.from_seed(bytes([trial, i]) + bytes(30)), prof,
                          lambda xs: list(xs), behs[i]) for i in range(7)]
        rng = random.Random(trial)
        proto = Protocol(ledger=None, comparator=Exact(), policy=UniformPolicy(1.0),
                         params=ProtocolParams(slash=1, bond=100), rng=rng,
                         job_ids=lambda r=rng: r.randbytes(16),
                         epoch_seed=EpochSeed(bytes([trial]) * 32))
        for b in behs:
            b.proto = proto
        idx = {n.public: i for i, n in enumerate(nodes)}
        (out,) = LocalDriver(nodes, proto, batch_size=1, rng=random.Random(trial)).run([7])
        roles = {role: [i for rl, i in seen if rl == role] for role in
                 ("first", "validate", "arbitrate")}
        a, vs, arbs = roles["first"][0], roles["validate"], roles["arbitrate"]
        dispute = bool(disputes(np.array([table[a]]), np.array([[table[v] for v in vs]]))[0])
        assert dispute == bool(arbs)
        if not arbs:
            assert not out.result.slashed
            continue
        win = majority(np.array([[table[x] for x in arbs]]))
        who = [a, *vs, *arbs]
        lose = losers(np.array([[table[x] for x in who]]), win)
        assert {who[j] for j in np.flatnonzero(lose[0])} == {idx[n] for n in out.result.slashed}
        # payments: each node's stake moved by what paid() and losers() say, no more
        pay = paid(win, lose, 1 + len(vs))[0]
        params = proto.params
        for j, x in enumerate(who):
            amount = params.reward if j == 0 else params.validator_reward
            want = params.bond + amount * int(pay[j]) - params.slash * int(lose[0, j])
            assert proto.nodes[nodes[x].public].stake == want, (trial, j, table)
        unresolved += int(win[0] == NO_MAJORITY)
        checked += 1
    assert checked > 10 and unresolved > 0
