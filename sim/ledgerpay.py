"""What a run's ledger paid and slashed each node, per settlement reference.

The event and Ray engines measure profit from the ledger the core wrote, not from a copy
of the payment rules: whatever the protocol decides (a dispute without a majority pays
neither party, a slash takes at most the stake, challengers get a share) is what the
simulator counts.
"""

from __future__ import annotations

from posp.encoding import decode
from posp.ledger import EVENT_FIELDS, Ledger

__all__ = ["ledger_amounts"]


def ledger_amounts(ledger: Ledger) -> dict[tuple[str, bytes], int]:
    """What the ledger paid (+) and slashed (-) each node, per settlement reference:
    rewards, slashes as taken (at most the stake) and challengers' shares of them."""
    out: dict[tuple[str, bytes], int] = {}
    names = {k: EVENT_FIELDS[k] for k in ("reward", "slash")}
    for _seq, kind, payload, _prev, _h in ledger.raw_events():
        if kind not in names:
            continue
        ev = dict(zip(names[kind], decode(payload, records=False), strict=True))
        ref = ev["ref"]
        key = (ref, ev["node"])
        if kind == "reward":
            out[key] = out.get(key, 0) + ev["amount"]
            continue
        out[key] = out.get(key, 0) - ev["amount"]
        for c in ev["challengers"]:
            out[(ref, c)] = out.get((ref, c), 0) + ev["challenger_share"]
    return out
