"""Sampling audit: recompute every recorded sampling decision from the revealed seeds.

Hard truth 4: the coordinator publishes a seed commitment when an epoch opens and the
seed when it closes. Anyone holding the ledger can then re-derive, with
:func:`posp.sampling.decide`, which jobs of each committed batch had to be re-executed,
and compare with the ``decision`` events the coordinator recorded. A decision that
differs means the coordinator did not sample as it committed to; decisions of an epoch
not yet revealed are reported as not auditable yet.

The audit reads the events as stored; it does not check the hash chain (that is
:func:`posp.ledger.verify`'s job), so an edited decision is flagged here too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from .encoding import decode
from .errors import ConfigError, MalformedMessage
from .ledger import EVENT_FIELDS, Ledger, seed_commitment
from .sampling import decide

__all__ = ["AuditReport", "DecisionMismatch", "audit"]


@dataclass(frozen=True)
class DecisionMismatch:
    """One decision event whose sampled set is not what the seed gives."""

    seq: int
    epoch: int
    node: str
    reason: str
    recorded: tuple[int, ...] = ()
    expected: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "epoch": self.epoch,
            "node": self.node,
            "reason": self.reason,
            "recorded": list(self.recorded),
            "expected": list(self.expected),
        }


@dataclass(frozen=True)
class AuditReport:
    """``ok`` when every decision of every closed epoch checks and every reveal matches."""

    path: str
    epochs_closed: int
    epochs_open: int
    decisions_checked: int
    decisions_unauditable: int
    jobs_checked: int
    mismatches: list[DecisionMismatch] = field(default_factory=list)
    bad_reveals: list[int] = field(default_factory=list)
    unauditable_epochs: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.mismatches and not self.bad_reveals

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "path": self.path,
            "epochs_closed": self.epochs_closed,
            "epochs_open": self.epochs_open,
            "decisions_checked": self.decisions_checked,
            "decisions_unauditable": self.decisions_unauditable,
            "jobs_checked": self.jobs_checked,
            "mismatches": [m.to_dict() for m in self.mismatches],
            "bad_reveals": self.bad_reveals,
            "unauditable_epochs": self.unauditable_epochs,
        }


def audit(source: str | os.PathLike[str] | Ledger) -> AuditReport:
    """Audit the sampling decisions recorded in a ledger file (or an open Ledger)."""
    if isinstance(source, Ledger):
        return _audit(source)
    with Ledger(source, create=False) as ledger:
        return _audit(ledger)


def _audit(ledger: Ledger) -> AuditReport:
    commitments: dict[int, bytes] = {}
    seeds: dict[int, bytes] = {}
    decisions: list[tuple[int, Any]] = []
    undecodable: list[DecisionMismatch] = []
    for seq, kind, payload, _prev, _hash in ledger.raw_events():
        if kind not in ("epoch_open", "epoch_reveal", "decision"):
            continue
        try:
            values = decode(payload, records=False)
            f = dict(zip(EVENT_FIELDS[kind], values, strict=True))
        except (MalformedMessage, TypeError, ValueError):
            # a damaged row: an audit failure, not a crash (verify names it precisely)
            undecodable.append(DecisionMismatch(seq, -1, "?", f"{kind} event does not decode"))
            continue
        if kind == "epoch_open":
            commitments[f["epoch"]] = f["commitment"]
        elif kind == "epoch_reveal":
            seeds[f["epoch"]] = f["seed"]
        else:
            decisions.append((seq, f))
    bad_reveals = sorted(
        e for e, s in seeds.items()
        if e not in commitments or seed_commitment(s) != commitments[e]
    )
    mismatches: list[DecisionMismatch] = undecodable
    checked = unauditable = jobs = 0
    open_epochs: set[int] = set()
    for seq, f in decisions:
        epoch, node = f.get("epoch"), f.get("node")
        node_hex = node.hex() if isinstance(node, bytes) else repr(node)
        seed = seeds.get(epoch) if isinstance(epoch, int) else None
        if seed is None:
            unauditable += 1
            if isinstance(epoch, int):
                open_epochs.add(epoch)
            continue
        if epoch in bad_reveals:
            mismatches.append(DecisionMismatch(seq, epoch, node_hex, "the epoch's reveal is bad"))
            continue
        checked += 1
        recorded = tuple(f.get("sampled") or ())
        try:
            count = f["count"]
            rates = list(f["rates_ppb"])
            if len(rates) != count:
                raise ConfigError(f"{len(rates)} rates for {count} jobs", key="rates_ppb")
            flags = decide(seed, f["commitment"], ppb=rates)
        except (ConfigError, KeyError, TypeError, ValueError) as exc:
            mismatches.append(
                DecisionMismatch(seq, epoch, node_hex, f"malformed decision: {exc}", recorded)
            )
            continue
        jobs += count
        roles = f.get("roles") or b""
        first_rates = [ppb for r, ppb in zip(roles, rates, strict=False) if r == ord("f")]
        # a rate of 0 is legitimate for a whole batch (p = 0); a batch where some first
        # executions were exposed to sampling and others not is a selective exemption
        exempt = [i for i, (r, ppb) in enumerate(zip(roles, rates, strict=False))
                  if r == ord("f") and ppb == 0] if any(first_rates) else []
        if exempt:
            mismatches.append(DecisionMismatch(
                seq, epoch, node_hex,
                f"first executions at positions {exempt[:8]} were given sampling rate 0",
                recorded,
            ))
            continue
        expected = tuple(i for i, s in enumerate(flags) if s)
        if expected != recorded:
            mismatches.append(
                DecisionMismatch(
                    seq, epoch, node_hex, "sampled jobs differ from the seed's decision",
                    recorded, expected,
                )
            )
    return AuditReport(
        path=str(ledger.path),
        epochs_closed=sum(1 for e in seeds if e in commitments),
        epochs_open=sum(1 for e in commitments if e not in seeds),
        decisions_checked=checked,
        decisions_unauditable=unauditable,
        jobs_checked=jobs,
        mismatches=mismatches,
        bad_reveals=bad_reveals,
        unauditable_epochs=sorted(open_epochs),
    )
