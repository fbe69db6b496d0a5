"""Verified vs raw Ray, side by side in one run, on the same machine and workload.

* Throughput: 2 node actors run the MLP 512-2048-2048-10 on batches of 64 jobs with
  several batches in flight. Raw = plain Ray actor calls (same workload factory, same
  resources) on the same batches; posp = ``Cluster.map`` at p in {0, 0.01, 0.05, 0.1,
  0.2}, the clock stopping when every job, sampled ones included, is settled in the
  ledger. Raw and posp runs alternate, and each figure is the median of ``--repeats``.
  Reports the ratio posp/raw beside the ideal 1/(1+p) and the coordinator's CPU
  microseconds per job.
* Two raw baselines. ``raw``: each batch sent as it is, a list of per-job arrays (what
  the issue's target is stated against). ``raw_stacked``: each batch stacked into one
  array each way, the best plain Ray can do. posp sends same-shape inputs and outputs
  stacked, which saves Ray about 1-2 ms of driver CPU per batch against the list form;
  ``ratio_vs_stacked`` shows posp's cost with that transport gain taken out.
* What a ``map`` call costs once rather than per job, reported apart (``Cluster.last_map``):
  ``startup_s`` (to the first batch sent) and ``tail_s`` (from the last first execution's
  result to the return: the re-executions of the last sampled tasks, the last commit).
  The default run (200 batches, 12,800 jobs a call) makes them a few per cent; short runs
  (``--batches 60``) mostly measure them.
* Each timed run starts from a full garbage collection (raw and posp alike), so that a
  generation-2 collection of the whole heap (0.2-0.3 s here: torch and Ray are loaded)
  does not land on whichever run happens to cross the threshold; the collections that
  still fall inside timed runs are reported (``gc2_s``).
* Tiny jobs (well under 20 us of compute): posp's batching vs one Ray call per job.
* ``--profile P``: no throughput runs; one ``map`` at sampling rate P under cProfile with a
  thread-CPU clock, the driver's main-thread CPU per job split by phase (Ray submit, Ray
  fetch, the protocol's batch check, the group commit, input digests, ...). The profiler
  inflates Python code more than Ray's C++, so read the shares, not the totals.
* ``--pin`` (Linux, a diagnostic): every node actor on CPU 0, the driver on the other
  CPUs, to see what the ratio is when the coordinator does not take CPU from the nodes.
  Ray's own daemons still float over all CPUs, so this is not a clean separation.

    .venv/bin/python benchmarks/bench_cluster.py --json out/bench_cluster.json \
        --plot docs/bench_cluster.png
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import gc
import json
import os
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import ray

from posp.compare import RelativeL2
from posp.protocol import ProtocolParams
from posp.runtime import Cluster, NodeSpec
from workloads.nodes import WorkloadFactory
from workloads.registry import get


@ray.remote
class RawNode:
    """The baseline: the same workload factory, no protocol."""

    def __init__(self, factory, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        self.run = factory()

    def compute(self, inputs):
        return self.run(inputs)

    def cpu_seconds(self) -> float:
        return time.process_time()

    def compute_stacked(self, stacked):
        """The best plain Ray can do with a batch: one stacked array each way."""
        return np.stack(self.run(list(stacked)))


class Tiny:
    """A workload of about 1-2 us of numpy compute per job."""

    def __call__(self):
        def run(xs):
            return [np.asarray(x, np.float32) * 2.0 + 1.0 for x in xs]

        return run


LAST_RAW_CPU = [0.0]  # the driver's CPU seconds in the last raw run
LAST_RAW_NODES_CPU = [0.0]  # the node actors' CPU seconds in the last raw run
GC2_S = [0.0]  # generation-2 collection time since the last reset
_GC2_START = [0.0]


def _gc2_clock(phase: str, info: dict[str, int]) -> None:
    if info.get("generation") != 2:
        return
    if phase == "start":
        _GC2_START[0] = time.perf_counter()
    else:
        GC2_S[0] += time.perf_counter() - _GC2_START[0]


def fresh_heap() -> None:
    """A full collection before a timed run, and the generation-2 clock reset."""
    gc.collect()
    GC2_S[0] = 0.0


def _pin_all_threads(pid: int, cpus: set[int]) -> None:
    """sched_setaffinity on a pid moves only the thread with that id: move every thread."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError):  # a thread that ended meanwhile
            os.sched_setaffinity(int(tid), cpus)


def pin_processes(actors: list) -> dict[str, list[int]]:
    """``--pin``: this run's node actors (posp's and the raw baseline's), every thread, on
    CPU 0; this driver, every thread, on the other CPUs: the coordinator's work then does
    not take CPU from the nodes (as when it runs on its own machine), but the two nodes
    of a run share one CPU. Linux only; Ray's own daemons still float over all CPUs."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise SystemExit("--pin needs at least 2 CPUs")
    pids = ray.get([a.__ray_call__.remote(lambda self: os.getpid()) for a in actors])
    for pid in pids:
        _pin_all_threads(pid, {cpus[0]})
    _pin_all_threads(os.getpid(), set(cpus[1:]))
    return {"node_cpus": [cpus[0]], "driver_cpus": cpus[1:], "node_pids": pids}


# --profile: where the driver's main thread spends its CPU in one map call, by phase
# (inclusive times of these functions; the rest of map's time is "other")
PHASES = (
    ("Ray: submit a batch (serialise, send)", "ray/actor.py", "remote"),
    ("Ray: fetch a result (deserialise)", "ray/_private/worker.py", "get"),
    ("Ray: wait (blocked, ~0 CPU)", "ray/_private/worker.py", "wait"),
    ("posp: check a batch, sample, verdicts (Protocol.on_batch)", "posp/protocol.py",
     "on_batch"),
    ("posp: group commit to the ledger (Protocol.flush)", "posp/protocol.py", "flush"),
    ("posp: register tasks, digest inputs (Scheduler.add_tasks)", "posp/scheduler.py",
     "add_tasks"),
    ("posp: form batches (Scheduler.next_batch)", "posp/scheduler.py", "next_batch"),
    ("posp: stack inputs (pack_values)", "posp/node.py", "pack_values"),
    ("posp: hand results over (Cluster._settled)", "posp/runtime/cluster.py", "_settled"),
)


def profile_map(cluster, inputs, path: str) -> dict[str, float]:
    """One ``map`` under cProfile with a thread-CPU clock: microseconds of the driver's
    main thread per job, by phase. The profiler slows Python code more than C code, so
    the shares lean towards posp's (Python) phases; the total is printed beside the
    unprofiled one."""
    fresh_heap()
    t0 = time.thread_time()
    cluster.map(inputs)
    plain = time.thread_time() - t0
    fresh_heap()
    prof = cProfile.Profile(time.thread_time)
    prof.enable()
    cluster.map(inputs)
    prof.disable()
    prof.dump_stats(path)
    stats = pstats.Stats(path).stats  # type: ignore[attr-defined]
    n = len(inputs)

    def incl(file: str, name: str) -> float:
        return sum(v[3] for (f, _l, fn), v in stats.items() if f.endswith(file) and fn == name)

    total = incl("posp/runtime/cluster.py", "map")
    out = {label: incl(f, fn) / n * 1e6 for label, f, fn in PHASES}
    out["other (map's loop, wait bookkeeping, ...)"] = (total / n * 1e6) - sum(out.values())
    out["total, profiled"] = total / n * 1e6
    out["total, same call unprofiled"] = plain / n * 1e6
    return out


def raw_throughput(actors, batches, in_flight: int, *, stacked: bool = False) -> float:
    """Jobs/s of plain actor calls; the driver's CPU seconds land in LAST_RAW_CPU.

    ``stacked``: each batch is sent as one stacked array (stacked in the timed loop, as
    posp stacks) and comes back as one, rather than as a list of per-job arrays."""
    n0 = sum(ray.get([a.cpu_seconds.remote() for a in actors]))
    c0 = time.process_time()
    t0 = time.perf_counter()
    pending = []
    queue = list(batches)
    n_jobs = sum(len(b) for b in batches)
    i = 0
    while queue or pending:
        while queue and len(pending) < in_flight * len(actors):
            a = actors[i % len(actors)]
            b = queue.pop(0)
            pending.append(a.compute_stacked.remote(np.stack(b)) if stacked
                           else a.compute.remote(b))
            i += 1
        done, pending = ray.wait(pending, num_returns=1)
        ray.get(done)
    dt = time.perf_counter() - t0
    LAST_RAW_CPU[0] = time.process_time() - c0
    LAST_RAW_NODES_CPU[0] = sum(ray.get([a.cpu_seconds.remote() for a in actors])) - n0
    return n_jobs / dt


def plot(out: dict, path: str) -> None:
    """Ratio against p: medians with the spread of the repeats, beside the ideal."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = out["rates"]
    ps = np.array([float(p) for p in rates])
    fig, ax = plt.subplots(figsize=(6.2, 3.9), dpi=110)
    grid = np.linspace(0, ps.max(), 100)
    ax.plot(grid, 1 / (1 + grid), "k--", label="ideal 1/(1+p)")
    for key, label, fmt in (("ratios", "vs raw Ray, list batches (wall)", "o-"),
                            ("ratios_vs_stacked", "vs raw Ray, stacked batches (wall)", "s-")):
        med = np.array([np.median(r[key]) for r in rates.values()])
        lo = np.array([min(r[key]) for r in rates.values()])
        hi = np.array([max(r[key]) for r in rates.values()])
        ax.errorbar(ps, med, yerr=[med - lo, hi - med], fmt=fmt, capsize=3, label=label)
    ax.plot(ps, [r["cpu_ratio"] for r in rates.values()], "^:",
            label="vs raw Ray, list batches (CPU per job)")
    ax.set_xlabel("sampling rate p")
    ax.set_ylabel("posp / raw throughput")
    ax.set_title("verified vs raw Ray: MLP, 2 nodes, batches of 64\n"
                 "(median and min-max of the repeats)", fontsize=10)
    ax.set_ylim(0.5, 1.12)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=100, help="batches of 64 per measurement")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rates", default="0,0.01,0.05,0.1,0.2")
    ap.add_argument("--tiny-jobs", type=int, default=3000)
    ap.add_argument("--json", dest="json_out", default=None)
    ap.add_argument("--profile", type=float, metavar="P", default=None,
                    help="only profile one posp map call at sampling rate P: the driver's "
                    "CPU per job by phase (writes out/bench/cluster_profile.prof)")
    ap.add_argument("--pin", action="store_true",
                    help="node actors on CPU 0, the driver on the others (a diagnostic: "
                    "what the ratio is when the coordinator does not share the nodes' CPU)")
    ap.add_argument("--plot", default=None)
    ap.add_argument("--replot", metavar="JSON", default=None,
                    help="draw --plot from an earlier --json output, without measuring")
    args = ap.parse_args(argv)
    if args.replot:
        plot(json.loads(Path(args.replot).read_text()), args.plot or "docs/bench_cluster.png")
        return 0
    rates = [float(x) for x in args.rates.split(",")]
    if args.profile is not None:
        rates = [args.profile]
    batch = 64
    in_flight = 3
    w = get("mlp")
    inputs = w.inputs(11, args.batches * batch)
    n_jobs = len(inputs)
    batches = [inputs[i:i + batch] for i in range(0, len(inputs), batch)]
    ray.init(num_cpus=16, include_dashboard=False, log_to_driver=False, configure_logging=False)
    tmp = Path(tempfile.mkdtemp(prefix="posp-bench-"))
    out: dict = {"workload": "mlp 512-2048-2048-10", "batch": batch, "nodes": 2,
                 "jobs_per_run": len(inputs), "in_flight_per_node": in_flight, "rates": {}}
    raws = [RawNode.options(num_cpus=1).remote(WorkloadFactory("mlp"), 1) for _ in range(2)]
    ray.get([a.compute.remote(batches[0][:2]) for a in raws])  # warm
    keys = ("raw", "raw_stacked", "posp", "cpu", "cpu_raw", "cpu_raw_stacked", "cpu_posp",
            "drv_raw", "nodes_raw", "drv_raw_stacked", "nodes_raw_stacked", "drv_posp",
            "nodes_posp", "tail", "startup", "decoys", "gc2_raw", "gc2_posp")
    results: dict[float, dict[str, list[float]]] = {p: {k: [] for k in keys} for p in rates}
    gc.callbacks.append(_gc2_clock)
    clusters = {}
    try:
        for p in rates:
            clusters[p] = Cluster(
                nodes=[NodeSpec(WorkloadFactory("mlp")) for _ in range(2)],
                sample_rate=p, ledger=tmp / f"bench-{p}.db", batch_size=batch,
                in_flight=in_flight, comparator=w.comparator,
                params=ProtocolParams(), seed=1,
            )
            clusters[p].map(inputs[:batch])  # warm the node actors
        if args.profile is not None:
            Path("out/bench").mkdir(parents=True, exist_ok=True)
            split = profile_map(clusters[args.profile], inputs, "out/bench/cluster_profile.prof")
            print(f"driver main thread, CPU us per job, one map of {n_jobs} jobs at "
                  f"p = {args.profile}:")
            for label, us in split.items():
                print(f"  {us:8.1f}  {label}")
            if args.json_out:
                Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
                Path(args.json_out).write_text(json.dumps(
                    {"p": args.profile, "jobs": n_jobs, "us_per_job": split}, indent=2))
            return 0
        if args.pin:
            out["pinned"] = pin_processes(
                raws + [n.actor for c in clusters.values() for n in c.nodes.values()])
            print(f"pinned {len(out['pinned']['node_pids'])} node actors to CPU "
                  f"{out['pinned']['node_cpus']}, the driver to {out['pinned']['driver_cpus']}")
        for rep in range(args.repeats):
            for p in rates:
                fresh_heap()
                results[p]["raw"].append(raw_throughput(raws, batches, in_flight))
                results[p]["gc2_raw"].append(GC2_S[0])
                raw_cpu = LAST_RAW_CPU[0]
                results[p]["cpu_raw"].append((raw_cpu + LAST_RAW_NODES_CPU[0]) / n_jobs * 1e6)
                results[p]["drv_raw"].append(raw_cpu / n_jobs * 1e6)
                results[p]["nodes_raw"].append(LAST_RAW_NODES_CPU[0] / n_jobs * 1e6)
                fresh_heap()
                results[p]["raw_stacked"].append(
                    raw_throughput(raws, batches, in_flight, stacked=True))
                results[p]["cpu_raw_stacked"].append(
                    (LAST_RAW_CPU[0] + LAST_RAW_NODES_CPU[0]) / n_jobs * 1e6)
                results[p]["drv_raw_stacked"].append(LAST_RAW_CPU[0] / n_jobs * 1e6)
                results[p]["nodes_raw_stacked"].append(LAST_RAW_NODES_CPU[0] / n_jobs * 1e6)
                c = clusters[p]
                actors = [n.actor for n in c.nodes.values()]
                fresh_heap()
                nodes0 = sum(ray.get([a.cpu_seconds.remote() for a in actors]))
                cpu0, t0 = time.process_time(), time.perf_counter()
                c.map(inputs)
                dt = time.perf_counter() - t0
                drv = time.process_time() - cpu0
                nodes_cpu = sum(ray.get([a.cpu_seconds.remote() for a in actors])) - nodes0
                results[p]["cpu_posp"].append((drv + nodes_cpu) / n_jobs * 1e6)
                results[p]["drv_posp"].append(drv / n_jobs * 1e6)
                results[p]["nodes_posp"].append(nodes_cpu / n_jobs * 1e6)
                results[p]["gc2_posp"].append(GC2_S[0])
                results[p]["posp"].append(len(inputs) / dt)
                stats = c.last_map
                assert stats is not None
                results[p]["tail"].append(stats.tail_s)
                results[p]["startup"].append(stats.startup_s)
                results[p]["decoys"].append(stats.decoys)
                # the driver process's CPU (Ray's threads included) beyond what raw Ray
                # spent on the same batches: what posp's coordinator adds per job
                extra = drv - raw_cpu
                results[p]["cpu"].append(extra / len(inputs) * 1e6)
                print(f"rep {rep} p={p:<5} raw {results[p]['raw'][-1]:8.0f} jobs/s  "
                      f"posp {results[p]['posp'][-1]:8.0f} jobs/s  "
                      f"ratio {results[p]['posp'][-1] / results[p]['raw'][-1]:.3f}  "
                      f"(vs stacked raw {results[p]['posp'][-1] / results[p]['raw_stacked'][-1]:.3f})  "
                      f"coord {results[p]['cpu'][-1]:.1f} us/job  "
                      f"cpu/job raw {results[p]['cpu_raw'][-1]:.0f} "
                      f"stacked {results[p]['cpu_raw_stacked'][-1]:.0f} "
                      f"posp {results[p]['cpu_posp'][-1]:.0f} us  "
                      f"tail {stats.tail_s * 1e3:.0f} ms  start {stats.startup_s * 1e3:.0f} ms  "
                      f"gc2 {GC2_S[0] * 1e3:.0f} ms", flush=True)
    finally:
        gc.callbacks.remove(_gc2_clock)
        for c in clusters.values():
            c.close()
    for p in rates:
        raw = statistics.median(results[p]["raw"])
        posp = statistics.median(results[p]["posp"])
        ratios = [a / b for a, b in zip(results[p]["posp"], results[p]["raw"], strict=True)]
        ratios_st = [a / b for a, b in zip(results[p]["posp"], results[p]["raw_stacked"],
                                           strict=True)]
        out["rates"][str(p)] = {
            "raw_jobs_per_s": raw, "posp_jobs_per_s": posp,
            "raw_stacked_jobs_per_s": statistics.median(results[p]["raw_stacked"]),
            "ratio": statistics.median(ratios), "ratios": ratios,
            # against plain Ray sending each batch as one stacked array (as posp does)
            "ratio_vs_stacked": statistics.median(ratios_st), "ratios_vs_stacked": ratios_st,
            "ideal": 1 / (1 + p), "of_ideal": statistics.median(ratios) * (1 + p),
            "coordinator_us_per_job": statistics.median(results[p]["cpu"]),
            # CPU seconds per job, driver process plus node actors (Ray's own daemons not
            # counted), and the throughput ratio they imply on a saturated machine: less
            # disturbed by neighbours than wall time
            "cpu_us_per_job": {k: statistics.median(results[p][f"cpu_{k}"])
                               for k in ("raw", "raw_stacked", "posp")},
            # the same, split: the driver process and the node actors
            "driver_us_per_job": {k: statistics.median(results[p][f"drv_{k}"])
                                  for k in ("raw", "raw_stacked", "posp")},
            "nodes_us_per_job": {k: statistics.median(results[p][f"nodes_{k}"])
                                 for k in ("raw", "raw_stacked", "posp")},
            "cpu_ratio": statistics.median(
                [a / b for a, b in zip(results[p]["cpu_raw"], results[p]["cpu_posp"],
                                       strict=True)]),
            "cpu_ratio_vs_stacked": statistics.median(
                [a / b for a, b in zip(results[p]["cpu_raw_stacked"], results[p]["cpu_posp"],
                                       strict=True)]),
            # once per map call, not per job (medians over the repeats)
            "tail_s_per_call": statistics.median(results[p]["tail"]),
            "startup_s_per_call": statistics.median(results[p]["startup"]),
            "decoys_per_call": statistics.median(results[p]["decoys"]),
            "posp_s_per_call": len(inputs) / posp,
            "gc2_s": {"raw": sum(results[p]["gc2_raw"]), "posp": sum(results[p]["gc2_posp"])},
        }
    # tiny jobs: batching vs one Ray call per job
    tiny_inputs = [np.full(4, i, np.float32) for i in range(args.tiny_jobs)]
    tiny_raw = [RawNode.options(num_cpus=1).remote(Tiny(), 1) for _ in range(2)]
    ray.get([a.compute.remote(tiny_inputs[:1]) for a in tiny_raw])
    per_call = raw_throughput(tiny_raw, [[x] for x in tiny_inputs], 16)
    with Cluster(nodes=[NodeSpec(Tiny()) for _ in range(2)], sample_rate=0.05,
                 ledger=tmp / "tiny.db", batch_size=512, in_flight=2,
                 comparator=RelativeL2(1e-6), seed=2) as c:
        c.map(tiny_inputs[:64])
        t0 = time.perf_counter()
        c.map(tiny_inputs)
        tiny_posp = len(tiny_inputs) / (time.perf_counter() - t0)
    out["tiny"] = {"jobs": len(tiny_inputs), "ray_call_per_job_jobs_per_s": per_call,
                   "posp_batched_jobs_per_s": tiny_posp, "speedup": tiny_posp / per_call,
                   "posp_sample_rate": 0.05}
    ray.shutdown()
    print()
    print(f"{'p':>6} {'raw jobs/s':>11} {'posp jobs/s':>12} {'ratio':>7} {'vs stacked':>11} "
          f"{'cpu ratio':>10} {'vs stacked':>11} {'ideal':>7} {'of ideal':>9} "
          f"{'coord us/job':>13} {'tail ms/call':>13} {'start ms/call':>14}")
    for p, r in out["rates"].items():
        print(f"{p:>6} {r['raw_jobs_per_s']:11.0f} {r['posp_jobs_per_s']:12.0f} "
              f"{r['ratio']:7.3f} {r['ratio_vs_stacked']:11.3f} {r['cpu_ratio']:10.3f} "
              f"{r['cpu_ratio_vs_stacked']:11.3f} {r['ideal']:7.3f} "
              f"{r['of_ideal']:9.3f} "
              f"{r['coordinator_us_per_job']:13.1f} {r['tail_s_per_call'] * 1e3:13.0f} "
              f"{r['startup_s_per_call'] * 1e3:14.0f}")
    t = out["tiny"]
    print(f"tiny jobs: one Ray call per job {t['ray_call_per_job_jobs_per_s']:.0f} jobs/s, "
          f"posp batched (p=0.05, verified) {t['posp_batched_jobs_per_s']:.0f} jobs/s: "
          f"{t['speedup']:.1f}x")
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(out, indent=2) + "\n")
    if args.plot:
        plot(out, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
