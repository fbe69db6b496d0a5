"""Tests for ``posp economics``."""

from __future__ import annotations

import json

import pytest

from posp.cli import main

BASE = ["economics", "--cost", "1", "--reward", "1", "--slash", "100",
        "--collusion", "0", "--validators", "1"]


def test_economics_writes_json(tmp_path, capsys):
    out = tmp_path / "econ.json"
    assert main([*BASE, "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert round(data["p_star"], 4) == 0.0099
    assert data["p_star"] == pytest.approx(1 / 101)  # the full float
    assert data["warning"] is None
    assert data["params"]["slash"] == 100.0 and data["params"]["validators"] == 1
    assert len(data["table"]) >= 5
    row = next(r for r in data["table"] if r["p"] == 0.05)
    assert row["median_tasks"] == 14
    text = capsys.readouterr().out
    assert "p* = 0.0099" in text
    assert "within" in text


def test_economics_warns_below_p_min(tmp_path, capsys):
    out = tmp_path / "econ.json"
    assert main([*BASE, "--p-min", "0.005", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert "p_min" in data["warning"]
    assert "warning" in capsys.readouterr().out


def test_economics_min_bond(tmp_path):
    out = tmp_path / "econ.json"
    assert main([*BASE, "--min-bond", "9", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["p_star"] == pytest.approx(0.1)


def test_economics_full_collusion_has_no_threshold(tmp_path, capsys):
    out = tmp_path / "econ.json"
    args = ["economics", "--cost", "1", "--reward", "1", "--slash", "100",
            "--collusion", "1", "--json", str(out)]
    assert main(args) == 0
    data = json.loads(out.read_text())
    assert data["p_star"] is None and data["warning"]
    assert "inf" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--cost", "-1"), ("--collusion", "1.5"), ("--collusion", "-0.1"),
     ("--validators", "0"), ("--slash", "nan"), ("--p-min", "2"), ("--arbiters", "2")],
)
def test_economics_bad_values_exit_2_with_one_line(flag, value, capsys):
    args = list(BASE)
    if flag in args:
        args[args.index(flag) + 1] = value
    else:
        args += [flag, value]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert err.startswith("posp economics: ") and flag in err
    assert "Traceback" not in err


def test_economics_bad_json_path(tmp_path, capsys):
    assert main([*BASE, "--json", str(tmp_path / "missing" / "x.json")]) == 2
    assert "--json" in capsys.readouterr().err


def test_economics_missing_required_flag(capsys):
    with pytest.raises(SystemExit) as info:
        main(["economics", "--cost", "1"])
    assert info.value.code == 2
