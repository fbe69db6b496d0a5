"""The coordinator's own per-job cost, in one process, without Ray.

Where the time goes when posp drives a cluster: submitting tasks (input digests),
composing batches, checking a node's signed batch and deciding the sample (on_batch),
and the group commit (flush). Nodes here are in-process NodeCore objects running a tiny
512 -> 10 matmul, so their figure is mostly posp's node-side work (digests, receipts,
one signature per batch); ``pickle`` is a batch result's round trip, what crossing Ray
adds on top of raw Ray's own transfer of the outputs. ``per_sampled_task_us`` is what one
sampled task adds on the coordinator: whole rounds through :class:`LocalDriver` (an
in-memory ledger, node time subtracted) at p = 1 against p = 0. Each phase is timed ``--repeats``
times on fresh state and the fastest run is reported (the machine is shared: the minimum
is the figure least disturbed by neighbours).

    .venv/bin/python benchmarks/bench_coordinator.py [--jobs 3840] [--p 0.05] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from posp.compare import RelativeL2
from posp.identity import NodeKey
from posp.ledger import Ledger
from posp.node import NodeCore
from posp.protocol import Protocol
from posp.receipts import capture_profile
from posp.sampling import UniformPolicy
from posp.scheduler import LocalDriver, Scheduler


def one_run(args: argparse.Namespace, xs: list[np.ndarray], nodes: list[NodeCore],
            d: Path, run: int) -> dict[str, float]:
    led = Ledger(d / f"c{run}.db")
    proto = Protocol(ledger=led, comparator=RelativeL2(1e-4), policy=UniformPolicy(args.p))
    for n in nodes:
        proto.register(n.public, n.profile_digest)
    proto.open_epoch()
    proto.flush()
    sched = Scheduler(proto, batch_size=args.batch)
    out = {}
    clock = time.perf_counter
    t = clock()
    sched.add_tasks(xs)
    out["add_task_us"] = clock() - t
    batches = []
    t = clock()
    while sched.has_fresh():
        for n in nodes:
            b = sched.next_batch(n.public, force=True)
            if b:
                batches.append((n, b))
    out["next_batch_us"] = clock() - t
    t = clock()
    results = [(n, n.run_batch(b.jobs)) for n, b in batches]
    out["node_run_batch_us"] = clock() - t
    t = clock()
    wire = [(n, pickle.loads(pickle.dumps(r, protocol=5))) for n, r in results]
    out["pickle_us"] = clock() - t
    t = clock()
    for n, r in wire:
        proto.on_batch(n.public, r.batch, r.receipts, r.outputs)
    out["on_batch_us"] = clock() - t
    t = clock()
    proto.flush()
    out["flush_us"] = clock() - t
    led.close()
    return {k: v / len(xs) * 1e6 for k, v in out.items()}


class _TimedNode(NodeCore):
    """A node that adds the time it spends to ``spent[0]`` (subtracted from the total)."""

    spent = [0.0]

    def run_batch(self, jobs):  # type: ignore[no-untyped-def]
        t = time.perf_counter()
        try:
            return super().run_batch(jobs)
        finally:
            self.spent[0] += time.perf_counter() - t


def per_task_us(p: float, xs: list[np.ndarray], runner, batch: int) -> float:  # type: ignore[no-untyped-def]
    """Coordinator microseconds per task, whole rounds through LocalDriver, nodes excluded."""
    import random

    nodes = [_TimedNode(NodeKey.from_seed(bytes([i + 1]) * 32),
                        capture_profile(threads=1, batched=True), runner) for i in range(2)]
    led = Ledger(":memory:")
    proto = Protocol(ledger=led, comparator=RelativeL2(1e-4), policy=UniformPolicy(p),
                     rng=random.Random(1))
    drv = LocalDriver(nodes, proto, batch_size=batch, rng=random.Random(2))
    _TimedNode.spent[0] = 0.0
    t = time.perf_counter()
    drv.run(xs)
    dt = time.perf_counter() - t - _TimedNode.spent[0]
    led.close()
    return dt / len(xs) * 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=3840)
    ap.add_argument("--p", type=float, default=0.05)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", dest="json_out")
    args = ap.parse_args(argv)
    w = np.random.default_rng(0).random((10, 512)).astype(np.float32)

    def runner(xs):
        return list(np.stack(xs) @ w.T)

    nodes = [NodeCore(NodeKey.from_seed(bytes([i]) * 32),
                      capture_profile(threads=1, batched=True), runner) for i in range(2)]
    g = np.random.default_rng(1)
    xs = list(g.random((args.jobs, 512)).astype(np.float32))
    runs = []
    with tempfile.TemporaryDirectory() as d:
        for r in range(args.repeats):
            runs.append(one_run(args, xs, nodes, Path(d), r))
    out = {k: min(run[k] for run in runs) for k in runs[0]}
    out["coordinator_total_us"] = (out["add_task_us"] + out["next_batch_us"]
                                   + out["on_batch_us"] + out["flush_us"])
    sub = xs[: min(len(xs), 1920)]
    p0 = min(per_task_us(0.0, sub, runner, args.batch) for _ in range(args.repeats))
    p1 = min(per_task_us(1.0, sub, runner, args.batch) for _ in range(args.repeats))
    out["round_p0_us_per_task"] = p0
    out["round_p1_us_per_task"] = p1
    out["per_sampled_task_us"] = p1 - p0
    for k, v in out.items():
        print(f"{k:>22} {v:8.1f} us/job")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
