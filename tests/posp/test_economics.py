"""Tests for posp.economics against hand-computed values, plus properties."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from posp.economics import (
    EconomicsReport,
    detection_per_task,
    detection_within,
    effective_slash,
    expected_profit_per_task,
    honest_majority,
    mean_tasks_to_detection,
    median_tasks_to_detection,
    nash_threshold,
    report,
    tasks_for_confidence,
    undetected_before_catch,
)
from posp.errors import ConfigError

# ------------------------------------------------------------------ hand-computed values


def test_nash_threshold_no_collusion():
    # C=1, R=1, S=100, r=0, n=1: p* = 1 / 101
    p = nash_threshold(1, 1, 100, 0.0, 1)
    assert p == pytest.approx(1 / 101)
    assert round(p, 4) == 0.0099


def test_nash_threshold_with_collusion():
    # r=0.5, S=250, n=1: p* = 1 / (0.5 * 251)
    p = nash_threshold(1, 1, 250, 0.5, 1)
    assert p == pytest.approx(1 / (0.5 * 251))
    assert round(p, 5) == 0.00797


def test_nash_threshold_more_validators_lower_it():
    # n=2, r=0.5: 1 - r^n = 0.75
    assert nash_threshold(1, 1, 250, 0.5, 2) == pytest.approx(1 / (0.75 * 251))


def test_nash_threshold_min_bond_caps_the_slash():
    assert effective_slash(100) == 100
    assert effective_slash(100, min_bond=50) == 50
    assert effective_slash(100, min_bond=500) == 100
    assert nash_threshold(1, 1, 100, min_bond=9) == pytest.approx(0.1)


def test_nash_threshold_with_arbiters():
    # H(3, 0.2) = 0.896
    p = nash_threshold(1, 1, 100, 0.2, 1, arbiters=3)
    assert p == pytest.approx(1 / (0.8 * 0.896 * 101))


def test_nash_threshold_edges():
    assert nash_threshold(1, 1, 100, 1.0, 3) == math.inf  # everyone colludes
    assert nash_threshold(1, 0, 0) == math.inf
    assert nash_threshold(0, 1, 100) == 0.0
    assert nash_threshold(0, 0, 0, 1.0) == 0.0
    assert nash_threshold(10, 1, 1) == pytest.approx(5.0)  # > 1: nothing deters


@pytest.mark.parametrize(
    ("args", "kwargs", "key"),
    [
        ((-1, 1, 100), {}, "cost"),
        ((1, -1, 100), {}, "reward"),
        ((1, 1, -100), {}, "slash"),
        ((1, 1, 100, -0.1), {}, "collusion"),
        ((1, 1, 100, 1.1), {}, "collusion"),
        ((1, 1, 100, 0.0, 0), {}, "validators"),
        ((1, 1, 100, 0.0, 1.5), {}, "validators"),
        ((float("nan"), 1, 100), {}, "cost"),
        ((float("inf"), 1, 100), {}, "cost"),
        ((1, 1, 100), {"min_bond": -1}, "min_bond"),
        ((1, 1, 100), {"arbiters": 2}, "arbiters"),
        (("x", 1, 100), {}, "cost"),
    ],
)
def test_nash_threshold_validation(args, kwargs, key):
    with pytest.raises(ConfigError) as info:
        nash_threshold(*args, **kwargs)
    assert info.value.key == key


def test_honest_majority():
    assert honest_majority(3, 0.2) == pytest.approx(0.896)
    assert honest_majority(1, 0.2) == pytest.approx(0.8)
    assert honest_majority(0, 0.7) == 1.0
    assert honest_majority(5, 0.0) == 1.0
    assert honest_majority(5, 1.0) == 0.0
    assert honest_majority(3, 0.5) == pytest.approx(0.5)
    with pytest.raises(ConfigError, match="arbiters"):
        honest_majority(4, 0.2)
    with pytest.raises(ConfigError, match="collusion"):
        honest_majority(3, 1.2)


def test_detection_per_task():
    assert detection_per_task(0.05, 1.0) == 0.05
    assert detection_per_task(0.1, 0.5, 0.5, 2) == pytest.approx(0.1 * 0.5 * 0.75)
    assert detection_per_task(0.1, 1.0, 0.2, 1, arbiters=3) == pytest.approx(0.1 * 0.8 * 0.896)
    assert detection_per_task(0.1, 1.0, 0.2, 1, arbiters=0) == pytest.approx(0.08)


def test_tasks_for_95_percent_at_p_005():
    # ln(0.05) / ln(0.95) = 58.4 -> 59
    assert tasks_for_confidence(0.95, 0.05, 1.0) == 59
    assert detection_within(59, 0.05, 1.0) >= 0.95
    assert detection_within(58, 0.05, 1.0) < 0.95


def test_median_and_mean_tasks():
    # ln 0.5 / ln 0.95 = 13.5 -> 14; mean 1 / 0.05 = 20
    assert median_tasks_to_detection(0.05, 1.0) == 14
    assert mean_tasks_to_detection(0.05, 1.0) == pytest.approx(20.0)
    # d = 0.5: one task is already even odds (no off-by-one from rounding)
    assert median_tasks_to_detection(0.5, 1.0) == 1
    assert tasks_for_confidence(0.75, 0.5, 1.0) == 2
    assert median_tasks_to_detection(1.0, 1.0) == 1
    assert median_tasks_to_detection(0.0, 1.0) == math.inf
    assert mean_tasks_to_detection(0.1, 0.0) == math.inf
    assert tasks_for_confidence(0.0, 0.1, 1.0) == 0
    assert tasks_for_confidence(1.0, 0.1, 1.0) == math.inf


def test_detection_within():
    assert detection_within(10, 0.1, 1.0) == pytest.approx(1 - 0.9**10)
    assert detection_within(0, 0.1, 1.0) == 0.0
    assert detection_within(5, 1.0, 1.0) == 1.0
    assert detection_within(1000, 0.0, 1.0) == 0.0
    with pytest.raises(ConfigError, match="n_tasks"):
        detection_within(-1, 0.1, 1.0)


def test_undetected_before_catch():
    assert undetected_before_catch(0.05) == pytest.approx(19.0)
    assert undetected_before_catch(1.0) == 0.0
    assert undetected_before_catch(0.0) == math.inf
    assert undetected_before_catch(0.1, 0.5, 1) == pytest.approx(0.95 / 0.05)


def test_expected_profit_model():
    # honest: R - C
    assert expected_profit_per_task(0.01, 0.0, 1, 2, 100) == pytest.approx(1.0)
    # always cheat at p = 0.05: R - 0.05 * 102 = 2 - 5.1
    assert expected_profit_per_task(0.05, 1.0, 1, 2, 100) == pytest.approx(2 - 5.1)
    # at p* every q earns the honest profit
    ps = nash_threshold(1, 2, 100, 0.3, 2)
    for q in (0.0, 0.3, 1.0):
        assert expected_profit_per_task(ps, q, 1, 2, 100, 0.3, 2) == pytest.approx(1.0)


def test_report_hand_values_and_json():
    rep = report(1, 1, 100, 0.0, 1)
    assert isinstance(rep, EconomicsReport)
    assert rep.p_star == pytest.approx(1 / 101)
    assert rep.warning is None
    ps = [row.p for row in rep.table]
    assert ps == sorted(ps)
    for want in (rep.p_star / 2, rep.p_star, 2 * rep.p_star, 0.01, 0.05, 0.1, 0.2):
        assert any(p == pytest.approx(want) for p in ps)
    row = next(r for r in rep.table if r.p == 0.05)
    assert row.median_tasks == 14 and row.mean_tasks == pytest.approx(20)
    assert row.within[100] == pytest.approx(1 - 0.95**100)
    data = json.loads(json.dumps(rep.to_dict(), allow_nan=False))
    assert data["p_star"] == rep.p_star
    assert data["params"]["slash"] == 100.0
    assert data["table"][0]["within"].keys() == {"10", "100", "1000"}


def test_report_warns_below_p_star():
    rep = report(1, 1, 100, 0.0, 1, p_min=0.005)
    assert rep.warning and "p_min" in rep.warning
    assert report(1, 1, 100, 0.0, 1, p_min=0.02).warning is None
    # the bond caps the slash: p* rises to 1/51 and 0.015 no longer suffices
    rep = report(1, 1, 100, 0.0, 1, p_min=0.015, min_bond=50)
    assert rep.p_star == pytest.approx(1 / 51) and rep.warning


def test_report_when_nothing_deters():
    rep = report(1, 1, 100, 1.0, 1)
    assert rep.p_star == math.inf and rep.warning
    data = json.loads(json.dumps(rep.to_dict(), allow_nan=False))
    assert data["p_star"] is None
    assert all(row["mean_tasks"] is None for row in data["table"])
    assert report(50, 1, 1).warning  # p* = 25


# -------------------------------------------------------------------------- properties

unit = st.floats(0.0, 1.0)
money = st.floats(0.0, 1e6)


@settings(max_examples=200, deadline=None)
@given(p1=unit, p2=unit, q=unit, r=unit, n=st.integers(1, 5), tasks=st.integers(0, 10_000))
def test_detection_monotone_in_p_and_bounded(p1, p2, q, r, n, tasks):
    lo, hi = sorted((p1, p2))
    d_lo, d_hi = detection_per_task(lo, q, r, n), detection_per_task(hi, q, r, n)
    assert 0.0 <= d_lo <= d_hi <= 1.0
    w_lo, w_hi = detection_within(tasks, lo, q, r, n), detection_within(tasks, hi, q, r, n)
    assert 0.0 <= w_lo <= w_hi + 1e-12 <= 1.0 + 1e-12
    assert mean_tasks_to_detection(hi, q, r, n) <= mean_tasks_to_detection(lo, q, r, n)
    assert median_tasks_to_detection(hi, q, r, n) <= median_tasks_to_detection(lo, q, r, n)


@settings(max_examples=200, deadline=None)
@given(p=unit, q=unit, tasks=st.integers(0, 500))
def test_detection_within_monotone_in_tasks(p, q, tasks):
    assert detection_within(tasks, p, q) <= detection_within(tasks + 1, p, q) + 1e-15


@settings(max_examples=200, deadline=None)
@given(p=st.floats(1e-4, 1.0), q=st.floats(1e-3, 1.0), conf=st.floats(0.01, 0.999))
def test_tasks_for_confidence_is_the_smallest_n(p, q, conf):
    n = tasks_for_confidence(conf, p, q)
    assert detection_within(n, p, q) >= conf - 1e-12
    if n > 1:
        assert detection_within(n - 1, p, q) < conf + 1e-12


@settings(max_examples=200, deadline=None)
@given(c=st.floats(1e-3, 1e3), rr=money, s=money, r=st.floats(0.0, 0.99), n=st.integers(1, 4))
def test_cheating_pays_exactly_below_p_star(c, rr, s, r, n):
    ps = nash_threshold(c, rr, s, r, n)
    assert ps > 0
    if ps < 1.0:
        honest = rr - c
        scale = max(1.0, abs(rr), c, s)
        above = min(1.0, ps * 1.01)
        below = ps * 0.99
        assert expected_profit_per_task(above, 1.0, c, rr, s, r, n) <= honest + 1e-9 * scale
        assert expected_profit_per_task(below, 1.0, c, rr, s, r, n) >= honest - 1e-9 * scale


@settings(max_examples=200, deadline=None)
@given(
    p=unit, q1=unit, q2=unit, q3=unit, c=money, rr=money, s=money, r=unit, n=st.integers(1, 4)
)
def test_profit_is_linear_in_q(p, q1, q2, q3, c, rr, s, r, n):
    # f(q) affine: collinear points; its extremes are at q = 0 or 1
    f = [expected_profit_per_task(p, q, c, rr, s, r, n) for q in (0.0, 1.0, q1)]
    assert f[2] == pytest.approx(f[0] + q1 * (f[1] - f[0]), rel=1e-9, abs=1e-6)
    assert min(f[0], f[1]) - 1e-6 <= f[2] <= max(f[0], f[1]) + 1e-6


@settings(max_examples=100, deadline=None)
@given(k=st.sampled_from([1, 3, 5, 7, 9]), r1=unit, r2=unit)
def test_honest_majority_bounded_and_decreasing_in_collusion(k, r1, r2):
    lo, hi = sorted((r1, r2))
    assert 0.0 <= honest_majority(k, hi) <= honest_majority(k, lo) + 1e-12 <= 1.0 + 1e-12
