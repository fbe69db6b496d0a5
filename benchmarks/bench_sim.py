"""Simulator throughput: Monte-Carlo and event engines, job events per second (one core).

    .venv/bin/python benchmarks/bench_sim.py            # every scenario below
    .venv/bin/python benchmarks/bench_sim.py --profile  # plus the event engine's hot spots
    .venv/bin/python benchmarks/bench_sim.py --only event-b256 --repeat 3

Wall time is what the engines report; process CPU time is printed beside it because on a
shared machine wall time mostly measures the neighbours (``--repeat`` keeps the best CPU
time of several runs). ``event-b256`` is the event engine with large batches (the
protocol's per-batch costs amortise): the throughput figure. Both event scenarios have
cheaters, disputes and the real ledger. ``--profile`` splits the event engine's own time
between the protocol core (``posp/``), the simulator (``sim/``) and everything else, and
lists the core's hottest functions.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import json
import pstats
import time
from pathlib import Path
from typing import Any

from sim.run import simulate
from sim.scenario import Scenario

MC = Scenario(engine="montecarlo", nodes=10_000, cheaters=1000, cheat_rate=0.5,
              sample_rate=0.05, tasks_per_node=200, runs=20, seed=1)
EVENT = Scenario(engine="event", nodes=20, cheaters=4, cheat_rate=0.5, sample_rate=0.1,
                 tasks_per_node=400, runs=1, batch_size=64, seed=1)
EVENT_BIG = EVENT.replace(batch_size=256, tasks_per_node=1024)
# posp simulate's default batch size: per-batch costs (two Ed25519 operations, a decision
# and a reward event in the ledger) spread over 8 jobs
EVENT_SMALL = EVENT.replace(batch_size=8)
SCENARIOS = {"montecarlo": MC, "event": EVENT, "event-b256": EVENT_BIG,
             "event-b8": EVENT_SMALL}
PROFILE = "/tmp/bench_sim.prof"


def _where(filename: str) -> str:
    for part in ("posp", "sim"):
        if f"/{part}/" in filename:
            return part
    return "other"


Func = tuple[str, int, str]


def _owners(stats: dict[Func, Any], func: Func, share: float, depth: int = 0
            ) -> dict[str, float]:
    """Split a share of ``func``'s own time among the packages whose code called it:
    time in C or in a library (msgpack, hashlib, sqlite3) counts for its caller."""
    part = _where(func[0])
    if part != "other" or depth > 8:
        return {part: share}
    callers = stats[func][4]
    total = sum(c[2] for c in callers.values())
    if not total:
        return {"other": share}
    out: dict[str, float] = {}
    for caller, c in callers.items():
        if caller not in stats:
            continue
        for k, v in _owners(stats, caller, share * c[2] / total, depth + 1).items():
            out[k] = out.get(k, 0.0) + v
    return out


def _profile_report(jobs: int, top: int = 25) -> None:
    st = pstats.Stats(PROFILE)
    stats: dict[Func, Any] = st.stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in stats.values())
    split: dict[str, float] = {}
    for func, v in stats.items():
        for part, t in _owners(stats, func, v[2]).items():
            split[part] = split.get(part, 0.0) + t
    print(f"\nevent-b256 under cProfile: {total:.2f} s, {jobs:,} jobs ({total / jobs * 1e6:.1f} "
          "us/job, profiled); own time by package (C and library calls count for the "
          "package that made them):")
    for part, t in sorted(split.items(), key=lambda kv: -kv[1]):
        print(f"  {part:>6}: {t:6.2f} s  {t / total:6.1%}  {t / jobs * 1e6:6.1f} us/job")
    rows = sorted(((v[2], v[1], k) for k, v in stats.items()
                   if _where(k[0]) == "posp" or _owners(stats, k, 1.0).get("posp", 0) > 0.5),
                  reverse=True)[:top]
    print(f"\nposp/ functions, and C or library calls made mostly from posp/, by own time "
          f"(top {top}):")
    print(f"  {'tottime':>8} {'calls':>9} {'per job':>8}  function")
    for tt, calls, (filename, line, name) in rows:
        i = filename.rfind("/posp/")
        where = f"{filename[i + 1:]}:{line}" if i >= 0 else filename.rsplit("/", 1)[-1]
        print(f"  {tt:8.3f} {calls:9,} {calls / jobs:8.2f}  {where}({name})")
    print()
    st.sort_stats("tottime").print_stats(20)


def reference_ms() -> float:
    """CPU milliseconds of a fixed pure-Python and hashing loop, taken before each run:
    the machine's own speed at that moment. On this shared machine it moves by up to 2x
    within minutes, and every figure moves with it."""
    t = time.process_time()
    d: dict[int, bytes] = {}
    for i in range(100_000):
        d[i & 1023] = hashlib.sha256(i.to_bytes(8, "little")).digest()
    return (time.process_time() - t) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--only", default=",".join(SCENARIOS),
                    help=f"comma-separated subset of {', '.join(SCENARIOS)}")
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs per scenario, taken in turns (a slow spell of the machine "
                    "then hits every scenario, not all the runs of one); best CPU kept")
    ap.add_argument("--json", dest="json_out", default=None, help="write the figures here")
    args = ap.parse_args()
    names = list(dict.fromkeys(args.only.split(",")))  # each once, in the order given
    for name in names:
        if name not in SCENARIOS:
            ap.error(f"unknown scenario {name!r}; choose from {', '.join(SCENARIOS)}")
    runs: dict[str, list[tuple[float, float, int, float]]] = {name: [] for name in names}
    for _ in range(max(args.repeat, 1)):
        for name in names:
            ref = reference_ms()
            cpu = time.process_time()
            rep = simulate(SCENARIOS[name])
            cpu = time.process_time() - cpu
            runs[name].append((cpu, rep.seconds, rep.job_events, ref))
    out = {}
    for name in names:
        s = SCENARIOS[name]
        cpu, wall, jobs, ref = min(runs[name])
        each = [(j / c, r) for c, _w, j, r in runs[name]]
        rates = sorted(x for x, _r in each)
        out[name] = {"nodes": s.nodes, "batch_size": s.batch_size, "job_events": jobs,
                     "best_jobs_per_cpu_s": jobs / cpu, "best_wall_s": wall,
                     "best_reference_ms": ref,
                     "each_run": [{"jobs_per_cpu_s": x, "reference_ms": r} for x, r in each]}
        spread = (f"; all {len(rates)} runs {rates[0]:,.0f}-{rates[-1]:,.0f}"
                  if len(rates) > 1 else "")
        print(f"{name:>10}: {s.nodes:,} nodes, batch {s.batch_size}, {jobs:,} job "
              f"events in {wall:.2f} s = {jobs / wall:,.0f} jobs/s "
              f"(CPU {cpu:.2f} s = {jobs / cpu:,.0f} jobs/s{spread}); machine reference "
              f"{ref:.0f} ms in the best run, {min(r for _x, r in each):.0f}-"
              f"{max(r for _x, r in each):.0f} ms over all", flush=True)
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(out, indent=2))
    if args.profile:
        prof = cProfile.Profile()
        rep = prof.runcall(simulate, EVENT_BIG)
        prof.dump_stats(PROFILE)
        _profile_report(rep.job_events)


if __name__ == "__main__":
    main()
