"""The event engine's own bookkeeping: array metrics against the per-job definition,
and one seed, one result on the paths that rejoin, crash and collude."""

from __future__ import annotations

import random

import numpy as np

from sim.event import _job_metrics, _profit
from sim.run import simulate
from sim.scenario import Scenario


def _reference(s, task, first, skip, batches, ident, ident_first, slashed):
    """The metrics job by job, as the definitions read (one dict entry per job)."""
    M = s.nodes
    pub_of = {i: p for p, i in ident.items()}
    first_catch, undetected = np.zeros(M, np.int64), np.zeros(M, np.int64)
    first_jobs, first_skipped = np.zeros(M, np.int64), np.zeros(M, np.int64)
    first_slashed = np.zeros(M, np.int64)
    per_slot: dict[int, list[tuple[int, bool, bool]]] = {}
    k = 0
    for slot, iid, start, n in batches:
        for pos in range(n):
            hit = (task[k], pub_of[iid]) in slashed
            if ident_first[iid]:
                per_slot.setdefault(slot, []).append((start + pos, skip[k], hit))
            if first[k]:
                first_jobs[slot] += 1
                first_skipped[slot] += skip[k]
                first_slashed[slot] += hit
            k += 1
    for i, evs in per_slot.items():
        hits = [idx for idx, _sk, hit in evs if hit]
        if hits:
            t = min(hits)
            first_catch[i] = t
            undetected[i] = sum(1 for idx, sk, hit in evs if idx < t and sk and not hit)
    return first_catch, undetected, first_jobs, first_skipped, first_slashed


def test_job_metrics_match_the_per_job_definition():
    rnd = random.Random(3)
    s = Scenario(engine="event", nodes=7, cheaters=3, batch_size=4)
    ident: dict[bytes, int] = {}
    ident_first: list[bool] = []
    idents_of: dict[int, list[int]] = {}
    for slot in range(s.nodes):
        for j in range(rnd.randint(1, 3)):  # rejoined slots hold several identities
            idents_of.setdefault(slot, []).append(len(ident_first))
            ident[bytes([slot, j])] = len(ident_first)
            ident_first.append(j == 0)
    task: list[int] = []
    first: list[bool] = []
    skip: list[bool] = []
    batches: list[tuple[int, int, int, int]] = []
    seen = dict.fromkeys(range(s.nodes), 0)
    next_task = 0
    pub_of = {i: p for p, i in ident.items()}
    slashed: set[tuple[int, bytes]] = set()
    for _ in range(60):
        slot = rnd.randrange(s.nodes)
        iid = rnd.choice(idents_of[slot])
        n = rnd.randint(1, 9)
        batches.append((slot, iid, seen[slot] + 1, n))
        seen[slot] += n
        for _ in range(n):
            task.append(next_task)
            first.append(rnd.random() < 0.7)
            skip.append(rnd.random() < 0.3)
            if rnd.random() < 0.15:
                slashed.add((next_task, pub_of[iid]))
            next_task += 1
    slashed.add((10**6, pub_of[0]))  # a slash on a job outside the measured rounds
    got = _job_metrics(s, task, first, skip, batches, ident, ident_first, slashed)
    want = _reference(s, task, first, skip, batches, ident, ident_first, slashed)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype
        assert np.array_equal(g, w)
    none = _job_metrics(s, [], [], [], [], ident, ident_first, set())
    assert all(a.shape == (s.nodes,) and not a.any() for a in none)


class _Batch:
    def __init__(self, commitment: bytes) -> None:
        self.commitment = commitment


def test_profit_is_what_the_ledger_settled_on_the_first_n_measured_jobs():
    """_profit adds, per measured job among its slot's first N: an unsampled first job's
    share of its batch's reward (ref: the batch commitment), a sampled task's job what that
    task's settlements paid or slashed the job's identity (ref: the task's first job);
    nothing else of the ledger counts. Jobs computed are counted over the same N."""
    a, b = b"A" * 32, b"B" * 32
    by_ident = {0: a, 1: b}
    # slot 0: jobs 1-3, then job 4 (beyond N = 3); slot 1: jobs 1-2
    batches = [(0, 0, 1, 3), (1, 1, 1, 2), (0, 0, 4, 1)]
    commits = [_Batch(b"\x01" * 32), _Batch(b"\x02" * 32), _Batch(b"\x03" * 32)]
    tasks = [10, 11, 12, 10, 13, 14]  # task 10: a's first job, b validated it
    first = [True, True, True, False, True, True]
    computed = [False, True, True, True, True, True]
    task_ref = {10: b"\x0a" * 16, 13: b"\x0d" * 16, 99: b"\x63" * 16}
    pay = {
        ((b"\x01" * 32).hex(), a): 20,  # a's two unsampled first jobs (11, 12): 10 each
        ((b"\x02" * 32).hex(), b): 10,  # b's batch has no unsampled first job: not counted
        ((b"\x0a" * 16).hex(), a): -1000,  # a slashed on task 10
        ((b"\x0a" * 16).hex(), b): 10 + 250,  # b paid and a challenger's share
        ((b"\x0d" * 16).hex(), b): 0,  # task 13: unresolved, b paid nothing
        ((b"\x63" * 16).hex(), a): 10,  # task 99: a job outside the measured rounds
        ((b"\x03" * 32).hex(), a): 10,  # slot 0's fourth job: beyond N
    }
    income, done = _profit(3, 3, tasks, first, computed, batches, commits, by_ident,
                           task_ref, pay)
    assert income.tolist() == [-1000 + 20, 260 + 0, 0.0]
    assert done.tolist() == [2, 2, 0]  # job 4 of slot 0 (task 14) is beyond N = 3


def test_event_engine_same_seed_same_observations():
    for s in (
        Scenario(engine="event", nodes=10, cheaters=2, strategy="sybil", cheat_rate=1.0,
                 slash=1000, bond=1000, min_bond=1000, honest_strategy="crash_prone",
                 crash_rate=0.01, tasks_per_node=40, runs=2, batch_size=8, seed=4),
        Scenario(engine="event", nodes=12, cheaters=2, cheat_rate=1.0, collusion=0.25,
                 sample_rate=0.2, tasks_per_node=40, runs=2, batch_size=8, seed=2),
    ):
        a, b = simulate(s).observations, simulate(s).observations
        for f in ("first_catch", "undetected", "jobs", "profit", "first_jobs",
                  "first_skipped", "first_slashed"):
            assert np.array_equal(getattr(a, f), getattr(b, f)), f
        assert (a.disputes, a.reentries, a.extra) == (b.disputes, b.reentries, b.extra)
        assert a.series == b.series
