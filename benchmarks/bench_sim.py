"""Simulator throughput: Monte-Carlo and event engines, job events per second (one core).

    .venv/bin/python benchmarks/bench_sim.py            # both engines
    .venv/bin/python benchmarks/bench_sim.py --profile  # plus the event engine's hot spots
"""

from __future__ import annotations

import argparse
import cProfile
import pstats

from sim.run import simulate
from sim.scenario import Scenario

MC = Scenario(engine="montecarlo", nodes=10_000, cheaters=1000, cheat_rate=0.5,
              sample_rate=0.05, tasks_per_node=200, runs=20, seed=1)
EVENT = Scenario(engine="event", nodes=20, cheaters=4, cheat_rate=0.5, sample_rate=0.1,
                 tasks_per_node=400, runs=1, batch_size=64, seed=1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    for s in (MC, EVENT):
        rep = simulate(s)
        print(f"{s.engine:>10}: {s.nodes:,} nodes, {rep.job_events:,} job events in "
              f"{rep.seconds:.2f} s = {rep.job_events / rep.seconds:,.0f} jobs/s")
    if args.profile:
        cProfile.run("simulate(EVENT)", "/tmp/bench_sim.prof")
        pstats.Stats("/tmp/bench_sim.prof").sort_stats("tottime").print_stats(15)


if __name__ == "__main__":
    main()
