"""``posp simulate``: adversarial simulation with theory side by side."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ._common import writable_path, write_json

# scenario key -> flag, so errors name what the user typed
_FLAGS = {
    "engine": "--engine", "nodes": "--nodes", "cheaters": "--cheaters",
    "strategy": "--strategy", "cheat_rate": "--cheat-rate", "sample_rate": "--sample-rate",
    "collusion": "--collusion", "validators": "--validators", "arbiters": "--arbiters",
    "tasks_per_node": "--tasks-per-node", "runs": "--runs", "reward": "--reward",
    "slash": "--slash", "bond": "--bond", "min_bond": "--min-bond", "cost": "--cost",
    "seed": "--seed", "crash_rate": "--crash-rate", "honest_strategy": "--honest-strategy",
    "batch_size": "--batch-size",
}


def register(sub: Any) -> None:
    p = sub.add_parser(
        "simulate",
        help="adversarial simulation with theory side by side",
        description=(
            "Simulate cheaters against the protocol's real rules and report each metric "
            "beside its closed-form theory (docs/THEORY.md). Flags override --scenario."
        ),
    )
    p.add_argument("--scenario", metavar="FILE.toml", help="a scenario file (sim/scenarios/)")
    p.add_argument("--engine", choices=("montecarlo", "event", "ray"))
    for flag, typ, meta, text in (
        ("--nodes", int, "M", "nodes per run"),
        ("--cheaters", int, "K", "cheating nodes among them"),
        ("--strategy", str, "NAME", "cheaters' strategy (or module:Class)"),
        ("--honest-strategy", str, "NAME", "everyone else's strategy"),
        ("--cheat-rate", float, "q", "share of jobs a cheater skips"),
        ("--crash-rate", float, "c", "per-job crash chance of crash_prone nodes"),
        ("--sample-rate", float, "p", "sampling rate"),
        ("--collusion", float, "r", "ring share of all nodes (0: no ring)"),
        ("--validators", int, "n", "validators per sampled job"),
        ("--arbiters", int, "k", "arbiters per dispute (odd)"),
        ("--tasks-per-node", int, "N", "jobs each node receives"),
        ("--runs", int, "RUNS", "independent repetitions"),
        ("--reward", int, "R", "reward per job"),
        ("--slash", int, "S", "slash per catch"),
        ("--bond", int, "B", "bond each node posts"),
        ("--min-bond", int, "B0", "ejection below this stake"),
        ("--cost", int, "C", "cost of computing a job"),
        ("--seed", int, "SEED", "random seed (same seed, same result)"),
        ("--batch-size", int, "B", "event engine: new tasks per node per round"),
    ):
        p.add_argument(flag, type=typ, default=None, metavar=meta, help=text)
    p.add_argument("--json", default=None, metavar="OUT", help="write the report as JSON")
    p.add_argument("--plot", default=None, metavar="OUT.png",
                   help="stake over time (or, with --sweep-p, gain against p)")
    p.add_argument("--sweep-p", action="store_true",
                   help="sweep p across p* and plot an always-cheater's gain against p")
    p.add_argument("--points", type=int, default=None, help="sweep points (default 9)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _scenario(args: argparse.Namespace) -> Any:
    from sim.scenario import Scenario, load_scenario, scenario_from_dict
    from sim.strategies import scenario_strategies

    flags = {k: getattr(args, k) for k in _FLAGS if getattr(args, k) is not None}
    try:
        s = load_scenario(args.scenario, **flags) if args.scenario else \
            scenario_from_dict(flags, base=Scenario())
        scenario_strategies(s)  # fail on a bad strategy before any work
        return s
    except ConfigError as exc:
        if exc.key in _FLAGS and exc.key in flags:
            raise ConfigError(str(exc).removeprefix(f"{exc.key}: "),
                              key=_FLAGS[exc.key]) from None
        raise


def _fmt(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    return f"{x:.6g}"


def run(args: argparse.Namespace) -> int:
    for flag in ("json", "plot"):
        if getattr(args, flag) is not None:
            writable_path(getattr(args, flag), key=f"--{flag}")
    s = _scenario(args)
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from sim.run import simulate
    console = Console(stderr=True)
    with Progress(console=console, disable=args.quiet, transient=True) as bar:
        if args.sweep_p:
            from sim.sweep import plot_sweep, sweep_p

            # the plot and its data, always: beside each other unless --json says where;
            # both paths checked before the sweep's work
            plot = args.plot or "pstar_sweep.png"
            try:
                out = args.json or str(Path(plot).with_suffix(".json"))
            except ValueError:
                raise ConfigError(f"not a file name: {plot!r}", key="--plot") from None
            writable_path(plot, key="--plot")
            writable_path(out, key="--json")
            if Path(out).resolve() == Path(plot).resolve():
                raise ConfigError("the plot and its data need two different paths "
                                  f"({out!r}); give --json", key="--plot")
            task = bar.add_task("sweep", total=None)
            data = sweep_p(s, points=args.points,
                           progress=lambda d, t: bar.update(task, completed=d, total=t))
            for key in ("p_star", "p_star_blind"):
                if not math.isfinite(data[key]):
                    data[key] = None
            write_json(out, data)
            plot_sweep(data, plot)
            table = Table(title=f"always-cheater gain per job (p* = {_fmt(data['p_star'])}, "
                                f"p*_blind = {_fmt(data['p_star_blind'])})")
            for c in ("p", "own jobs", "theory (own)", "every job", "theory (every)"):
                table.add_column(c, justify="right")
            for r in data["points"]:
                table.add_row(_fmt(r["p"]), _fmt(r["own_gain"]["measured"]),
                              _fmt(r["own_gain"]["theory"]), _fmt(r["gain"]["measured"]),
                              _fmt(r["gain"]["theory"]))
            Console().print(table)
            console.print(f"wrote {plot} (plot) and {out} (data)")
            return 0
        task = bar.add_task(f"{s.engine}", total=None)
        rep = simulate(s, progress=lambda d, t: bar.update(task, completed=d, total=t))
    data = rep.to_json()
    table = Table(title=f"posp simulate: {s.engine}, seed {s.seed}, "
                        f"{rep.job_events:,} jobs in {rep.seconds:.2f} s")
    for c in ("metric", "measured", "theory", "stderr", "agrees"):
        table.add_column(c, justify="right" if c != "metric" else "left")
    for name, m in data["metrics"].items():
        table.add_row(name, _fmt(m["measured"]), _fmt(m["theory"]), _fmt(m["stderr"]),
                      "-" if not m["compared"] else "yes" if m["agrees"] else "[red]NO[/red]")
    Console().print(table)
    if args.json:
        write_json(args.json, data)
    if args.plot:
        _plot_stake(data, args.plot)
    return 0


def _plot_stake(data: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=90)
    for key, label in (("cheater_stake", "cheaters"), ("honest_stake", "honest")):
        ax.plot(data["series"].get(key, []), label=label)
    ax.set_xlabel("round")
    ax.set_ylabel("mean stake")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
