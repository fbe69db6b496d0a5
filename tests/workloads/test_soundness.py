"""The soundness matrix at small trial counts (the full matrix is ``posp soundness``)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from posp.cli import main as cli
from posp.errors import ConfigError
from workloads import registry
from workloads.calibration import builtin_calibration, calibrate, load_calibration
from workloads.soundness import plot_soundness, soundness, soundness_workload, target_failures


def _shape(report, name, cheats):
    e = report["workloads"][name]
    h = e["honest"]
    for k, t in (("trials", int), ("slashed", int), ("max_drift", float)):
        assert isinstance(h[k], t), k
    for cell in h["variants"].values():
        assert {"trials", "flagged", "slashed"} <= set(cell)
    assert set(e["cheats"]) == set(cheats)
    for cell in e["cheats"].values():
        assert {"trials", "flagged", "detected", "min_distance"} <= set(cell)
    assert isinstance(e["margin"], float)
    json.dumps(report)


def test_matrix_mlp_small(tmp_path):
    w = registry.get("mlp")
    res = soundness(["mlp"], honest_trials=400, cheat_trials=24, n_inputs=24,
                    calibrations={"mlp": builtin_calibration("mlp")})
    rep = res.report
    _shape(rep, "mlp", w.cheats)
    e = rep["workloads"]["mlp"]
    h = e["honest"]
    assert h["trials"] == 400 and h["slashed"] == 0
    assert sum(v["trials"] for v in h["variants"].values()) == 400
    assert len(h["variants"]) == 8 and all(v["trials"] == 50 for v in h["variants"].values())
    # validators of every variant faced asserters of other variants
    assert len({k.split("|")[1] for k in h["pairs"]}) == 8
    for c, cell in e["cheats"].items():
        assert cell["trials"] == 24 and cell["detected"] == 24, c
        assert cell["flagged"] == 24 and cell["honest_slashed"] == 0, c
        assert cell["min_distance"] > e["calibration"]["max_tolerance"], c
    assert e["margin"] >= 10
    assert target_failures(rep, min_trials={"mlp": 400}) == []
    assert any("honest trials < 10000" in f for f in rep["failures"])
    png = tmp_path / "s.png"
    plot_soundness(res, str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_lm_small_with_its_own_calibration():
    w = dataclasses.replace(registry.get("lm"), n_new=6)
    # one thread: two-thread torch on a busy 2-core machine is slow, not different
    cal = load_calibration(calibrate(w, seed=31, n_inputs=6, threads=(1,)), workload=w)
    entry, raw = soundness_workload(w, calibration=cal, honest_trials=48, cheat_trials=6,
                                    n_inputs=6, seed=32, threads=(1,))
    assert entry["metric"] == "lm_logit" and entry["honest"]["slashed"] == 0
    for c, cell in entry["cheats"].items():
        assert cell["detected"] == cell["trials"] == 6, c
    assert {"truncated", "sampling"} <= set(entry["cheats"])
    assert entry["prefill"]["metric"] == "lm_prefill"
    assert entry["margin"] >= 10 and raw["drift"].size


def test_heldout_seed_must_not_be_the_calibration_seed():
    w = registry.get("mlp")
    cal = builtin_calibration("mlp")
    with pytest.raises(ConfigError, match="own calibration data"):
        soundness_workload(w, calibration=cal, honest_trials=1, cheat_trials=1, n_inputs=1,
                           seed=cal.seed)
    with pytest.raises(ConfigError, match="unknown cheat"):
        soundness_workload(w, calibration=cal, honest_trials=1, cheat_trials=1, n_inputs=1,
                           cheats=["teleport"])


def test_cli_soundness_exit_codes(tmp_path, capsys):
    out = tmp_path / "s.json"
    rc = cli(["soundness", "--workloads", "mlp", "--trials", "40", "--cheat-trials", "5",
              "--inputs", "8", "--cheats", "zeros,fp16", "--json", str(out), "--quiet"])
    assert rc == 1  # fewer honest trials than the target: not a pass
    rep = json.loads(out.read_text())
    _shape(rep, "mlp", ["zeros", "fp16"])
    assert rep["workloads"]["mlp"]["honest"]["slashed"] == 0
    assert cli(["soundness", "--workloads", "gpt", "--quiet"]) == 2
    assert cli(["soundness", "--workloads", "mlp", "--cheats", "teleport", "--quiet"]) == 2
    assert cli(["soundness", "--trials", "-1", "--quiet"]) == 2
    assert "--trials" in capsys.readouterr().err
