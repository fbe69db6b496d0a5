"""Calibration files: per-pair tolerances keyed by execution profile, used by the coordinator."""

from __future__ import annotations

import json

import numpy as np
import pytest

from posp.cli import main as cli
from posp.compare import RelativeL2, VerdictKind
from posp.errors import ConfigError, UnsupportedProfile
from posp.identity import NodeKey
from posp.node import NodeCore
from posp.protocol import State
from posp.receipts import capture_profile
from workloads import registry
from workloads.calibration import (
    CALIBRATION_VERSION,
    builtin_calibration,
    calibrate,
    check_profile,
    load_calibration,
)
from workloads.soundness import _Rounds

T1B = capture_profile(threads=1, batched=True)
T2S = capture_profile(threads=2, batched=False)


@pytest.fixture(scope="module")
def mlp_cal():
    w = registry.get("mlp")
    return w, calibrate(w, seed=11, n_inputs=4, batch_sizes=(1, 4))


def test_calibrate_keys_pairs_by_profile_digest(mlp_cal):
    w, cal = mlp_cal
    json.dumps(cal)
    assert cal["version"] == CALIBRATION_VERSION and cal["metric"] == "relative_l2"
    assert cal["default_tolerance"] == w.comparator.tolerance
    digests = {p.digest().hex() for p in (T1B, T2S, capture_profile(threads=2, batched=True),
                                          capture_profile(threads=1, batched=False))}
    for p in cal["pairs"]:
        assert {p["a"], p["b"]} <= digests and p["a"] <= p["b"]
        assert p["tolerance"] >= max(p["max_drift"] * cal["safety_margin"], cal["floor"])
        assert p["a_label"].startswith("cpu/float32/")
    assert {"p50", "p99", "max", "count"} <= set(cal["distribution"])
    c = load_calibration(cal)
    a, b = T1B.digest(), T2S.digest()
    assert c.comparator_for(a, b) == c.comparator_for(b, a)
    assert c.comparator_for(a, b).tolerance < w.comparator.tolerance
    # a pair nobody calibrated keeps the workload's default comparator
    assert c.comparator_for(bytes(32), a) == w.comparator


def test_save_load_roundtrip_and_strict_reading(mlp_cal, tmp_path):
    _w, cal = mlp_cal
    c = load_calibration(cal)
    c.save(tmp_path / "c.json")
    c2 = load_calibration(tmp_path / "c.json")
    assert c2.pairs == c.pairs and c2.workload == "mlp"
    for bad, key in (
        ({**cal, "version": 2}, "version"),
        ({**cal, "metric": "max_abs"}, "metric"),
        ({**cal, "pairs": [{**cal["pairs"][0], "a": "zz"}]}, "pairs[0].a"),
        ({**cal, "pairs": [{**cal["pairs"][0], "tolerance": -1.0}]}, "pairs[0].tolerance"),
        ({**cal, "pairs": cal["pairs"][:1] * 2}, "pairs[1]"),
        ({k: v for k, v in cal.items() if k != "pairs"}, "pairs"),
    ):
        with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
            load_calibration(bad)
    with pytest.raises(ConfigError, match="no calibration file"):
        load_calibration(tmp_path / "missing.json")
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read"):
        load_calibration(tmp_path / "junk.json")


@pytest.mark.parametrize("name", ["mlp", "cnn", "lm"])
def test_builtin_calibrations_ship(name):
    w = registry.get(name)
    c = builtin_calibration(name)
    assert c.workload == name and c.metric == w.comparator.metric
    assert c.seed is not None and c.pairs
    assert all(p.tolerance < w.comparator.tolerance for p in c.pairs.values())
    assert load_calibration(name).pairs == c.pairs  # by name, too
    with pytest.raises(ConfigError):
        builtin_calibration("nope")


def test_cli_calibration_tightens_the_coordinator(tmp_path, capsys):
    """A file written by ``posp calibrate`` makes the Protocol flag (and slash) an output
    whose distance is above the calibrated tolerance but below the default one, which
    the default comparator calls DRIFT."""
    out = tmp_path / "cal.json"
    rc = cli(["calibrate", "--factory", "workloads.mlp:MLPWorkload", "--inputs", "3",
              "--seed", "21", "--out", str(out), "--quiet"])
    assert rc == 0, capsys.readouterr().err
    cal = load_calibration(out)
    tol = cal.tolerance_for(T1B.digest(), T2S.digest())
    default = registry.get("mlp").comparator.tolerance
    assert tol < default
    dist = (tol * default) ** 0.5  # strictly between the two
    w = np.random.default_rng(0).standard_normal((10, 6)).astype(np.float32)
    x = np.ones(6, np.float32)
    honest = (w @ x).astype(np.float32)
    # an output at exactly relative-L2 distance ~dist from the honest one
    d = np.random.default_rng(1).standard_normal(10)
    d *= dist * np.linalg.norm(honest) / np.linalg.norm(d)
    off = (honest + d).astype(np.float32)
    measured = RelativeL2().compare(off, honest).distance
    assert tol < measured < default

    def nodes():
        key = [NodeKey.from_seed(bytes([i]) * 32) for i in range(5)]
        return [NodeCore(key[0], T1B, lambda xs: [off for _ in xs])] + [
            NodeCore(key[i], T2S, lambda xs: [honest for _ in xs]) for i in range(1, 5)
        ]

    ns = nodes()
    (tight, _v), = _Rounds(ns, cal.comparator_for, seed=3).run([(ns[0].public, x)])
    assert tight.verdicts[0].kind is VerdictKind.MISMATCH
    assert tight.verdicts[0].tolerance == tol
    assert tight.state is State.OVERTURNED and tight.slashed == (ns[0].public,)
    ns = nodes()
    (loose, _v), = _Rounds(ns, registry.get("mlp").comparator, seed=3).run([(ns[0].public, x)])
    assert loose.verdicts[0].kind is VerdictKind.DRIFT
    assert loose.state is State.AGREED and loose.slashed == ()


def test_check_profile_refuses_what_the_workload_cannot_serve():
    w = registry.get("cnn")
    check_profile(w, T1B)
    with pytest.raises(UnsupportedProfile, match="device 'cuda'"):
        check_profile(w, capture_profile(threads=1, batched=True, device="cuda"))
    with pytest.raises(UnsupportedProfile, match="dtype 'bfloat16'"):
        check_profile(w, capture_profile(threads=1, batched=True, dtype="bfloat16"))


@pytest.mark.parametrize("spec, msg", [
    ("nocolon", "MODULE:FUNCTION"),
    ("no_such_module_x:f", "cannot import"),
    ("workloads.registry:nothing", "no callable"),
    ("workloads.registry:get", "raised TypeError"),
    ("builtins:object", "lacks"),
])
def test_cli_calibrate_bad_factory_is_one_line_exit_2(spec, msg, capsys, tmp_path):
    rc = cli(["calibrate", "--factory", spec, "--out", str(tmp_path / "c.json")])
    err = capsys.readouterr().err
    assert rc == 2 and msg in err and err.count("\n") == 1 and "Traceback" not in err


def test_cli_calibrate_bad_flags(capsys, tmp_path):
    assert cli(["calibrate", "--workload", "gpt", "--out", str(tmp_path / "c.json")]) == 2
    assert cli(["calibrate", "--inputs", "0"]) == 2
    assert cli(["calibrate", "--out", str(tmp_path / "no" / "c.json")]) == 2
    assert "--out" in capsys.readouterr().err
