"""Tests for posp.sampling: epoch seeds, commit-bound decisions, policies."""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import stat
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from posp.errors import BadSignature, ConfigError, KeyFileError
from posp.sampling import (
    OUTCOMES,
    AdaptivePolicy,
    EpochSeed,
    ImportancePolicy,
    SamplingPolicy,
    UniformPolicy,
    decide,
    decision_ints,
    decision_values,
    ppb_to_rates,
    rates_to_ppb,
)

SEED_A = bytes(range(32))
SEED_B = bytes(range(1, 33))
COMMIT = hashlib.sha256(b"batch-0").digest()

# chi-square critical values (upper 0.1 %) for the degrees of freedom used below
CHI2_999 = {99: 148.23, 9: 27.88}


def chi2(counts: np.ndarray) -> float:
    expected = counts.sum() / counts.size
    return float(((counts - expected) ** 2 / expected).sum())


# ---------------------------------------------------------------------------- epoch seed


def test_epoch_seed_generate_is_random_and_32_bytes():
    a, b = EpochSeed.generate(), EpochSeed.generate()
    assert len(bytes(a)) == 32
    assert a != b
    assert a.commitment != b.commitment


def test_epoch_seed_commitment_is_the_domain_digest():
    s = EpochSeed(SEED_A)
    expected = hashlib.sha256(b"posp/epoch-seed\x00" + SEED_A).digest()
    assert s.commitment == expected
    assert EpochSeed(SEED_A) == s
    assert hash(EpochSeed(SEED_A)) == hash(s)


def test_epoch_seed_repr_hides_the_secret():
    s = EpochSeed(SEED_A)
    r = repr(s) + str(s)
    assert SEED_A.hex() not in r
    assert SEED_A.hex()[:8] not in r


@pytest.mark.parametrize("bad", [b"", bytes(31), bytes(33)])
def test_epoch_seed_rejects_wrong_size(bad):
    with pytest.raises(ConfigError, match="seed"):
        EpochSeed(bad)


def test_epoch_seed_from_reveal():
    s = EpochSeed(SEED_A)
    assert EpochSeed.from_reveal(SEED_A, s.commitment) == s
    with pytest.raises(BadSignature):
        EpochSeed.from_reveal(SEED_B, s.commitment)


def test_epoch_seed_save_load_round_trip(tmp_path):
    path = tmp_path / "epoch.seed"
    s = EpochSeed.generate()
    s.save(path)
    if os.name == "posix":
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert EpochSeed.load(path) == s
    s2 = EpochSeed.generate()
    s2.save(path)  # replaces
    assert EpochSeed.load(path) == s2
    assert not (tmp_path / "epoch.seed.tmp").exists()


@pytest.mark.skipif(os.name != "posix", reason="file modes")
def test_epoch_seed_load_rejects_open_permissions(tmp_path):
    path = tmp_path / "epoch.seed"
    EpochSeed(SEED_A).save(path)
    path.chmod(0o644)
    with pytest.raises(KeyFileError, match="0644"):
        EpochSeed.load(path)


@pytest.mark.parametrize("content", ["00" * 31, "00" * 33, "zz" * 32, ""])
def test_epoch_seed_load_rejects_bad_content(tmp_path, content):
    path = tmp_path / "epoch.seed"
    path.write_text(content)
    path.chmod(0o600)
    with pytest.raises(KeyFileError):
        EpochSeed.load(path)


def test_epoch_seed_load_missing_file(tmp_path):
    with pytest.raises(KeyFileError):
        EpochSeed.load(tmp_path / "nope")


def test_epoch_seed_save_to_missing_directory(tmp_path):
    with pytest.raises(KeyFileError):
        EpochSeed(SEED_A).save(tmp_path / "no" / "such" / "dir")


# ------------------------------------------------------------------------ decision values


def test_decision_values_match_the_documented_construction():
    mac = hmac.new(SEED_A, b"posp/sample" + COMMIT, hashlib.sha256).digest()
    stream = hashlib.shake_256(mac).digest(8 * 5)
    expected = [
        (int.from_bytes(stream[8 * i : 8 * i + 8], "big") >> 11) / 2**53 for i in range(5)
    ]
    assert decision_values(SEED_A, COMMIT, 5).tolist() == expected
    assert decision_values(EpochSeed(SEED_A), COMMIT, 5).tolist() == expected


def test_decision_values_shape_dtype_range():
    v = decision_values(SEED_A, COMMIT, 10_000)
    assert v.dtype == np.float64 and v.shape == (10_000,)
    assert v.min() >= 0.0 and v.max() < 1.0
    assert decision_values(SEED_A, COMMIT, 0).shape == (0,)
    assert decision_ints(SEED_A, COMMIT, 100).max() < 2**53


def test_decision_values_are_a_prefix_stream():
    # the values of a job do not depend on how many jobs the batch has
    long = decision_values(SEED_A, COMMIT, 1000)
    assert np.array_equal(decision_values(SEED_A, COMMIT, 10), long[:10])


def test_decision_values_deterministic():
    assert np.array_equal(
        decision_values(SEED_A, COMMIT, 1000), decision_values(SEED_A, COMMIT, 1000)
    )


def test_decision_values_change_with_seed_and_commitment():
    base = decision_values(SEED_A, COMMIT, 1000)
    other_seed = decision_values(SEED_B, COMMIT, 1000)
    other_commit = decision_values(SEED_A, COMMIT[:-1] + bytes([COMMIT[-1] ^ 1]), 1000)
    assert not np.any(base == other_seed)
    assert not np.any(base == other_commit)


@pytest.mark.parametrize("bad", [-1, 1.5, "3", True])
def test_decision_values_rejects_bad_count(bad):
    with pytest.raises(ConfigError, match="count"):
        decision_values(SEED_A, COMMIT, bad)


def test_decision_values_rejects_short_seed():
    with pytest.raises(ConfigError, match="seed"):
        decision_values(b"short", COMMIT, 3)


def test_decision_values_uniform_chi_square_and_ks():
    n = 200_000
    v = decision_values(SEED_A, COMMIT, n)
    counts = np.bincount((v * 100).astype(int), minlength=100)
    assert chi2(counts) < CHI2_999[99]
    s = np.sort(v)
    i = np.arange(1, n + 1)
    d = max(np.max(i / n - s), np.max(s - (i - 1) / n))
    assert d < 1.95 / math.sqrt(n)  # KS at the 0.1 % level
    assert abs(v.mean() - 0.5) < 4 * math.sqrt(1 / 12 / n)


def test_decision_values_uniform_across_many_batches():
    # the first job of each of many batches: uniform too (the per-batch MAC varies)
    firsts = np.array(
        [decision_values(SEED_A, i.to_bytes(8, "big"), 1)[0] for i in range(20_000)]
    )
    counts = np.bincount((firsts * 10).astype(int), minlength=10)
    assert chi2(counts) < CHI2_999[9]


def test_decision_values_independent_across_jobs():
    n = 200_000
    v = decision_values(SEED_B, COMMIT, n)
    for lag in (1, 2, 7):
        r = np.corrcoef(v[:-lag], v[lag:])[0, 1]
        assert abs(r) < 4 / math.sqrt(n)
    # adjacent pairs are uniform on a 10 x 10 grid
    a, b = (v[0::2] * 10).astype(int), (v[1::2] * 10).astype(int)
    counts = np.bincount(a * 10 + b, minlength=100)
    assert chi2(counts) < CHI2_999[99]


def test_decisions_under_another_seed_are_unpredictable():
    # Before the reveal a node knows the commitment but not the seed. Knowing the
    # decisions under any other seed (e.g. a guess) tells it nothing: they agree only
    # by chance, and the values are uncorrelated.
    n = 100_000
    rates = [0.5] * n
    a = np.array(decide(SEED_A, COMMIT, rates))
    b = np.array(decide(SEED_B, COMMIT, rates))
    agree = float(np.mean(a == b))
    assert abs(agree - 0.5) < 4 * math.sqrt(0.25 / n)
    r = np.corrcoef(a.astype(float), b.astype(float))[0, 1]
    assert abs(r) < 4 / math.sqrt(n)
    # and across many batches, the first job's decision under a guessed seed is no better
    hits = sum(
        decide(SEED_A, i.to_bytes(4, "big"), [0.5])[0]
        == decide(SEED_B, i.to_bytes(4, "big"), [0.5])[0]
        for i in range(4000)
    )
    assert abs(hits / 4000 - 0.5) < 4 * math.sqrt(0.25 / 4000)


# ------------------------------------------------------------------------------ decide


def test_decide_sampled_fraction_matches_rate():
    n = 100_000
    for p in (0.01, 0.1, 0.5):
        frac = float(np.mean(decide(SEED_A, COMMIT, [p] * n)))
        assert abs(frac - p) < 5 * math.sqrt(p * (1 - p) / n)


def test_decide_extremes():
    assert decide(SEED_A, COMMIT, [0.0] * 1000) == [False] * 1000
    assert decide(SEED_A, COMMIT, [1.0] * 1000) == [True] * 1000
    assert decide(SEED_A, COMMIT, []) == []


def test_decide_is_value_below_rate_exactly():
    n = 5000
    rng = np.random.default_rng(7)
    ppb = rng.integers(0, 10**9 + 1, n).tolist()
    x = decision_ints(SEED_A, COMMIT, n).tolist()
    expected = [Fraction(xi, 2**53) < Fraction(pi, 10**9) for xi, pi in zip(x, ppb, strict=True)]
    assert decide(SEED_A, COMMIT, ppb=ppb) == expected


def test_decide_boundary_is_strict():
    # put a rate exactly at a job's value (when representable): not sampled at equality
    x = decision_ints(SEED_A, COMMIT, 1)[0]
    # choose ppb with ppb/1e9 just above and just below value
    lo = int(int(x) * 10**9 // 2**53)
    assert decide(SEED_A, COMMIT, ppb=[lo]) == [False]
    assert decide(SEED_A, COMMIT, ppb=[lo + 1]) == [True]


def test_decide_needs_exactly_one_of_rates_and_ppb():
    with pytest.raises(ConfigError):
        decide(SEED_A, COMMIT)
    with pytest.raises(ConfigError):
        decide(SEED_A, COMMIT, [0.5], ppb=[500_000_000])


@pytest.mark.parametrize("bad", [[-0.1], [1.1], [float("nan")]])
def test_decide_rejects_bad_rates(bad):
    with pytest.raises(ConfigError, match="rates"):
        decide(SEED_A, COMMIT, bad)


@pytest.mark.parametrize("bad", [[-1], [10**9 + 1], [0.5]])
def test_decide_rejects_bad_ppb(bad):
    with pytest.raises(ConfigError, match="ppb"):
        decide(SEED_A, COMMIT, ppb=bad)


def test_rates_ppb_round_trip_examples():
    assert rates_to_ppb([0.0, 1.0, 0.05, 1e-9, 0.123456789]) == [
        0, 10**9, 50_000_000, 1, 123_456_789,
    ]
    assert ppb_to_rates([0, 10**9, 50_000_000]) == [0.0, 1.0, 0.05]
    assert rates_to_ppb(np.array([0.25])) == [250_000_000]
    assert ppb_to_rates(np.array([250_000_000])) == [0.25]


rates_st = st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=1, max_size=50)


@settings(max_examples=200, deadline=None)
@given(rates=rates_st, tag=st.binary(min_size=0, max_size=40))
def test_decide_same_on_float_rates_and_their_ppb_round_trip(rates, tag):
    ppb = rates_to_ppb(rates)
    back = ppb_to_rates(ppb)
    assert rates_to_ppb(back) == ppb
    d = decide(SEED_A, tag, rates)
    assert d == decide(SEED_A, tag, back)
    assert d == decide(SEED_A, tag, ppb=ppb)
    assert d == decide(SEED_A, tag, np.array(rates))


@settings(max_examples=300, deadline=None)
@given(rates=st.lists(st.one_of(st.floats(min_value=0.0, max_value=1.0),
                                st.integers(0, 2 * 10**9).map(lambda k: k / 2e9)),
                      min_size=1, max_size=40))
def test_rates_to_ppb_list_path_equals_numpy_rint(rates):
    # the list path converts each distinct rate with round(); the array path with np.rint:
    # both round half to even (k / 2e9 puts many rates exactly on a half ppb)
    assert rates_to_ppb(rates) == [int(v) for v in np.rint(np.array(rates) * 10**9)]
    assert rates_to_ppb(rates) == rates_to_ppb(np.array(rates))


def test_rates_to_ppb_takes_numpy_values_inside_a_list():
    # a policy may return a numpy scalar or 0-d array as a rate: it lands in a list
    assert rates_to_ppb([0.5, np.array(0.25), np.float32(0.5), 1]) == [
        500_000_000, 250_000_000, 500_000_000, 10**9]
    assert rates_to_ppb([np.array(0.5)]) == [500_000_000]


def test_decide_with_a_few_distinct_rates_equals_one_rate_at_a_time():
    rates = [0.1, 0.0, 0.5, 0.1, 1.0, 0.0] * 20
    d = decide(SEED_A, COMMIT, rates)
    for r in set(rates):
        alone = decide(SEED_A, COMMIT, [r] * len(rates))
        assert [a for a, x in zip(alone, rates, strict=True) if x == r] == [
            a for a, x in zip(d, rates, strict=True) if x == r]


@settings(max_examples=100, deadline=None)
@given(rates=rates_st)
def test_decide_monotone_in_rate(rates):
    lower = [r / 2 for r in rates]
    hi = decide(SEED_B, COMMIT, rates)
    lo = decide(SEED_B, COMMIT, lower)
    assert all(h or not low for h, low in zip(hi, lo, strict=True))


# ------------------------------------------------------------------------------ policies

NODE = b"\x01" * 32
OTHER = b"\x02" * 32


def test_policies_satisfy_the_protocol():
    for pol in (
        UniformPolicy(0.1),
        ImportancePolicy(0.05, 0.02),
        AdaptivePolicy(0.05, 0.02, 0.5),
    ):
        assert isinstance(pol, SamplingPolicy)
        for outcome in OUTCOMES:
            pol.observe(NODE, outcome)
        with pytest.raises(ConfigError, match="outcome"):
            pol.observe(NODE, "cheated")
        with pytest.raises(ConfigError, match="importance"):
            pol.rate(NODE, -1.0)
        assert pol.p_min <= pol.rate(NODE) <= 1.0


def test_uniform_policy():
    pol = UniformPolicy(0.1)
    assert pol.rate(NODE) == 0.1 and pol.rate(OTHER, 100.0) == 0.1
    assert pol.p_min == 0.1
    for bad in (-0.01, 1.01, float("nan")):
        with pytest.raises(ConfigError, match="p"):
            UniformPolicy(bad)


def test_importance_policy():
    pol = ImportancePolicy(0.05, 0.02)
    assert pol.p_min == 0.02
    assert pol.rate(NODE) == 0.05
    assert pol.rate(NODE, 4.0) == pytest.approx(0.2)
    assert pol.rate(NODE, 0.1) == 0.02  # clipped at p_min
    assert pol.rate(NODE, 0.0) == 0.02
    assert pol.rate(NODE, 1000.0) == 1.0
    assert ImportancePolicy(0.05, 0.02, p_max=0.5).rate(NODE, 1000.0) == 0.5


@settings(max_examples=100, deadline=None)
@given(a=st.floats(0, 1e6), b=st.floats(0, 1e6))
def test_importance_policy_monotone(a, b):
    pol = ImportancePolicy(0.05, 0.01)
    lo, hi = sorted((a, b))
    assert pol.p_min <= pol.rate(NODE, lo) <= pol.rate(NODE, hi) <= 1.0


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"p_base": 1.5, "p_min": 0.1}, "p_base"),
        ({"p_base": 0.1, "p_min": -0.1}, "p_min"),
        ({"p_base": 0.1, "p_min": 0.2}, "p_min"),
        ({"p_base": 0.1, "p_min": 0.01, "p_max": 0.05}, "p_max"),
    ],
)
def test_importance_policy_validation(kwargs, key):
    with pytest.raises(ConfigError) as info:
        ImportancePolicy(**kwargs)
    assert info.value.key == key


def test_adaptive_new_nodes_are_sampled_more_and_trust_grows():
    pol = AdaptivePolicy(0.1, 0.02, 0.5, warmup=10)
    assert pol.p_min == 0.02
    assert pol.rate(NODE) == 0.5  # unknown node
    for _ in range(9):
        pol.observe(NODE, "agreed")
    assert pol.rate(NODE) == 0.5
    pol.observe(NODE, "agreed")
    assert pol.streak(NODE) == 10
    assert pol.rate(NODE) == pytest.approx(0.1)
    for _ in range(10):
        pol.observe(NODE, "agreed")
    assert pol.rate(NODE) == pytest.approx(0.05)  # streak doubled: rate halved
    for _ in range(1000):
        pol.observe(NODE, "agreed")
    assert pol.rate(NODE) == 0.02  # never below the floor
    # not_sampled does not count as verified
    pol.observe(OTHER, "not_sampled")
    assert pol.streak(OTHER) == 0


def test_adaptive_trust_never_below_floor_even_for_unimportant_tasks():
    pol = AdaptivePolicy(0.1, 0.02, 0.5, warmup=1)
    for _ in range(10_000):
        pol.observe(NODE, "agreed")
    assert pol.rate(NODE, 0.0) == 0.02
    assert pol.rate(NODE, 1e9) == 1.0


@pytest.mark.parametrize("outcome", ["fault", "slashed"])
def test_adaptive_fault_resets_trust(outcome):
    pol = AdaptivePolicy(0.1, 0.02, 0.5, warmup=5, watch=0)
    for _ in range(50):
        pol.observe(NODE, "agreed")
    assert pol.rate(NODE) < 0.1
    pol.observe(NODE, outcome)
    assert pol.streak(NODE) == 0
    assert pol.rate(NODE) == 0.5


@pytest.mark.parametrize("outcome", ["drift", "dispute"])
def test_adaptive_drift_and_dispute_raise_the_rate_for_a_while(outcome):
    pol = AdaptivePolicy(0.1, 0.02, 0.5, suspect_rate=0.3, warmup=5, watch=3)
    for _ in range(50):
        pol.observe(NODE, "agreed")
    trusted = pol.rate(NODE)
    pol.observe(NODE, outcome)
    assert pol.rate(NODE) == 0.3
    assert pol.streak(NODE) == 50  # trust is not reset by drift or a dispute
    for _ in range(3):
        pol.observe(NODE, "not_sampled")
    assert pol.rate(NODE) == trusted


def test_adaptive_low_stake_nodes_are_sampled_more():
    stakes = {NODE: 1000, OTHER: 150}
    pol = AdaptivePolicy(
        0.1, 0.02, 0.5, suspect_rate=0.25, warmup=1, stake_of=stakes.__getitem__, min_bond=100
    )
    for n in (NODE, OTHER):
        for _ in range(100):
            pol.observe(n, "agreed")
    assert pol.rate(NODE) == 0.02
    assert pol.rate(OTHER) == 0.25  # below 2 x min_bond
    stakes[OTHER] = 99
    assert pol.rate(OTHER) == 1.0  # below the bond itself


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"p_base": 0.1, "floor": 0.2, "new_node_rate": 0.5}, "floor"),
        ({"p_base": 0.1, "floor": -0.1, "new_node_rate": 0.5}, "floor"),
        ({"p_base": 1.1, "floor": 0.01, "new_node_rate": 0.5}, "p_base"),
        ({"p_base": 0.1, "floor": 0.01, "new_node_rate": 0.05}, "new_node_rate"),
        ({"p_base": 0.1, "floor": 0.01, "new_node_rate": 2.0}, "new_node_rate"),
        ({"p_base": 0.1, "floor": 0.01, "new_node_rate": 0.5, "suspect_rate": 0.05}, "suspect_rate"),
        ({"p_base": 0.1, "floor": 0.01, "new_node_rate": 0.5, "warmup": 0}, "warmup"),
        ({"p_base": 0.1, "floor": 0.01, "new_node_rate": 0.5, "watch": -1}, "watch"),
        ({"p_base": 0.1, "floor": 0.01, "new_node_rate": 0.5, "stake_of": len}, "min_bond"),
        ({"p_base": 0.1, "floor": 0.01, "new_node_rate": 0.5, "min_bond": -5}, "min_bond"),
        (
            {"p_base": 0.1, "floor": 0.01, "new_node_rate": 0.5, "low_stake_multiple": 0.5},
            "low_stake_multiple",
        ),
    ],
)
def test_adaptive_policy_validation(kwargs, key):
    with pytest.raises(ConfigError) as info:
        AdaptivePolicy(**kwargs)
    assert info.value.key == key
    assert key in str(info.value)


@settings(max_examples=100, deadline=None)
@given(
    events=st.lists(st.sampled_from(sorted(OUTCOMES)), max_size=200),
    importance=st.floats(0, 100),
)
def test_adaptive_rate_always_within_floor_and_one(events, importance):
    pol = AdaptivePolicy(0.1, 0.03, 0.6, warmup=3, watch=5)
    for e in events:
        pol.observe(NODE, e)
        assert 0.03 <= pol.rate(NODE, importance) <= 1.0
