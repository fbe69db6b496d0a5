"""``posp demo``: the whole story on a local Ray instance in under a minute.

N node actors run a seeded torch MLP; K of them cheat by answering with a smaller model
on a fraction q of their jobs. The coordinator samples a fraction p of the tasks,
re-executes them blind on other nodes, arbitrates mismatches and slashes the losers in
the ledger. The table shows who was caught, after how many jobs, what it cost them, and
that no honest node lost anything.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ._common import unit_rate, writable_path, write_json

WORKLOAD = "mlp"
CHEAT = "smaller_model"


def register(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="run verified inference with cheaters on a local Ray instance",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--nodes", type=int, default=6, help="node actors (default 6)")
    p.add_argument("--cheaters", type=int, default=2, help="how many of them cheat (default 2)")
    p.add_argument("--cheat-rate", type=unit_rate, default=1.0,
                   help="fraction of its jobs a cheater cheats on (default 1.0)")
    p.add_argument("--tasks", type=int, default=600, help="tasks in total (default 600)")
    p.add_argument("--sample-rate", type=unit_rate, default=0.2,
                   help="sampling rate p (default 0.2)")
    p.add_argument("--seed", type=int, default=7, help="seed for inputs, cheaters, scheduling")
    p.add_argument("--ledger", default="posp-demo.db", help="ledger file (default posp-demo.db)")
    p.add_argument("--address", default=None, help="join an existing Ray cluster")
    p.add_argument("--batch-size", type=int, default=32, help="jobs per batch (default 32)")
    p.add_argument("--json", dest="json_out", default=None, metavar="OUT",
                   help="write the report as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar or table")
    p.set_defaults(func=run)


def _check(args: argparse.Namespace) -> None:
    if args.nodes < 2:
        raise ConfigError(f"must be >= 2 (verification needs a second node), got {args.nodes}",
                          key="--nodes")
    if not 0 <= args.cheaters <= args.nodes:
        raise ConfigError(f"must be between 0 and --nodes ({args.nodes}), got {args.cheaters}",
                          key="--cheaters")
    if args.cheaters > args.nodes - 1:
        raise ConfigError("at least one node must be honest", key="--cheaters")
    if args.tasks < 1:
        raise ConfigError(f"must be >= 1, got {args.tasks}", key="--tasks")
    if args.batch_size < 1:
        raise ConfigError(f"must be >= 1, got {args.batch_size}", key="--batch-size")
    writable_path(args.ledger, key="--ledger")
    if Path(args.ledger).exists() and not Path(args.ledger).is_file():
        raise ConfigError(f"{args.ledger!r} is not a file", key="--ledger")
    if args.json_out:
        writable_path(args.json_out, key="--json")


def run(args: argparse.Namespace) -> int:
    _check(args)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
    from rich.table import Table

    from workloads.nodes import WorkloadFactory, cheater
    from workloads.registry import get

    from ..economics import nash_threshold
    from ..protocol import ProtocolParams, State
    from ..runtime import Cluster, NodeSpec

    console = Console(stderr=False, quiet=args.quiet)
    rng = random.Random(args.seed)
    cheat_idx = set(rng.sample(range(args.nodes), args.cheaters))
    specs = []
    for i in range(args.nodes):
        if i in cheat_idx:
            beh = cheater(WORKLOAD, CHEAT, args.cheat_rate, seed=args.seed * 1000 + i)
            specs.append(NodeSpec(WorkloadFactory(WORKLOAD), behaviour=beh, role="cheater"))
        else:
            # honest nodes differ in batching, so drift is real and must be tolerated
            specs.append(NodeSpec(WorkloadFactory(WORKLOAD), batched=i % 2 == 0,
                                  role="honest"))
    workload = get(WORKLOAD)
    params = ProtocolParams(reward=10, validator_reward=10, slash=6000, bond=10_000)
    inputs = workload.inputs(args.seed, args.tasks)
    t0 = time.perf_counter()
    console.print(f"[bold]posp demo[/]: {args.nodes} nodes ({args.cheaters} cheating on "
                  f"{args.cheat_rate:.0%} of jobs with a {CHEAT.replace('_', ' ')}), "
                  f"{args.tasks} tasks of {WORKLOAD}, p = {args.sample_rate}")
    with Cluster(
        nodes=specs,
        sample_rate=args.sample_rate,
        params=params,
        ledger=args.ledger,
        address=args.address,
        batch_size=args.batch_size,
        seed=args.seed,
    ) as cluster:
        t_ready = time.perf_counter()
        before = {pub: cluster.ledger.balance(pub) for pub in cluster.nodes}
        with Progress("[progress.description]{task.description}", BarColumn(),
                      MofNCompleteColumn(), TimeElapsedColumn(), console=console,
                      disable=args.quiet) as bar:
            task = bar.add_task("settling", total=args.tasks)
            results = cluster.map(inputs, progress=lambda d, t: bar.update(task, completed=d))
        t_run = time.perf_counter() - t_ready
        stats = dict(cluster.protocol.stats)
        jobs_run = cluster.jobs_dispatched
        decoys = cluster.scheduler.decoys_sent
        node_rows = []
        slashed_in_ledger = {ev["node"] for ev in cluster.ledger.events() if ev.kind == "slash"}
        for i, (pub, info) in enumerate(cluster.nodes.items()):
            after = cluster.ledger.balance(pub)
            acct = cluster.ledger.account(pub)
            slashed = pub in slashed_in_ledger
            node_rows.append({
                "id": info.id,
                "role": info.spec.role,
                "slashed": slashed,
                "stake_before": before[pub],
                "stake_after": after,
                "tasks_to_detection": info.slashed_after if info.spec.role == "cheater"
                and slashed else None,
                "status": acct.status if acct else "?",
                "asserted": info.asserted,
                "_index": i,
            })
    head_seq, head_hash = _final_head(args.ledger)
    elapsed = time.perf_counter() - t0
    states: dict[str, int] = {}
    for r in results:
        states[r.state.value] = states.get(r.state.value, 0) + 1
    report = {
        "tasks": args.tasks,
        "sampled": int(stats.get("sampled", 0)),
        "disputes": int(stats.get("disputes", 0)),
        "cheaters": args.cheaters,
        "cheaters_slashed": sum(1 for n in node_rows if n["role"] == "cheater" and n["slashed"]),
        # from the ledger itself, whatever the reason of the slash
        "honest_slashed": sum(1 for n in node_rows if n["role"] == "honest" and n["slashed"]),
        "ledger": str(args.ledger),
        "ledger_head": head_hash,
        "ledger_head_seq": head_seq,
        "nodes": [{k: v for k, v in n.items() if not k.startswith("_") and k not in
                   ("status", "asserted")} for n in node_rows],
        "states": states,
        "overturned_outputs_replaced": states.get(State.OVERTURNED.value, 0),
        "jobs_executed": jobs_run,
        "validation_jobs": int(stats.get("jobs_validate", 0)),
        "arbitration_jobs": int(stats.get("jobs_arbitrate", 0)),
        "decoy_jobs": decoys,
        "verification_overhead": (jobs_run - args.tasks) / args.tasks,
        "reexecution_overhead": (int(stats.get("jobs_validate", 0))
                                 + int(stats.get("jobs_arbitrate", 0))) / args.tasks,
        "ideal_overhead": args.sample_rate,
        "seconds": round(elapsed, 2),
        "seconds_running": round(t_run, 2),
        "p_star": nash_threshold(cost=params.reward, reward=params.reward, slash=params.slash),
        "seed": args.seed,
    }
    if not args.quiet:
        _print(console, report, node_rows, Table)
    if args.json_out:
        write_json(args.json_out, report)
    return 0


def _final_head(path: str) -> tuple[int, str]:
    from ..ledger import Ledger

    led = Ledger(path, create=False)
    try:
        return led.head
    finally:
        led.close()


def _print(console: Any, report: dict[str, Any], rows: list[dict[str, Any]], Table: Any) -> None:
    t = Table(title="nodes", show_lines=False)
    for col in ("node", "role", "jobs asserted", "stake before", "stake after", "slashed",
                "jobs to detection", "status"):
        t.add_column(col, justify="right" if col not in ("node", "role", "status") else "left")
    for n in rows:
        style = "red" if n["role"] == "cheater" else None
        t.add_row(n["id"], n["role"], str(n["asserted"]), f"{n['stake_before']:,}",
                  f"{n['stake_after']:,}", "yes" if n["slashed"] else "no",
                  "-" if n["tasks_to_detection"] is None else str(n["tasks_to_detection"]),
                  n["status"], style=style)
    console.print(t)
    s = Table(title="run", show_header=False)
    s.add_column("what")
    s.add_column("value", justify="right")
    s.add_row("tasks", str(report["tasks"]))
    s.add_row("sampled (re-executed blind)", str(report["sampled"]))
    s.add_row("disputes (arbitrated)", str(report["disputes"]))
    s.add_row("results by state", ", ".join(f"{k} {v}" for k, v in sorted(report["states"].items())))
    s.add_row("cheaters slashed", f"{report['cheaters_slashed']} of {report['cheaters']}")
    s.add_row("honest nodes slashed", str(report["honest_slashed"]))
    s.add_row("re-executions (validation + arbitration)",
              f"{report['validation_jobs']} + {report['arbitration_jobs']} = "
              f"{report['reexecution_overhead']:.1%} of tasks (ideal p = "
              f"{report['ideal_overhead']:.0%}, plus disputes)")
    s.add_row("decoys padding tail batches", f"{report['decoy_jobs']} "
              f"(total extra compute {report['verification_overhead']:.1%})")
    s.add_row("Nash threshold p* (C = R)", f"{report['p_star']:.4f}")
    s.add_row("wall time", f"{report['seconds']} s ({report['seconds_running']} s of work)")
    s.add_row("ledger", report["ledger"])
    s.add_row("final ledger head", f"{report['ledger_head_seq']}:{report['ledger_head']}")
    console.print(s)
    console.print(f"keep the head to detect truncation later: posp ledger verify "
                  f"{report['ledger']} --expect-head {report['ledger_head_seq']}:"
                  f"{report['ledger_head']}")


if __name__ == "__main__":  # pragma: no cover
    from . import main

    sys.exit(main(["demo", *sys.argv[1:]]))
