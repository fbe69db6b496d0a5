"""The closed-form theory: special cases, the core's formulas, and a wrong theory caught."""

from __future__ import annotations

import math

import pytest

from posp.economics import detection_per_task, honest_majority, nash_threshold
from sim.metrics import Metric, compute_metrics, lattice_median
from sim.run import simulate
from sim.scenario import Scenario
from sim.theory import theory, truncated_geometric


def test_asserted_channel_is_the_issue_formula():
    s = Scenario(nodes=10_000, cheaters=1, cheat_rate=0.3, collusion=0.2, validators=2)
    t = theory(s, 0.3)
    r, n = 0.2, 2
    H = honest_majority(3, r)
    assert t.cheater.d_first == pytest.approx(0.05 * 0.3 * (1 - r**n) * H)
    assert t.cheater.d_first == pytest.approx(detection_per_task(0.05, 0.3, r, n, 3))
    assert t.false_slash_rate == pytest.approx(1 - H)
    assert t.p_star == pytest.approx(nash_threshold(5, 10, 1000, r, n, min_bond=50_000,
                                                    arbiters=3))


def test_no_ring_no_false_slash_and_blind_channels_add_up():
    s = Scenario(nodes=100_000, cheaters=1, cheat_rate=1.0, sample_rate=0.1)
    t = theory(s, 1.0)
    assert t.false_slash_rate == 0.0 and t.honest.d == 0.0
    # a lone always-cheater: per job, caught on own jobs (p) and validation jobs (1)
    pi_f, pi_v, _ = t.mix
    assert t.cheater.d == pytest.approx(pi_f * 0.1 + pi_v * 1.0, rel=1e-3)
    assert t.p_star_blind < t.p_star


def test_truncated_geometric_and_lattice_median():
    tg = truncated_geometric(0.1, 10_000)
    assert tg["within"] == pytest.approx(1.0)
    assert tg["mean"] == pytest.approx(10.0)
    assert lattice_median(tg["cdf"]) == pytest.approx(math.log(0.5) / math.log(0.9) + 0.5,
                                                     abs=0.6)


def test_wrong_theory_is_reported_as_disagreeing():
    s = Scenario(nodes=500, cheaters=50, runs=20, tasks_per_node=200, seed=3)
    rep = simulate(s)
    assert all(m.compared and m.agrees for m in rep.metrics.values())
    wrong = theory(s, s.cheat_rate, sample_rate=2 * s.sample_rate)
    bad = compute_metrics(rep.observations, s, wrong)
    for name in ("mean_tasks_to_detection", "median_tasks_to_detection",
                 "undetected_before_catch", "cheater_profit_per_job"):
        assert not bad[name].agrees, name


def test_agrees_needs_a_comparison_where_there_is_a_theory():
    """No theory: nothing disagrees. A theory but no measurement (or one draw, no spread):
    nothing confirms it, so it does not agree, and the table shows '-' (compared False)."""
    assert Metric(1.0, None, 0.1).agrees and not Metric(1.0, None, 0.1).compared
    for m in (Metric(None, 5.0, 1.0), Metric(math.nan, 5.0, math.inf), Metric(5.0, 5.0, math.inf)):
        assert not m.compared and not m.agrees, m
    assert Metric(5.2, 5.0, 0.1).compared and Metric(5.2, 5.0, 0.1).agrees
    assert not Metric(5.4, 5.0, 0.1).agrees


def test_profit_theory_is_null_where_it_has_no_closed_form():
    """A challenger share pays honest nodes and cheaters (on jobs they computed) shares of
    others' slashes; a cheater whose first slash ejects it pays less than S for later
    slashes of its round. Neither has a closed form: no theory rather than a wrong one."""
    base = Scenario(engine="event", nodes=12, cheaters=4, cheat_rate=0.5, runs=1,
                    tasks_per_node=40, seed=2)
    shared = simulate(base.replace(challenger_share=0.5)).metrics
    assert shared["cheater_profit_per_job"].theory is None
    assert shared["honest_profit_per_job"].theory is None
    capped = simulate(base.replace(engine="montecarlo", slash=1000, bond=1500,
                                   min_bond=1000, runs=4)).metrics
    assert capped["cheater_profit_per_job"].theory is None
    assert capped["honest_profit_per_job"].theory is not None
    plain = simulate(base.replace(engine="montecarlo", runs=4)).metrics
    assert plain["cheater_profit_per_job"].theory is not None
