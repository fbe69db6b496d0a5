"""The Monte-Carlo engine: every run and every node at once, one numpy step per round.

Each round, every active node asserts one task; sampled tasks get ``n`` validators drawn
uniformly from the other active nodes of the same run; disputes get ``k`` arbiters drawn
from the rest. Outputs are integer labels (0 correct, 1 the ring's output, >= 2 a
distinct wrong output). Sampling, dispute, majority, payment, slash and eject decisions
are the core's vectorised rules (:mod:`posp.vectorised`); strategies are the same classes the
other engines use. Load is equal in expectation (validators and arbiters are uniform),
and a node's jobs within a round are taken in random order, as a batch is shuffled.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from posp.errors import ConfigError
from posp.vectorised import (
    NO_MAJORITY,
    disputes,
    ejected,
    losers,
    majority,
    sample_mask,
    slash_amounts,
)
from posp.vectorised import paid as paid_in_dispute

from .env import Environment
from .metrics import Observations
from .scenario import Scenario
from .strategies import NodeView, scenario_strategies

__all__ = ["run_montecarlo"]

_GARBAGE = 2  # first label of a wrong output that agrees with nobody
_MAX_TRIES = 200


def run_montecarlo(s: Scenario, env: Environment,
                   progress: Callable[[int, int], None] | None = None) -> Observations:
    if s.challenger_share:
        raise ConfigError("the Monte-Carlo engine burns every slash; use 0 (or the event "
                          "engine)", key="challenger_share")
    rng = env.stream("montecarlo")
    cheat_st, honest_st = scenario_strategies(s)
    M, R, N = s.nodes, s.runs, s.tasks_per_node
    NN = M * R
    local = np.tile(np.arange(M), R)
    run_base = np.repeat(np.arange(R) * M, M)
    is_cheater = local < s.cheaters
    ring = local < s.ring_size
    honest_mask = ~is_cheater & ~ring
    crash_rate = np.where(is_cheater, cheat_st.crash_rate, honest_st.crash_rate)
    acc = np.where(is_cheater, cheat_st.guess_accuracy, honest_st.guess_accuracy)
    rejoins = np.where(is_cheater, cheat_st.rejoins, honest_st.rejoins)

    active = np.ones(NN, bool)
    stake = np.full(NN, float(s.bond))
    jobs = np.zeros(NN, np.int64)
    first_catch = np.zeros(NN, np.int64)
    undetected = np.zeros(NN, np.int64)
    passed = np.zeros(NN, np.int64)
    profit = np.zeros(NN)
    slashes = np.zeros(NN, np.int64)
    unsampled_run = np.zeros(NN, np.int64)
    first_jobs = np.zeros(NN, np.int64)
    first_skipped = np.zeros(NN, np.int64)
    first_slashed = np.zeros(NN, np.int64)
    skip_p = np.zeros(NN)
    n_disputes = 0
    n_honest_slashed = 0
    reentries = 0
    series_c: list[float] = []
    series_h: list[float] = []
    n, k, p = s.validators, s.arbiters, s.sample_rate
    total_jobs = 0

    any_crash, any_acc = bool(crash_rate.any()), bool(acc.any())

    def draw(nodes: np.ndarray, idx: np.ndarray | slice | None = None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        size = nodes.size
        ix = nodes if idx is None else idx
        skip = rng.random(size, dtype=np.float32) < skip_p[ix]
        if any_crash:
            crash = rng.random(size, dtype=np.float32) < crash_rate[ix]
            skip &= ~crash
        else:
            crash = np.zeros(size, bool)
        wrong = skip & ~(rng.random(size, dtype=np.float32) < acc[ix]) if any_acc else skip
        return crash, skip, wrong

    # job records of the round, appended as arrays
    rec: dict[str, list[np.ndarray]] = {}

    def record(nodes: np.ndarray, skip: np.ndarray, slashed: np.ndarray, paid: np.ndarray,
               compute: np.ndarray) -> None:
        for name, arr in (("node", nodes), ("skip", skip), ("slashed", slashed),
                          ("paid", paid), ("compute", compute)):
            rec.setdefault(name, []).append(arr)

    def pick(base: np.ndarray, exclude: np.ndarray, count: int) -> np.ndarray:
        """``count`` distinct active nodes per row from the row's run, not in ``exclude``
        and not crashing (a crashed pick is a liveness event: recorded, re-drawn)."""
        T = base.size
        out = np.full((T, count), -1, np.int64)
        for col in range(count):
            todo = np.arange(T)
            for _ in range(_MAX_TRIES):
                if todo.size == 0:
                    break
                cand = base[todo] + rng.integers(0, M, size=todo.size)
                ok = active[cand]
                ok &= ~np.any(cand[:, None] == exclude[todo], axis=1)
                if col:
                    ok &= ~np.any(cand[:, None] == out[todo, :col], axis=1)
                crashed = ok & (rng.random(todo.size) < crash_rate[cand])
                if crashed.any():
                    c = cand[crashed]
                    z = np.zeros(c.size, bool)
                    record(c, z, z, z, z)
                ok &= ~crashed
                out[todo[ok], col] = cand[ok]
                todo = todo[~ok]
        return out

    def labels_for(nodes: np.ndarray, ring_lab: np.ndarray, garbage: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Outputs of re-executing nodes: ring members copy the ring's output for the task
        when one exists; everyone else computes as its strategy says."""
        _crash, skip, wrong = draw(nodes)  # crashes were handled by pick()
        rn = ring[nodes]
        copy = rn & (ring_lab >= 0)
        own = np.where(wrong, np.where(rn, 1, garbage), 0)
        lab = np.where(copy, ring_lab, own)
        ring_lab[rn & ~copy] = own[rn & ~copy]
        skip = skip & ~copy
        compute = ~skip & ~copy
        return lab, skip, compute

    rounds = 0
    while True:
        need = active & (jobs < N)
        if not need.any() or rounds > 20 * N:
            break
        rounds += 1
        A = np.flatnonzero(active)
        # the strategies' skip rates for this round
        # (everyone else computes every job: scenario_strategies checked that)
        nodes_g = A[is_cheater[A]]
        if nodes_g.size:
            skip_p[nodes_g] = cheat_st.skip_rate(NodeView(
                jobs=jobs[nodes_g], stake=stake[nodes_g],
                unsampled_run=unsampled_run[nodes_g], slashes=slashes[nodes_g]))
        rec.clear()

        # ---- first executions
        ia: np.ndarray | slice = slice(None) if A.size == NN else A
        crash, skip, wrong = draw(A, ia)
        a_lab_all = np.where(wrong, np.where(ring[ia], 1, _GARBAGE), 0)
        sampled = ~crash & sample_mask(rng, p, A.size)
        f_slashed = np.zeros(A.size, bool)
        f_paid = ~crash.copy()
        S_idx = np.flatnonzero(sampled)
        asserters = A[S_idx]
        a_lab = a_lab_all[S_idx]
        T = S_idx.size
        if T:
            base = run_base[asserters]
            V = pick(base, asserters[:, None], n)
            v_ok = np.all(V >= 0, axis=1)
            ring_lab = np.where(ring[asserters], a_lab, -1)
            VL = np.zeros((T, n), np.int64)
            v_skip = np.zeros((T, n), bool)
            v_comp = np.zeros((T, n), bool)
            for j in range(n):
                vj = np.where(V[:, j] >= 0, V[:, j], asserters)
                VL[:, j], v_skip[:, j], v_comp[:, j] = labels_for(vj, ring_lab, 3 + j)
            disp = disputes(a_lab, VL) & v_ok
            v_slashed = np.zeros((T, n), bool)
            v_paid = np.ones((T, n), bool)
            D_idx = np.flatnonzero(disp)
            if D_idx.size:
                parties = np.concatenate([asserters[D_idx, None], V[D_idx]], axis=1)
                Aq = pick(base[D_idx], parties, k)
                a_ok = np.all(Aq >= 0, axis=1)
                rl = ring_lab[D_idx]
                AL = np.zeros((D_idx.size, k), np.int64)
                ar_skip = np.zeros((D_idx.size, k), bool)
                ar_comp = np.zeros((D_idx.size, k), bool)
                for j in range(k):
                    aj = np.where(Aq[:, j] >= 0, Aq[:, j], asserters[D_idx])
                    AL[:, j], ar_skip[:, j], ar_comp[:, j] = labels_for(aj, rl, 3 + n + j)
                # a panel that could not be filled settles nothing, like no majority
                win = np.where(a_ok, majority(AL), NO_MAJORITY)
                lab_all = np.concatenate([a_lab[D_idx, None], VL[D_idx], AL], axis=1)
                lose = losers(lab_all, win)
                pay = paid_in_dispute(win, lose, 1 + n)
                who = np.concatenate([parties, Aq], axis=1)
                n_disputes += int(a_ok.sum())
                hon = honest_mask[np.where(who >= 0, who, 0)] & (who >= 0)
                n_honest_slashed += int(np.any(lose & hon, axis=1).sum())
                f_slashed[S_idx[D_idx]] = lose[:, 0]
                f_paid[S_idx[D_idx]] = pay[:, 0]
                v_slashed[D_idx] = lose[:, 1:1 + n]
                v_paid[D_idx] = pay[:, 1:1 + n]
                ar = Aq[a_ok].ravel()
                arl = lose[a_ok][:, 1 + n:].ravel()
                record(ar, ar_skip[a_ok].ravel(), arl, pay[a_ok][:, 1 + n:].ravel(),
                       ar_comp[a_ok].ravel())
            vm = v_ok[:, None] & (V >= 0)
            record(V[vm], v_skip[vm], v_slashed[vm], v_paid[vm], v_comp[vm])
        f_comp = ~crash & ~skip

        # ---- settle the round: first executions are aligned with A, the rest recorded
        if rec:
            nodes = np.concatenate(rec["node"])
            jskip = np.concatenate(rec["skip"])
            jsl = np.concatenate(rec["slashed"])
            jpaid = np.concatenate(rec["paid"])
            jcomp = np.concatenate(rec["compute"])
        else:
            nodes = np.zeros(0, np.int64)
            jskip = jsl = jpaid = jcomp = np.zeros(0, bool)
        total_jobs += nodes.size + A.size
        njobs = np.bincount(nodes, minlength=NN)
        njobs[ia] += 1
        paid = np.bincount(nodes, weights=jpaid, minlength=NN)
        paid[ia] += f_paid
        comp = np.bincount(nodes, weights=jcomp, minlength=NN)
        comp[ia] += f_comp
        nsl = np.bincount(nodes, weights=jsl, minlength=NN).astype(np.int64)
        nsl[ia] += f_slashed
        stake += s.reward * paid
        amount = slash_amounts(stake, s.slash, nsl)
        stake -= amount
        profit += s.reward * paid - s.cost * comp - amount
        # first catch: position of the earliest slashed job in the node's shuffled round
        newly = (nsl > 0) & (first_catch == 0)
        if newly.any():
            all_nodes = np.concatenate([A, nodes])
            sel = newly[all_nodes]
            nd = all_nodes[sel]
            sk = np.concatenate([skip, jskip])[sel]
            sl = np.concatenate([f_slashed, jsl])[sel]
            key = rng.random(nd.size)
            minkey = np.full(NN, np.inf)
            np.minimum.at(minkey, nd[sl], key[sl])
            before = key < minkey[nd]
            first_catch[newly] = (jobs + 1 + np.bincount(nd[before], minlength=NN))[newly]
            pb = np.bincount(nd[before & sk & ~sl], minlength=NN)
            undetected[newly] = (passed + pb)[newly]
        passed += np.bincount(nodes[jskip & ~jsl], minlength=NN)
        passed[ia] += skip & ~f_slashed
        jobs += njobs
        slashes += nsl
        ok_f = ~crash
        first_jobs[ia] += ok_f
        first_skipped[ia] += skip
        first_slashed[ia] += f_slashed
        unsampled_run[ia] = np.where(sampled, 0, unsampled_run[ia] + ok_f)
        out = active & ejected(stake, s.min_bond)
        if out.any():
            back = out & rejoins
            reentries += int(back.sum())
            stake[back] = s.bond
            unsampled_run[back] = 0
            active[out & ~back] = False
        grid = stake.reshape(R, M)
        series_c.append(float(grid[:, :s.cheaters].mean()) if s.cheaters else float("nan"))
        series_h.append(float(grid[:, s.cheaters:].mean()) if s.cheaters < M else float("nan"))
        if progress is not None:
            progress(int(np.minimum(jobs, N).sum()), NN * N)
    return Observations(
        cheater=is_cheater, honest=honest_mask, first_catch=first_catch,
        undetected=undetected, jobs=jobs, profit=profit, first_jobs=first_jobs,
        first_skipped=first_skipped, first_slashed=first_slashed, disputes=n_disputes,
        disputes_honest_slashed=n_honest_slashed, reentries=reentries,
        series={"cheater_stake": series_c, "honest_stake": series_h},
        extra={"job_events": total_jobs, "rounds": rounds},
    )
