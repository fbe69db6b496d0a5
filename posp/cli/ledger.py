"""``posp ledger show|verify|audit PATH``: inspect, verify and audit a stake ledger.

Exit status: 0 intact / every decision checks; 1 a tampered chain (naming the first bad
event) or a decision that differs; 2 a missing file, a file that is not a ledger, or a
bad flag (one line, no traceback).
"""

from __future__ import annotations

import argparse
from typing import Any

from ._common import write_json


def register(sub: Any) -> None:
    p = sub.add_parser("ledger", help="show, verify or audit a stake ledger")
    actions = p.add_subparsers(dest="ledger_command", metavar="ACTION", required=True)

    show = actions.add_parser("show", help="accounts, totals, head and event counts")
    show.add_argument("path", metavar="PATH")
    show.add_argument("--json", metavar="OUT", help="also write the summary as JSON")
    show.set_defaults(func=_show)

    ver = actions.add_parser("verify", help="re-walk the hash chain and replay balances")
    ver.add_argument("path", metavar="PATH")
    ver.add_argument(
        "--expect-head",
        metavar="H",
        help="a head you kept (HASH or SEQ:HASH); a ledger truncated before it fails",
    )
    ver.add_argument("--json", metavar="OUT", help="also write the report as JSON")
    ver.set_defaults(func=_verify)

    aud = actions.add_parser("audit", help="recompute every sampling decision")
    aud.add_argument("path", metavar="PATH")
    aud.add_argument("--json", metavar="OUT", help="also write the report as JSON")
    aud.set_defaults(func=_audit)


def _show(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from ..ledger import Ledger

    with Ledger(args.path, create=False) as ledger:
        summary = ledger.summary()
        accounts = ledger.accounts()
    console = Console()
    table = Table(title=f"accounts in {summary['path']}")
    for col in ("node", "balance", "locked", "status", "registered", "unlock", "profile"):
        table.add_column(col, justify="right" if col in ("balance", "locked") else "left")
    for a in accounts:
        table.add_row(
            a.node.hex()[:16],
            str(a.balance),
            str(a.locked),
            a.status,
            str(a.registered_epoch),
            "" if a.unlock_epoch is None else str(a.unlock_epoch),
            a.profile_digest.hex()[:12],
        )
    console.print(table)
    totals = summary["totals"]
    console.print("totals: " + ", ".join(f"{k} {v}" for k, v in totals.items()))
    counts = summary["event_counts"]
    console.print(
        f"events: {summary['events']}"
        + (" (" + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + ")" if counts else "")
    )
    head = summary["head"]
    console.print(f"head: {head['seq']}:{head['hash']}")
    console.print(
        f"epoch {summary['epoch']}, {summary['accounts']} accounts, {summary['active']} active; "
        f"coordinator {summary['coordinator'][:16]}"
    )
    if args.json:
        summary["accounts_table"] = [a.to_dict() for a in accounts]
        write_json(args.json, summary)
    return 0


def _verify(args: argparse.Namespace) -> int:
    from ..ledger import verify

    report = verify(args.path, expect_head=args.expect_head)
    if args.json:
        write_json(args.json, report.to_dict())
    if report.ok:
        print(
            f"intact: {report.events} events verified ({report.heads_checked} signed heads, "
            f"{report.events_per_s:,.0f} events/s); head {report.head_seq}:{report.head_hash}"
        )
        return 0
    print(f"TAMPERED: first bad event {report.first_bad_seq}: {report.reason}")
    return 1


def _audit(args: argparse.Namespace) -> int:
    from ..audit import audit

    report = audit(args.path)
    if args.json:
        write_json(args.json, report.to_dict())
    print(
        f"{report.decisions_checked} decisions checked ({report.jobs_checked} jobs) in "
        f"{report.epochs_closed} closed epochs; {report.decisions_unauditable} not auditable "
        f"yet (epochs not revealed: {report.unauditable_epochs or 'none'})"
    )
    for e in report.bad_reveals:
        print(f"BAD REVEAL: epoch {e}: the revealed seed does not hash to its commitment")
    for m in report.mismatches:
        print(f"MISMATCH: event {m.seq} (epoch {m.epoch}, node {m.node[:16]}): {m.reason}")
    if report.ok:
        print("audit ok: every decision matches the revealed seeds")
        return 0
    return 1
