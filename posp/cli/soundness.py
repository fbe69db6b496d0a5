"""``posp soundness``: the soundness matrix, honest drift against every cheat.

Held-out inputs (seed 2000; calibration used 1000) run under every honest execution
variant and every cheat in the catalogue; trials replay those outputs through signed
in-process nodes and the coordinator's real rules (blind validation with the shipped
calibration's comparator, arbitration by three nodes, slashing). Targets: no honest
trial slashed in >= 10,000 trials (MLP, CNN) and >= 2,000 (LM); every cheat slashed in
every trial; margin (smallest cheat distance / largest honest drift) >= 10.
Exit 0 when every target is met, 1 when not, 2 on a usage error.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import ConfigError
from ._common import writable_path, write_json


def register(sub: Any) -> None:
    p = sub.add_parser(
        "soundness",
        help="the soundness matrix: honest drift vs every cheat",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--trials", type=int, default=None, metavar="N",
                   help="honest trials per workload (default 10,000 MLP/CNN, 2,000 LM)")
    p.add_argument("--cheat-trials", type=int, default=None, metavar="M",
                   help="trials per cheat (default 1,000 MLP/CNN, 500 LM)")
    p.add_argument("--inputs", type=int, default=None, metavar="N",
                   help="held-out inputs per workload (default 512 MLP, 256 CNN, 64 LM)")
    p.add_argument("--workloads", default="mlp,cnn,lm", metavar="LIST",
                   help="comma-separated (default mlp,cnn,lm)")
    p.add_argument("--cheats", default=None, metavar="LIST",
                   help="comma-separated subset of the catalogue (default: every cheat)")
    p.add_argument("--seed", type=int, default=2000, help="held-out input seed (default 2000)")
    p.add_argument("--calibration", action="append", default=[], metavar="FILE",
                   help="a calibration file to use instead of the shipped one (repeatable)")
    p.add_argument("--json", dest="json_out", default=None, metavar="OUT",
                   help="write the matrix as JSON")
    p.add_argument("--plot", default=None, metavar="OUT.png",
                   help="draw honest drift against each cheat's distance (log scale)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from workloads.registry import WORKLOADS, get

    names = [n.strip() for n in args.workloads.split(",") if n.strip()]
    if not names:
        raise ConfigError("name at least one workload", key="--workloads")
    for n in names:
        if n not in WORKLOADS:
            raise ConfigError(f"unknown workload {n!r}; choose from {sorted(WORKLOADS)}",
                              key="--workloads")
    for flag, v in (("--trials", args.trials), ("--cheat-trials", args.cheat_trials)):
        if v is not None and v < 0:
            raise ConfigError(f"must be >= 0, got {v}", key=flag)
    if args.inputs is not None and args.inputs < 1:
        raise ConfigError(f"must be >= 1, got {args.inputs}", key="--inputs")
    if args.json_out:
        writable_path(args.json_out, key="--json")
    if args.plot:
        writable_path(args.plot, key="--plot")
    cheats = [c.strip() for c in args.cheats.split(",")] if args.cheats else None

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from workloads.calibration import load_calibration
    from workloads.soundness import TARGET_HONEST_TRIALS, plot_soundness, soundness

    calibrations = {}
    for path in args.calibration:
        cal = load_calibration(path)
        calibrations[cal.workload] = cal
    for n in calibrations:
        if n not in names:
            raise ConfigError(f"calibration for {n!r}, which is not in --workloads",
                              key="--calibration")
    if cheats is not None:
        for n in names:
            unknown = [c for c in cheats if c not in get(n).cheats]
            if unknown:
                raise ConfigError(f"{n} has no cheat {', '.join(unknown)}", key="--cheats")

    console = Console(quiet=args.quiet)
    with Progress("[progress.description]{task.description}", BarColumn(),
                  MofNCompleteColumn(), TimeElapsedColumn(), console=console,
                  disable=args.quiet) as bar:
        tasks: dict[str, Any] = {}

        def progress(workload: str, what: str, done: int, total: int) -> None:
            tid = tasks.get(workload)
            if tid is None:
                tid = tasks[workload] = bar.add_task(workload, total=total)
            bar.update(tid, description=f"{workload}: {what}", completed=done, total=total)

        result = soundness(
            names, honest_trials=args.trials, cheat_trials=args.cheat_trials,
            n_inputs=args.inputs, seed=args.seed, calibrations=calibrations,
            cheats=cheats, progress=progress,
        )
    report = result.report
    failures = list(report["failures"])
    if args.json_out:
        write_json(args.json_out, report)
    if args.plot:
        plot_soundness(result, args.plot)
    _print(console, report, TARGET_HONEST_TRIALS)
    if failures:
        console.print("[red]targets not met:[/]")
        for f in failures:
            console.print(f"  {f}")
    else:
        console.print(f"[green]all targets met[/] [{report['seconds']} s]")
    return 1 if failures else 0


def _print(console: Any, report: dict[str, Any], targets: dict[str, int]) -> None:
    from rich.table import Table

    for name, e in report["workloads"].items():
        h = e["honest"]
        t = Table(title=f"{name} ({e['metric']}): margin {e['margin']:.3g}, largest honest "
                        f"drift {h['max_drift']:.3g}, calibrated tolerance up to "
                        f"{e['calibration']['max_tolerance']:.3g} [{e['seconds']} s]")
        for col in ("cell", "trials", "flagged", "slashed", "min distance"):
            t.add_column(col, justify="left" if col == "cell" else "right")
        t.add_row("honest (all variants)", f"{h['trials']:,}", str(h["flagged"]),
                  str(h["slashed"]), "-", style="green" if not h["slashed"] else "red")
        for c, cell in sorted(e["cheats"].items(), key=lambda kv: kv[1]["min_distance"]):
            ok = cell["detected"] == cell["trials"]
            t.add_row(f"cheat {c}", f"{cell['trials']:,}", str(cell["flagged"]),
                      str(cell["detected"]), f"{cell['min_distance']:.3g}",
                      style=None if ok else "red")
        console.print(t)
        if "prefill" in e:
            pf = e["prefill"]
            console.print(f"  {name} prefill judge: largest honest {pf['max_drift']:.3g}, "
                          f"margin {pf['margin']:.3g}")
