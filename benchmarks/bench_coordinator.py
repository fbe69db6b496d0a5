"""The coordinator's own per-job cost, in one process, without Ray.

Where the time goes when posp drives a cluster: submitting a task (input digest),
composing batches, checking a node's signed batch and deciding the sample (on_batch),
and the group commit (flush). Nodes here are in-process NodeCore objects running a tiny
512 -> 10 matmul, so their figure is mostly posp's node-side work (digests, receipts,
one signature per batch).

    .venv/bin/python benchmarks/bench_coordinator.py [--jobs 3840] [--p 0.05] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
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
from posp.scheduler import Scheduler


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=3840)
    ap.add_argument("--p", type=float, default=0.05)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--json", dest="json_out")
    args = ap.parse_args(argv)
    w = np.random.default_rng(0).random((10, 512)).astype(np.float32)

    def runner(xs):
        return list(np.stack(xs) @ w.T)

    nodes = [NodeCore(NodeKey.from_seed(bytes([i]) * 32),
                      capture_profile(threads=1, batched=True), runner) for i in range(2)]
    with tempfile.TemporaryDirectory() as d:
        led = Ledger(Path(d) / "c.db")
        proto = Protocol(ledger=led, comparator=RelativeL2(1e-4), policy=UniformPolicy(args.p))
        for n in nodes:
            proto.register(n.public, n.profile_digest)
        proto.open_epoch()
        proto.flush()
        sched = Scheduler(proto, batch_size=args.batch)
        g = np.random.default_rng(1)
        xs = [g.random(512).astype(np.float32) for _ in range(args.jobs)]
        out = {}
        t = time.perf_counter()
        for x in xs:
            sched.add_task(x)
        out["add_task_us"] = (time.perf_counter() - t) / len(xs) * 1e6
        batches = []
        t = time.perf_counter()
        while sched.has_fresh():
            for n in nodes:
                b = sched.next_batch(n.public, force=True)
                if b:
                    batches.append((n, b))
        out["next_batch_us"] = (time.perf_counter() - t) / len(xs) * 1e6
        t = time.perf_counter()
        results = [(n, n.run_batch(b.jobs)) for n, b in batches]
        out["node_run_batch_us"] = (time.perf_counter() - t) / len(xs) * 1e6
        t = time.perf_counter()
        for n, r in results:
            proto.on_batch(n.public, r.batch, list(r.receipts), list(r.outputs))
        out["on_batch_us"] = (time.perf_counter() - t) / len(xs) * 1e6
        t = time.perf_counter()
        proto.flush()
        out["flush_us"] = (time.perf_counter() - t) / len(xs) * 1e6
        led.close()
    out["coordinator_total_us"] = (out["add_task_us"] + out["next_batch_us"]
                                   + out["on_batch_us"] + out["flush_us"])
    for k, v in out.items():
        print(f"{k:>22} {v:8.1f} us/job")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
