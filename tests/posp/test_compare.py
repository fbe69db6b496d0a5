"""posp.compare: verdict kinds, distances, garbage handling, and properties."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from posp.compare import (
    Cosine,
    Elementwise,
    Exact,
    MaxAbs,
    MaxUlp,
    RelativeL2,
    TopKAgreement,
    Verdict,
    VerdictKind,
)
from posp.encoding import bf16_array
from posp.errors import ConfigError

M, D, X = VerdictKind.MATCH, VerdictKind.DRIFT, VerdictKind.MISMATCH

ALL = [
    Exact(),
    Elementwise(atol=1e-6, rtol=1e-5),
    MaxUlp(4),
    RelativeL2(1e-4),
    Cosine(1e-6),
    TopKAgreement(k=2),
    MaxAbs(1e-5),
]
SYMMETRIC = [c for c in ALL if not isinstance(c, Elementwise)]  # rtol * |b|: b is the reference


def f32(*v: float) -> np.ndarray:
    return np.array(v, dtype=np.float32)


@pytest.mark.parametrize("c", ALL, ids=lambda c: c.metric)
def test_identical_match_with_nan_and_signed_zero(c):
    a = f32(1.0, np.nan, -0.0, 3.0)
    b = f32(1.0, np.nan, 0.0, 3.0)
    v = c.compare(a, b)
    assert v == Verdict(M, 0.0, c.metric, c.tolerance)
    assert v.agrees


@pytest.mark.parametrize("c", ALL, ids=lambda c: c.metric)
@pytest.mark.parametrize(
    "b",
    [
        f32(1.0, 2.0),  # shape
        np.array([1.0, 2.0, 3.0]),  # dtype float64
        np.array(["a", "b", "c"]),  # not numeric
        None,
        [1.0, 2.0, 3.0],  # not an array
        b"\x00" * 12,
    ],
    ids=["shape", "dtype", "str", "none", "list", "bytes"],
)
def test_garbage_is_mismatch_not_exception(c, b):
    v = c.compare(f32(1.0, 2.0, 3.0), b)
    assert v.kind is X and v.distance == math.inf
    v = c.compare(b, f32(1.0, 2.0, 3.0))
    assert v.kind is X and v.distance == math.inf


@pytest.mark.parametrize("c", [Elementwise(), MaxUlp(), RelativeL2(), Cosine(), MaxAbs()],
                         ids=lambda c: c.metric)
def test_nan_or_inf_facing_a_number_is_inf_mismatch(c):
    for bad in (np.nan, np.inf, -np.inf):
        v = c.compare(f32(1.0, 2.0), f32(1.0, bad))
        assert v.kind is X and v.distance == math.inf, (bad, v)
    v = c.compare(f32(1.0, np.inf), f32(1.0 + 1e-7, np.inf))
    assert v.kind is not X


def test_exact():
    assert Exact().compare(f32(1.0), f32(1.0 + 2**-23)).distance == math.inf
    assert Exact().compare(np.arange(3), np.arange(3)).kind is M


def test_elementwise_distance_is_ratio_to_tolerance():
    c = Elementwise(atol=1e-3, rtol=0.0)
    v = c.compare(f32(1.0, 0.0), f32(1.0, 5e-4))
    assert v.kind is D and v.distance == pytest.approx(0.5, rel=1e-3)
    assert c.compare(f32(0.0), f32(2e-3)).kind is X
    assert Elementwise(atol=0.0, rtol=0.0).compare(f32(1.0), f32(2.0)).distance == math.inf


def test_max_ulp():
    one = f32(1.0)
    nxt = np.nextafter(one, np.float32(2))
    assert MaxUlp(1).compare(one, nxt) == Verdict(D, 1.0, "max_ulp", 1.0)
    # across zero: smallest subnormals either side are 2 ULPs apart; -0 and +0 equal
    tiny = np.nextafter(np.float32(0), np.float32(1))
    assert MaxUlp().compare(np.array([-tiny]), np.array([tiny])).distance == 2.0
    assert MaxUlp().compare(f32(-1.0), f32(1.0)).distance == 2 * 0x3F800000
    d = np.array([1.0]), np.array([np.nextafter(1.0, 2.0)])
    assert MaxUlp().compare(*d).distance == 1.0
    assert MaxUlp().compare(np.array([3], np.int32), np.array([7], np.int32)).distance == 4.0
    assert MaxUlp().compare(np.float16([1.0]), np.float16([1.0009766])).distance == 1.0


def test_bf16_arrays_compare_as_values():
    bits = np.array([0x3F80, 0x3F81], dtype=np.uint16)  # 1.0 and the next bf16
    a, b = bf16_array(bits), bf16_array(np.array([0x3F80, 0x3F80], np.uint16))
    assert MaxUlp().compare(a, b).distance == 1.0
    assert MaxAbs(1.0).compare(a, b).distance == pytest.approx(2**-7)
    assert MaxAbs().compare(a, bits.view(np.float16)).kind is X  # bf16 vs not bf16


def test_relative_l2_and_cosine():
    b = f32(3.0, 4.0)
    assert RelativeL2().compare(np.zeros(2, np.float32), b).distance == pytest.approx(1.0)
    assert RelativeL2().compare(f32(3.0, 4.5), b).distance == pytest.approx(0.5 / np.hypot(3, 4.5))
    assert Cosine().compare(f32(6.0, 8.0), b).distance == pytest.approx(0.0, abs=1e-12)
    assert Cosine().compare(f32(6.0, 8.0), b).kind is D  # scale-blind: use it with care
    assert Cosine(0.5).compare(np.zeros(2, np.float32), b).distance == 1.0
    assert Cosine().compare(-b, b).distance == pytest.approx(2.0)


def test_topk():
    a = f32(0.1, 0.9, 0.5, 0.2)
    b = f32(0.1, 0.5, 0.9, 0.2)
    assert TopKAgreement(k=1).compare(a, b).distance == 1.0
    assert TopKAgreement(k=2, tol=0.0).compare(a, b).kind is D  # same top-2 set
    rows = np.stack([a, a])
    rows_b = np.stack([a, f32(0.9, 0.1, 0.2, 0.5)])
    assert TopKAgreement(k=2).compare(rows, rows_b).distance == 1.0  # worst row counts
    assert TopKAgreement(k=9).compare(a, b).distance == math.inf
    with pytest.raises(ConfigError):
        TopKAgreement(k=0)


def test_with_tolerance_and_params():
    c = RelativeL2(1e-4)
    t = c.with_tolerance(1e-6)
    assert t.tolerance == 1e-6 and c.tolerance == 1e-4 and isinstance(t, RelativeL2)
    assert Elementwise(atol=1e-3, rtol=0).with_tolerance(0.5).atol == 1e-3
    assert TopKAgreement(k=3).with_tolerance(0.1).k == 3
    with pytest.raises(ConfigError):
        c.with_tolerance(-1.0)
    with pytest.raises(ConfigError):
        c.with_tolerance(float("nan"))
    with pytest.raises(ConfigError):
        Elementwise(atol=-1.0)
    assert c.params() == {"metric": "relative_l2", "tol": 1e-4}
    for comp in ALL:
        assert pickle.loads(pickle.dumps(comp)) == comp


def test_verdict_to_dict():
    v = RelativeL2().compare(f32(1.0), f32(2.0))
    assert v.to_dict() == {"kind": "mismatch", "distance": 0.5, "metric": "relative_l2",
                           "tolerance": 1e-4}


# ---- properties ---------------------------------------------------------------------

finite32 = hnp.arrays(
    np.float32,
    hnp.array_shapes(min_dims=1, max_dims=2, min_side=1, max_side=8),
    elements=st.floats(-1e3, 1e3, width=32),
)
any32 = hnp.arrays(
    np.float32,
    hnp.array_shapes(min_dims=1, max_dims=2, min_side=1, max_side=6),
    elements=st.floats(width=32, allow_nan=True, allow_infinity=True),
)


@settings(max_examples=60, deadline=None)
@given(any32)
def test_prop_identical_arrays_match(a):
    for c in ALL:
        assert c.compare(a, a.copy()).kind is M


@settings(max_examples=60, deadline=None)
@given(any32, st.data())
def test_prop_symmetric_and_never_raises(a, data):
    b = data.draw(hnp.arrays(np.float32, a.shape,
                             elements=st.floats(width=32, allow_nan=True, allow_infinity=True)))
    for c in SYMMETRIC:
        v1, v2 = c.compare(a, b), c.compare(b, a)
        assert v1.kind == v2.kind
        assert v1.distance == v2.distance or math.isclose(v1.distance, v2.distance,
                                                           rel_tol=1e-12)
        assert not math.isnan(v1.distance) and v1.distance >= 0


@settings(max_examples=60, deadline=None)
@given(finite32, st.integers(0, 2**32 - 1))
def test_prop_distance_monotone_in_perturbation(b, seed):
    rng = np.random.default_rng(seed)
    direction = rng.standard_normal(b.shape)
    norm_b = float(np.linalg.norm(b.astype(np.float64)))
    scale = max(float(np.abs(b).max()), 1.0)
    prev = {type(c): 0.0 for c in ALL}
    for t in (1e-6, 1e-4, 1e-2, 1e-1):
        a = (b.astype(np.float64) + t * scale * direction).astype(np.float32)
        if norm_b and np.linalg.norm(a.astype(np.float64) - b) > norm_b:
            break  # relative L2 is monotone only while the perturbation is below ||b||
        for c in (Elementwise(), MaxAbs(), MaxUlp(), RelativeL2()):
            d = c.compare(a, b).distance
            assert d >= prev[type(c)] * (1 - 1e-9), (c.metric, t)
            prev[type(c)] = d


@settings(max_examples=60, deadline=None)
@given(finite32, st.floats(0.0, 1e3))
def test_prop_tolerance_decides_drift(a, tol):
    b = a + np.float32(0.5)
    v = MaxAbs(tol).compare(a, b)
    if v.kind is not M:
        assert (v.kind is D) == (v.distance <= tol)
