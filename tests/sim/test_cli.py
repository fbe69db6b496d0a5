"""posp simulate: flags, scenario files, JSON shape, exit codes."""

from __future__ import annotations

import json

import pytest

from posp.cli import main


def run(*args):
    return main(["simulate", "--quiet", *args])


def test_json_shape(tmp_path, capsys):
    out = tmp_path / "o.json"
    assert run("--nodes", "100", "--cheaters", "10", "--runs", "3", "--tasks-per-node", "50",
               "--seed", "4", "--json", str(out)) == 0
    d = json.loads(out.read_text())
    assert d["seed"] == 4
    assert d["params"]["validators"] == 1 and d["params"]["arbiters"] == 3
    for name in ("detection_within_n", "mean_tasks_to_detection", "median_tasks_to_detection",
                 "undetected_before_catch", "false_slash_rate", "cheater_profit_per_job",
                 "honest_profit_per_job"):
        assert set(d["metrics"][name]) == {"measured", "theory", "stderr", "agrees"}
    assert "detection_within_n" in capsys.readouterr().out


@pytest.mark.parametrize("args,key", [
    (["--sample-rate", "1.5"], "--sample-rate"),
    (["--cheaters", "20", "--nodes", "10"], "--cheaters"),
    (["--collusion", "0.05", "--cheaters", "100", "--nodes", "1000"], "--collusion"),
    (["--arbiters", "2"], "--arbiters"),
    (["--strategy", "nope"], "--strategy"),
])
def test_bad_flags_exit_2_naming_the_key(args, key, capsys):
    assert run(*args) == 2
    assert key in capsys.readouterr().err


def test_bad_scenario_file(tmp_path, capsys):
    f = tmp_path / "s.toml"
    f.write_text('nodes = 10\nbogus = 1\n')
    assert run("--scenario", str(f)) == 2
    assert "bogus" in capsys.readouterr().err
    f.write_text('cheat_rate = -0.1\n')
    assert run("--scenario", str(f)) == 2
    assert "cheat_rate" in capsys.readouterr().err
    assert run("--scenario", str(tmp_path / "missing.toml")) == 2


def test_argparse_errors_exit_2():
    with pytest.raises(SystemExit) as e:
        run("--nodes", "many")
    assert e.value.code == 2


def test_sweep_writes_plot_and_data(tmp_path):
    png, js = tmp_path / "p.png", tmp_path / "p.json"
    assert run("--nodes", "200", "--cheaters", "2", "--cheat-rate", "1", "--slash", "100",
               "--runs", "2", "--tasks-per-node", "60", "--sweep-p", "--points", "3",
               "--plot", str(png), "--json", str(js)) == 0
    assert png.stat().st_size > 1000
    d = json.loads(js.read_text())
    assert len(d["points"]) == 3 and d["p_star"] > 0
