"""The full-stack Ray engine: refusals, the cheating behaviour, one small run on Ray."""

from __future__ import annotations

import numpy as np
import pytest

from posp.cli import main
from posp.errors import ConfigError
from posp.node import Job
from sim.rayengine import HashCheat, ToyWorkload, cheat_decision, honest_output
from sim.run import simulate
from sim.scenario import Scenario

SMALL = Scenario(engine="ray", nodes=5, cheaters=2, cheat_rate=0.5, sample_rate=0.2,
                 tasks_per_node=40, runs=1, batch_size=8, seed=3)


@pytest.mark.parametrize("changes,key", [
    ({"collusion": 0.4}, "collusion"),
    ({"strategy": "adaptive"}, "strategy"),
    ({"strategy": "sybil"}, "strategy"),
    ({"honest_strategy": "crash_prone", "crash_rate": 0.01}, "crash_rate"),
    ({"nodes": 100, "cheaters": 2}, "nodes"),
])
def test_refuses_what_it_cannot_model(changes, key):
    # refused before Ray is touched
    with pytest.raises(ConfigError) as exc:
        simulate(SMALL.replace(**changes))
    assert exc.value.key == key


def test_cli_names_the_collusion_flag(capsys):
    rc = main(["simulate", "--quiet", "--engine", "ray", "--nodes", "10", "--cheaters", "2",
               "--collusion", "0.3"])
    assert rc == 2
    assert "--collusion" in capsys.readouterr().err


def test_hash_cheat_is_blind_recomputable_and_distinct():
    salt = b"s" * 32
    beh = HashCheat(0.3, salt, guess=0.0)
    rng = np.random.default_rng(0)
    jobs = [Job(rng.bytes(16), i) for i in range(3000)]
    out = beh.outputs(jobs, ToyWorkload()())
    skipped = [cheat_decision(salt, j.job_id, 0.3, 0.0)[0] for j in jobs]
    assert 0.27 < np.mean(skipped) < 0.33
    for j, o, sk in zip(jobs, out, skipped, strict=True):
        assert np.array_equal(o, honest_output(j.input)) != sk
    wrong = {o.tobytes() for o, sk in zip(out, skipped, strict=True) if sk}
    assert len(wrong) == sum(skipped)  # wrong outputs never agree with each other
    other = HashCheat(0.3, b"t" * 32).outputs(jobs, ToyWorkload()())
    assert not wrong & {o.tobytes() for o in other}
    lucky = HashCheat(1.0, salt, guess=1.0).outputs(jobs[:50], ToyWorkload()())
    assert all(np.array_equal(o, honest_output(j.input)) for j, o in zip(jobs[:50], lucky, strict=True))


@pytest.mark.ray
def test_small_run_on_ray(ray_session):
    rep = simulate(SMALL)
    obs = rep.observations
    m = rep.metrics
    assert (obs.jobs == SMALL.tasks_per_node).all()
    assert obs.disputes > 0 and obs.disputes_honest_slashed == 0
    assert m["false_slash_rate"].measured == 0.0
    # q = 0.5: both caught (each missed with probability about 1e-4 over 40 jobs: one
    # caught is the check; an honest node is never)
    assert obs.first_catch[:SMALL.cheaters].max() >= 1
    assert (obs.first_catch[SMALL.cheaters:] == 0).all()  # honest nodes never slashed
    # an honest node is paid R for every job and computes every one (read from the
    # ledger; with 2 cheaters among 5 every dispute has an honest arbiter majority)
    assert m["honest_profit_per_job"].measured == SMALL.reward - SMALL.cost
    assert m["cheater_profit_per_job"].measured < 0
    assert obs.first_skipped.sum() > 0 and obs.first_jobs.sum() > 0
    assert obs.extra["slashes"] >= int((obs.first_catch > 0).sum())
    d = rep.to_json()
    assert d["run"]["engine"] == "ray"
    for name in ("detection_within_n", "mean_tasks_to_detection", "false_slash_rate",
                 "cheater_profit_per_job"):
        assert set(d["metrics"][name]) == {"measured", "theory", "stderr", "agrees",
                                           "compared"}
