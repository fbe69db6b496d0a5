"""Verified vs raw Ray, side by side in one run, on the same machine and workload.

* Throughput: 2 node actors run the MLP 512-2048-2048-10 on batches of 64 jobs with
  several batches in flight. Raw = plain Ray actor calls (same workload factory, same
  resources) on the same batches; posp = ``Cluster.map`` at p in {0, 0.01, 0.05, 0.1,
  0.2}, the clock stopping when every job, sampled ones included, is settled in the
  ledger. Raw and posp runs alternate, and each figure is the median of ``--repeats``.
  Reports the ratio posp/raw beside the ideal 1/(1+p) and the coordinator's CPU
  microseconds per job.
* Tiny jobs (well under 20 us of compute): posp's batching vs one Ray call per job.

    .venv/bin/python benchmarks/bench_cluster.py --json out/bench_cluster.json \
        --plot docs/bench_cluster.png
"""

from __future__ import annotations

import argparse
import json
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


class Tiny:
    """A workload of about 1-2 us of numpy compute per job."""

    def __call__(self):
        def run(xs):
            return [np.asarray(x, np.float32) * 2.0 + 1.0 for x in xs]

        return run


LAST_RAW_CPU = [0.0]


def raw_throughput(actors, batches, in_flight: int) -> float:
    """Jobs/s of plain actor calls; the driver's CPU seconds land in LAST_RAW_CPU."""
    c0 = time.process_time()
    t0 = time.perf_counter()
    pending = []
    queue = list(batches)
    n_jobs = sum(len(b) for b in batches)
    i = 0
    while queue or pending:
        while queue and len(pending) < in_flight * len(actors):
            pending.append(actors[i % len(actors)].compute.remote(queue.pop(0)))
            i += 1
        done, pending = ray.wait(pending, num_returns=1)
        ray.get(done)
    LAST_RAW_CPU[0] = time.process_time() - c0
    return n_jobs / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=60, help="batches of 64 per measurement")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rates", default="0,0.01,0.05,0.1,0.2")
    ap.add_argument("--tiny-jobs", type=int, default=3000)
    ap.add_argument("--json", dest="json_out", default=None)
    ap.add_argument("--plot", default=None)
    args = ap.parse_args(argv)
    rates = [float(x) for x in args.rates.split(",")]
    batch = 64
    in_flight = 3
    w = get("mlp")
    inputs = w.inputs(11, args.batches * batch)
    batches = [inputs[i:i + batch] for i in range(0, len(inputs), batch)]
    ray.init(num_cpus=16, include_dashboard=False, log_to_driver=False, configure_logging=False)
    tmp = Path(tempfile.mkdtemp(prefix="posp-bench-"))
    out: dict = {"workload": "mlp 512-2048-2048-10", "batch": batch, "nodes": 2,
                 "jobs_per_run": len(inputs), "in_flight_per_node": in_flight, "rates": {}}
    raws = [RawNode.options(num_cpus=1).remote(WorkloadFactory("mlp"), 1) for _ in range(2)]
    ray.get([a.compute.remote(batches[0][:2]) for a in raws])  # warm
    results: dict[float, dict[str, list[float]]] = {p: {"raw": [], "posp": [], "cpu": []}
                                                    for p in rates}
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
        for rep in range(args.repeats):
            for p in rates:
                results[p]["raw"].append(raw_throughput(raws, batches, in_flight))
                raw_cpu = LAST_RAW_CPU[0]
                c = clusters[p]
                cpu0, t0 = time.process_time(), time.perf_counter()
                c.map(inputs)
                dt = time.perf_counter() - t0
                results[p]["posp"].append(len(inputs) / dt)
                # the driver process's CPU (Ray's threads included) beyond what raw Ray
                # spent on the same batches: what posp's coordinator adds per job
                extra = (time.process_time() - cpu0) - raw_cpu
                results[p]["cpu"].append(extra / len(inputs) * 1e6)
                print(f"rep {rep} p={p:<5} raw {results[p]['raw'][-1]:8.0f} jobs/s  "
                      f"posp {results[p]['posp'][-1]:8.0f} jobs/s  "
                      f"ratio {results[p]['posp'][-1] / results[p]['raw'][-1]:.3f}  "
                      f"coord {results[p]['cpu'][-1]:.1f} us/job", flush=True)
    finally:
        for c in clusters.values():
            c.close()
    for p in rates:
        raw = statistics.median(results[p]["raw"])
        posp = statistics.median(results[p]["posp"])
        ratios = [a / b for a, b in zip(results[p]["posp"], results[p]["raw"], strict=True)]
        out["rates"][str(p)] = {
            "raw_jobs_per_s": raw, "posp_jobs_per_s": posp,
            "ratio": statistics.median(ratios), "ratios": ratios,
            "ideal": 1 / (1 + p), "of_ideal": statistics.median(ratios) * (1 + p),
            "coordinator_us_per_job": statistics.median(results[p]["cpu"]),
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
    print(f"{'p':>6} {'raw jobs/s':>11} {'posp jobs/s':>12} {'ratio':>7} {'ideal':>7} "
          f"{'of ideal':>9} {'coord us/job':>13}")
    for p, r in out["rates"].items():
        print(f"{p:>6} {r['raw_jobs_per_s']:11.0f} {r['posp_jobs_per_s']:12.0f} "
              f"{r['ratio']:7.3f} {r['ideal']:7.3f} {r['of_ideal']:9.3f} "
              f"{r['coordinator_us_per_job']:13.1f}")
    t = out["tiny"]
    print(f"tiny jobs: one Ray call per job {t['ray_call_per_job_jobs_per_s']:.0f} jobs/s, "
          f"posp batched (p=0.05, verified) {t['posp_batched_jobs_per_s']:.0f} jobs/s: "
          f"{t['speedup']:.1f}x")
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(out, indent=2) + "\n")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        ps = [float(p) for p in out["rates"]]
        fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=110)
        grid = np.linspace(0, max(ps), 100)
        ax.plot(grid, 1 / (1 + grid), "k--", label="ideal 1/(1+p)")
        ax.plot(ps, [out["rates"][k]["ratio"] for k in out["rates"]], "o-",
                label="posp / raw Ray (measured)")
        ax.set_xlabel("sampling rate p")
        ax.set_ylabel("throughput ratio")
        ax.set_title("verified vs raw Ray, MLP, 2 nodes, batches of 64")
        ax.set_ylim(0.6, 1.05)
        ax.legend()
        fig.tight_layout()
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
