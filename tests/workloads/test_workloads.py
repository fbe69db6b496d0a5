"""workloads: deterministic builds, picklable factories, cheats caught, honest drift passes."""

from __future__ import annotations

import dataclasses
import json
import pickle

import numpy as np
import pytest
import torch

from posp.compare import VerdictKind
from posp.errors import ConfigError
from workloads import registry
from workloads.base import Runner, Workload
from workloads.calibration import calibrate, margin_report, measure_drift
from workloads.cheats import Behaviour

LM_TOKENS = 8
N = 3

AGREE = (VerdictKind.MATCH, VerdictKind.DRIFT)


def small(name: str) -> Workload:
    w = registry.get(name)
    if name == "lm":
        w = dataclasses.replace(w, n_new=LM_TOKENS)  # type: ignore[type-var]
    return w


@pytest.fixture(scope="module", params=["mlp", "cnn", "lm"])
def built(request) -> tuple[Workload, Runner]:
    w = small(request.param)
    return w, w.build(1)


def test_registry():
    assert set(registry.WORKLOADS) == {"mlp", "cnn", "lm"}
    with pytest.raises(ConfigError, match="workload"):
        registry.get("gpt-5")


@pytest.mark.parametrize("name", ["mlp", "cnn", "lm"])
def test_factory_picklable_and_deterministic(name):
    w = small(name)
    w2 = pickle.loads(pickle.dumps(w))
    assert w2 == w
    sa = w.build(1).module.state_dict()
    sb = w2.build(1).module.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    other = dataclasses.replace(w, seed=w.seed + 100).build(1).module.state_dict()
    assert not all(torch.equal(sa[k], other[k]) for k in sa)


def test_inputs_seeded(built):
    w, _ = built
    a, b, c = w.inputs(5, 2), w.inputs(5, 2), w.inputs(6, 2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0], c[0])


def test_run_shapes_and_profile(built):
    w, r = built
    xs = w.inputs(0, N)
    ys = w.run(r, xs)
    assert len(ys) == N
    for x, y in zip(xs, ys, strict=True):
        assert y.dtype == np.float32 and y.shape == w.output_shape(x)
    assert w.run(r, []) == []
    p = w.profile(2, False)
    assert p["threads"] == 2 and p["batched"] is False and p["torch"] == torch.__version__
    assert p["deterministic"] is False and p["device"] == "cpu"


def test_honest_batched_vs_per_job_agrees(built):
    w, r = built
    xs = w.inputs(1, N)
    batched = w.run(r, xs)
    single = w.run(r.replace(batched=False), xs)
    two = w.run(r.replace(threads=2), xs)
    for x, a, b, c in zip(xs, batched, single, two, strict=True):
        assert w.comparator.compare(a, b).kind in AGREE
        assert w.comparator.compare(a, c).kind in AGREE
        assert w.verify(r, x, a).kind in AGREE
        assert w.judge(r.replace(batched=False), x, a, b).kind in AGREE


def test_every_cheat_right_shape_and_mismatch(built):
    w, r = built
    xs = w.inputs(2, N)
    warm = w.inputs(99, 1)
    honest = w.run(r, xs)
    cheats = w.cheats
    expected = {"zeros", "constant", "random", "replay", "wrong_input", "smaller_model",
                "fp16", "bf16", "int8", "skip_layer", "noise_1e-2", "noise_1e-3"}
    if w.name == "lm":
        expected |= {"truncated", "sampling"}
    assert set(cheats) == expected
    for name, cheat in cheats.items():
        assert cheat.saves, name
        behaviour = cheat.bind(w, r, seed=0)
        assert isinstance(behaviour, Behaviour)
        behaviour(warm)
        outs = behaviour(xs)
        assert len(outs) == N
        for x, o, h in zip(xs, outs, honest, strict=True):
            assert o.shape == w.output_shape(x) and o.dtype == np.float32, name
            v = w.judge(r, x, o, h)
            assert v.kind is VerdictKind.MISMATCH, (name, v)
        if w.name != "lm":  # the LM's two-generation comparator is a dispute starter
            assert all(w.comparator.compare(o, h).kind is VerdictKind.MISMATCH
                       for o, h in zip(outs, honest, strict=True)), name


def test_malformed_outputs_are_mismatch_not_exceptions(built):
    w, r = built
    x = w.inputs(3, 1)[0]
    (h,) = w.run(r, [x])
    for bad in (None, h[:1], h.astype(np.float64), np.full_like(h, np.nan), "garbage"):
        v = w.judge(r, x, bad, h)
        assert v.kind is VerdictKind.MISMATCH and v.distance == float("inf")


# ---- language model ---------------------------------------------------------------


@pytest.fixture(scope="module")
def lm() -> tuple[Workload, Runner]:
    w = small("lm")
    return w, w.build(1)


def test_lm_generate_and_prefill(lm):
    from workloads.lm import unpack_output, verify_by_prefill

    w, r = lm
    prompt = bytes(w.inputs(4, 1)[0])
    toks, logits = w.generate(r, prompt)
    assert toks.shape == (LM_TOKENS,) and logits.shape == (LM_TOKENS, 256)
    assert np.array_equal(toks, logits.argmax(axis=1))
    p = np.frombuffer(prompt, np.uint8)
    v = verify_by_prefill(r, p, toks, logits, tolerance=w.tolerance)
    assert v.kind in AGREE and v.metric == "lm_prefill" and v.distance < 1e-4
    # tokens alone also verify
    assert verify_by_prefill(r, p, toks, tolerance=w.tolerance).kind in AGREE
    # one wrong token far from the argmax is caught
    bad = toks.copy()
    bad[3] = int(np.argmin(logits[3]))
    assert verify_by_prefill(r, p, bad, tolerance=w.tolerance).kind is VerdictKind.MISMATCH
    # a near tie is not a cheat: claim the runner-up where it is within tolerance
    order = np.sort(logits, axis=1)
    i = int(np.argmin(order[:, -1] - order[:, -2]))
    gap = float(order[i, -1] - order[i, -2])
    tie = toks[: i + 1].copy()
    tie[i] = int(np.argsort(logits[i])[-2])
    assert verify_by_prefill(r, p, tie, tolerance=gap * 1.01).kind is VerdictKind.DRIFT
    assert verify_by_prefill(r, p, tie, tolerance=gap * 0.5).kind is VerdictKind.MISMATCH
    # malformed claims
    assert verify_by_prefill(r, p, np.array([300]), tolerance=1.0).kind is VerdictKind.MISMATCH
    assert verify_by_prefill(r, p, toks, tolerance=1.0, n_new=4).kind is VerdictKind.MISMATCH
    out = w.run(r, [p])[0]
    assert unpack_output(out) is not None
    wrong = out.copy()
    wrong[0, 0] = 0.5
    assert unpack_output(wrong) is None


def test_lm_rejects_truncated_and_sampled(lm):
    w, r = lm
    xs = w.inputs(5, 2)
    for name in ("truncated", "sampling"):
        outs = w.cheats[name].output(w, r, xs, seed=1)
        for x, o in zip(xs, outs, strict=True):
            assert w.verify(r, x, o).kind is VerdictKind.MISMATCH, name


def test_lm_comparator_two_generations(lm):
    w, r = lm
    xs = w.inputs(6, 2)
    a = w.run(r, xs)
    b = w.run(r.replace(batched=False), xs)
    for ya, yb in zip(a, b, strict=True):
        assert w.comparator.compare(ya, yb).kind in AGREE
        flipped = ya.copy()
        flipped[2, 0] = float(np.argmin(ya[2, 1:]))
        assert w.comparator.compare(flipped, yb).kind is VerdictKind.MISMATCH


# ---- calibration --------------------------------------------------------------------


def test_calibration_small():
    w = small("mlp")
    r = w.build(1)
    drift = measure_drift(w, seed=10, n_inputs=4, batch_sizes=(1, 4), threads=(1,), runner=r)
    assert set(drift) == {f"{a}|{b}" for a in ("batch1-t1", "batch4-t1", "per_job-t1")
                          for b in ("batch1-t1", "batch4-t1", "per_job-t1")}
    assert all(len(v) == 4 for v in drift.values())
    assert small("lm").judge_metric == "lm_prefill"
    cal = calibrate(w, seed=10, n_inputs=4, batch_sizes=(1, 4), threads=(1,), runner=r)
    json.dumps(cal)
    assert cal["version"] == 1 and cal["workload"] == "mlp" and cal["metric"] == "relative_l2"
    assert cal["tolerance"] >= cal["max_drift"] * cal["safety_margin"]
    assert cal["tolerance"] >= w.tolerance_floor
    assert cal["tolerance"] < 1e-4  # honest drift is tiny next to every cheat
    with pytest.raises(ConfigError):
        margin_report(w, calibration=cal, seed=10)
    with pytest.raises(ConfigError):
        calibrate(w, n_inputs=4, safety_margin=0.5)
