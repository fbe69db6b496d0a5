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
        assert set(d["metrics"][name]) == {"measured", "theory", "stderr", "agrees",
                                           "compared"}
    assert "detection_within_n" in capsys.readouterr().out


@pytest.mark.parametrize("args,key", [
    (["--sample-rate", "1.5"], "--sample-rate"),
    (["--cheaters", "20", "--nodes", "10"], "--cheaters"),
    (["--collusion", "0.05", "--cheaters", "100", "--nodes", "1000"], "--collusion"),
    (["--arbiters", "2"], "--arbiters"),
    (["--strategy", "nope"], "--strategy"),
    (["--strategy", "os:path"], "--strategy"),  # importable, but not a class
    (["--strategy", "os:nothing_here"], "--strategy"),
    (["--sweep-p", "--points", "0"], "--points"),
    (["--sweep-p", "--points", "-2"], "--points"),
    (["--sweep-p", "--cheaters", "0"], "cheaters"),
    (["--sweep-p", "--strategy", "adaptive"], "strategy"),
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


@pytest.mark.parametrize("text,key", [
    ('strategy = 3\n', "strategy"),
    ('strategy = "adaptive"\n[options]\nrun_length = "x"\n', "options.run_length"),
    ('strategy = "adaptive"\n[options]\nhigh_rate = 5.0\n', "options.high_rate"),
    ('strategy = "lazy_validator"\n[options]\nguess_accuracy = "half"\n',
     "options.guess_accuracy"),
    ('[sweep]\npoints = "x"\n', "sweep.points"),
    ('[sweep]\np_max = 1.5\n', "sweep.p_max"),
    ('[sweep]\np_min = 0.5\np_max = 0.1\n', "sweep.p_min"),
    ('[sweep]\nsteps = 3\n', "sweep"),
    ('[options]\ncheat_rate = 5.0\n', "options.cheat_rate"),
])
def test_bad_values_in_scenario_files_exit_2_naming_the_key(tmp_path, capsys, text, key):
    """Every mistake in a file is one line naming the key and exit 2, before any run (the
    sweep's keys too): never a traceback."""
    f = tmp_path / "s.toml"
    f.write_text("nodes = 50\ncheaters = 5\nruns = 1\ntasks_per_node = 20\n" + text)
    assert run("--scenario", str(f), "--sweep-p", "--plot", str(tmp_path / "p.png")) == 2
    err = capsys.readouterr().err
    assert key in err and "Traceback" not in err, err
    assert not (tmp_path / "p.png").exists()


def test_sweep_checks_its_paths_before_running(tmp_path, capsys):
    base = ["--nodes", "50", "--cheaters", "5", "--runs", "1", "--tasks-per-node", "20",
            "--sweep-p", "--points", "2"]
    same = tmp_path / "x.json"
    assert run(*base, "--plot", str(same)) == 2  # the plot would overwrite its data
    assert "--plot" in capsys.readouterr().err and not same.exists()


def test_sweep_default_range_when_p_star_is_above_1(tmp_path):
    """A job so costly that no sampling rate deters (p* > 1): the default range is [0, 1]
    instead of an error about a key the user never set."""
    png = tmp_path / "p.png"
    assert run("--nodes", "50", "--cheaters", "5", "--runs", "1", "--tasks-per-node", "20",
               "--cost", "1000", "--slash", "100", "--sweep-p", "--points", "2",
               "--plot", str(png)) == 0
    d = json.loads((tmp_path / "p.json").read_text())
    assert [r["p"] for r in d["points"]] == [0.0, 1.0] and d["p_star"] > 1


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


def test_sweep_writes_its_data_beside_the_plot_and_survives_one_cheater(tmp_path, capsys):
    """Without --json the data lands beside the plot; one cheater gives null standard
    errors (one draw, no spread), which the plot leaves out instead of failing."""
    png = tmp_path / "one.png"
    assert run("--nodes", "50", "--cheaters", "1", "--cheat-rate", "1", "--slash", "100",
               "--runs", "1", "--tasks-per-node", "20", "--sweep-p", "--points", "2",
               "--plot", str(png)) == 0
    d = json.loads((tmp_path / "one.json").read_text())
    assert len(d["points"]) == 2 and png.stat().st_size > 1000
    assert "one.json" in capsys.readouterr().err
