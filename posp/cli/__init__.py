"""The ``posp`` command line: the top floor. It may import everything; nothing imports it.

Each subcommand lives in its own module in this package and exposes
``register(subparsers)``; the module is imported only when its command runs, so
``posp --help`` stays fast. User mistakes (a :class:`~posp.errors.PospError`, a bad
flag, a missing file) print one line to stderr and exit 2; never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from ..errors import PospError

#: subcommand name -> (module in posp.cli, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "economics": ("economics", "the Nash sampling threshold p* and a detection table"),
    "ledger": ("ledger", "show, verify or audit a stake ledger"),
    "simulate": ("simulate", "adversarial simulation with theory side by side"),
    "demo": ("demo", "verified inference with cheaters on a local Ray instance"),
    "calibrate": ("calibrate", "measure honest drift and write a calibration file"),
    "soundness": ("soundness", "the soundness matrix: honest drift vs every cheat"),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        print(f"posp: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    parser = _Parser(
        prog="posp",
        description="Proof of sampling for untrusted inference compute.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    wanted = None
    args = list(argv) if argv is not None else sys.argv[1:]
    for a in args:
        if not a.startswith("-"):
            wanted = a
            break
    for name, (module, help_text) in COMMANDS.items():
        if wanted == name:
            mod = importlib.import_module(f"posp.cli.{module}")
            mod.register(sub)
        else:
            sub.add_parser(name, help=help_text)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        return int(func(args) or 0)
    except PospError as exc:
        print(f"posp {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("posp: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
