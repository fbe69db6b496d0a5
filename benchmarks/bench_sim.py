"""Simulator throughput: Monte-Carlo and event engines, job events per second (one core).

    .venv/bin/python benchmarks/bench_sim.py            # every scenario below
    .venv/bin/python benchmarks/bench_sim.py --profile  # plus the event engine's hot spots

Wall time is what the engines report; process CPU time is printed beside it because on a
shared machine wall time mostly measures the neighbours. ``event-b256`` is the event
engine with large batches (the protocol's per-batch costs amortise): the throughput
figure. Both event scenarios have cheaters, disputes and the real ledger.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

from sim.run import simulate
from sim.scenario import Scenario

MC = Scenario(engine="montecarlo", nodes=10_000, cheaters=1000, cheat_rate=0.5,
              sample_rate=0.05, tasks_per_node=200, runs=20, seed=1)
EVENT = Scenario(engine="event", nodes=20, cheaters=4, cheat_rate=0.5, sample_rate=0.1,
                 tasks_per_node=400, runs=1, batch_size=64, seed=1)
EVENT_BIG = EVENT.replace(batch_size=256, tasks_per_node=1024)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    for name, s in (("montecarlo", MC), ("event", EVENT), ("event-b256", EVENT_BIG)):
        cpu = time.process_time()
        rep = simulate(s)
        cpu = time.process_time() - cpu
        print(f"{name:>10}: {s.nodes:,} nodes, batch {s.batch_size}, {rep.job_events:,} job "
              f"events in {rep.seconds:.2f} s = {rep.job_events / rep.seconds:,.0f} jobs/s "
              f"(CPU {cpu:.2f} s = {rep.job_events / cpu:,.0f} jobs/s)")
    if args.profile:
        cProfile.run("simulate(EVENT_BIG)", "/tmp/bench_sim.prof")
        pstats.Stats("/tmp/bench_sim.prof").sort_stats("tottime").print_stats(20)


if __name__ == "__main__":
    main()
