"""``posp economics``: the Nash sampling threshold p* and a detection table."""

from __future__ import annotations

import argparse
import math
from typing import Any

from ..economics import TABLE_HORIZONS, report
from ..errors import ConfigError
from ._common import writable_path, write_json

# economics parameter name -> the flag that sets it, so errors name what the user typed
_FLAGS = {
    "cost": "--cost",
    "reward": "--reward",
    "slash": "--slash",
    "collusion": "--collusion",
    "validators": "--validators",
    "min_bond": "--min-bond",
    "p_min": "--p-min",
    "arbiters": "--arbiters",
}


def register(sub: Any) -> None:
    p = sub.add_parser(
        "economics",
        help="the Nash sampling threshold p* and a detection table",
        description=(
            "p* = C / ((1 - r^n) (R + S)): the lowest sampling rate at which cheating "
            "does not pay, and how fast an always-cheating node is caught at rates around it."
        ),
    )
    p.add_argument("--cost", type=float, required=True, metavar="C",
                   help="cost of the honest work a cheater saves, per task")
    p.add_argument("--reward", type=float, required=True, metavar="R",
                   help="reward paid per task")
    p.add_argument("--slash", type=float, required=True, metavar="S",
                   help="stake slashed from a caught cheater")
    p.add_argument("--collusion", type=float, default=0.0, metavar="r",
                   help="share of colluding nodes, in [0, 1] (default 0)")
    p.add_argument("--validators", type=int, default=1, metavar="n",
                   help="validators per sampled task (default 1)")
    p.add_argument("--min-bond", type=float, default=None, metavar="B",
                   help="minimum bond: caps the slash a node is sure to pay")
    p.add_argument("--p-min", type=float, default=None, metavar="P",
                   help="lowest sampling rate of the policy: warn when below p*")
    p.add_argument("--arbiters", type=int, default=None, metavar="k",
                   help="arbitration panel size (odd): discounts the catch by H")
    p.add_argument("--json", default=None, metavar="OUT",
                   help="also write the report as JSON to OUT")
    p.set_defaults(func=run)


def _fmt_tasks(x: float) -> str:
    return "never" if not math.isfinite(x) else f"{x:,.0f}"


def run(args: argparse.Namespace) -> int:
    if args.json is not None:
        writable_path(args.json)  # fail before computing, naming --json
    try:
        rep = report(
            args.cost,
            args.reward,
            args.slash,
            args.collusion,
            args.validators,
            p_min=args.p_min,
            min_bond=args.min_bond,
            arbiters=args.arbiters,
        )
    except ConfigError as exc:
        if exc.key in _FLAGS:
            msg = str(exc).removeprefix(f"{exc.key}: ")
            raise ConfigError(msg, key=_FLAGS[exc.key]) from None
        raise

    from rich.console import Console
    from rich.table import Table

    console = Console()
    p_star = "inf (no sampling rate deters)" if math.isinf(rep.p_star) else f"{rep.p_star:.4g}"
    console.print(f"p* = {p_star}", highlight=False)
    if rep.warning:
        console.print(f"[bold yellow]warning:[/] {rep.warning}", highlight=False)

    table = Table(
        title="detection of an always-cheating node (q = 1)", caption="* the row at p = p*"
    )
    table.add_column("p", justify="right", no_wrap=True, min_width=10)
    table.add_column("per task", justify="right")
    for n in TABLE_HORIZONS:
        table.add_column(f"within {n:,}", justify="right")
    table.add_column("mean tasks", justify="right")
    table.add_column("median tasks", justify="right")
    for row in rep.table:
        mark = "*" if row.p == rep.p_star else ""
        table.add_row(
            f"{row.p:.4g}{mark}",
            f"{row.per_task:.4g}",
            *(f"{row.within[n]:.4f}" for n in TABLE_HORIZONS),
            _fmt_tasks(row.mean_tasks),
            _fmt_tasks(row.median_tasks),
        )
    console.print(table)

    if args.json is not None:
        write_json(args.json, rep.to_dict())
    return 0
