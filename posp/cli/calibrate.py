"""``posp calibrate``: measure honest drift and write a calibration file.

The workload's inputs run under every honest execution variant (batch sizes 1, 7, 64;
1 and 2 threads; one torch batch or one forward per job); every pair of variants is
compared with the workload's comparator. Per pair of execution profiles, the largest
distance times a safety margin becomes the tolerance the coordinator applies
(``Protocol(comparator=load_calibration(FILE).comparator_for)``). Pairs not in the file
keep the workload's default tolerance. Use a seed other than the soundness matrix's.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ._common import writable_path, write_json


def register(sub: Any) -> None:
    p = sub.add_parser(
        "calibrate",
        help="measure honest drift and write a calibration file",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--workload", default=None, metavar="NAME",
                     help="a built-in workload: mlp, cnn or lm (default mlp)")
    src.add_argument("--factory", default=None, metavar="MODULE:FUNCTION",
                     help="a function returning a Workload-like object")
    p.add_argument("--out", default=None, metavar="FILE",
                   help="calibration file to write (default calibration_<name>.json)")
    p.add_argument("--inputs", type=int, default=64, metavar="N",
                   help="calibration inputs (default 64)")
    p.add_argument("--seed", type=int, default=1000,
                   help="seed of the calibration inputs (default 1000; the soundness "
                        "matrix uses 2000)")
    p.add_argument("--safety-margin", type=float, default=None, metavar="X",
                   help="tolerance = largest drift x X (default 4)")
    p.add_argument("--json", dest="json_out", default=None, metavar="OUT",
                   help="also write the calibration (with timing) here")
    p.add_argument("--quiet", action="store_true", help="no table")
    p.set_defaults(func=run)


REQUIRED = ("name", "build", "inputs", "run", "comparator", "tolerance_floor")


def load_factory(spec: str) -> Any:
    """``module:function`` -> the object the function returns, checked to be
    Workload-like; ConfigError (one line) for anything else."""
    mod_name, sep, fn_name = spec.partition(":")
    if not sep or not mod_name or not fn_name:
        raise ConfigError(f"expected MODULE:FUNCTION, got {spec!r}", key="--factory")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import {mod_name!r}: {exc}", key="--factory") from exc
    fn = getattr(mod, fn_name, None)
    if not callable(fn):
        raise ConfigError(f"{mod_name} has no callable {fn_name!r}", key="--factory")
    try:
        w = fn()
    except Exception as exc:  # a user's factory: report, never a traceback
        raise ConfigError(f"{spec}() raised {type(exc).__name__}: {exc}",
                          key="--factory") from exc
    missing = [a for a in REQUIRED if not hasattr(w, a)]
    if missing:
        raise ConfigError(
            f"{spec}() returned {type(w).__name__}, which lacks {', '.join(missing)} "
            "(see workloads.base.Workload)", key="--factory",
        )
    if not isinstance(w.name, str) or not w.name:
        raise ConfigError(f"{spec}() returned a workload without a name", key="--factory")
    return w


def run(args: argparse.Namespace) -> int:
    if args.inputs < 1:
        raise ConfigError(f"must be >= 1, got {args.inputs}", key="--inputs")
    if args.safety_margin is not None and not args.safety_margin >= 1.0:
        raise ConfigError(f"must be >= 1, got {args.safety_margin}", key="--safety-margin")
    if args.json_out:
        writable_path(args.json_out, key="--json")
    if args.factory:
        workload = load_factory(args.factory)
    else:
        from workloads.registry import get

        workload = get(args.workload or "mlp")
    out = Path(args.out or f"calibration_{workload.name}.json")
    writable_path(str(out), key="--out")

    import time

    from rich.console import Console
    from rich.table import Table

    from workloads.calibration import DEFAULT_SAFETY_MARGIN, calibrate, load_calibration

    console = Console(quiet=args.quiet)
    t0 = time.perf_counter()
    with console.status(f"calibrating {workload.name} on {args.inputs} inputs"):
        cal = calibrate(
            workload, seed=args.seed, n_inputs=args.inputs,
            safety_margin=args.safety_margin or DEFAULT_SAFETY_MARGIN,
        )
    cal["seconds"] = round(time.perf_counter() - t0, 1)
    load_calibration(cal, comparator=workload.comparator)  # what the coordinator will read
    write_json(out, cal, key="--out")
    if args.json_out:
        write_json(args.json_out, cal)
    t = Table(title=f"{workload.name}: honest drift per pair of execution profiles "
                    f"({cal['metric']})")
    for col in ("profile a", "profile b", "comparisons", "max drift", "tolerance"):
        t.add_column(col, justify="left" if col.startswith("profile") else "right")
    for p in cal["pairs"]:
        t.add_row(_short(p["a_label"]), _short(p["b_label"]), str(p["n"]), f"{p['max_drift']:.3g}",
                  f"{p['tolerance']:.3g}")
    console.print(t)
    d = cal["distribution"]
    console.print(
        "distribution: " + "  ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                                     for k, v in d.items())
    )
    console.print(f"default tolerance {cal['default_tolerance']:.3g}; calibrated "
                  f"{min(p['tolerance'] for p in cal['pairs']):.3g} .. "
                  f"{max(p['tolerance'] for p in cal['pairs']):.3g} (safety margin "
                  f"{cal['safety_margin']:g}); wrote {out} [{cal['seconds']} s]")
    return 0


def _short(label: str) -> str:
    return label.removeprefix("cpu/float32/")
