"""Ledger throughput beside the raw library speed, measured in the same run.

    .venv/bin/python benchmarks/bench_ledger.py [--settlements 50000] [--group 2000] [--json OUT]

Figures: settlements/s with group commit (reward settlements, one signed head per
group); full-chain verification events/s (hashes, head signatures, replay, table
comparison); raw SQLite INSERTs of similar rows in one transaction with the same pragmas;
and a bare loop that only fetches the rows and hashes each one (the floor for
verification in Python). Targets: >= 20,000 settlements/s, >= 200,000 events/s verified.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from posp.digest import digest  # noqa: E402
from posp.encoding import encode  # noqa: E402
from posp.identity import NodeKey  # noqa: E402
from posp.ledger import Ledger, event_hash, verify  # noqa: E402


def bench_settlements(path: Path, n: int, group: int, nodes: int) -> float:
    keys = [NodeKey.from_seed(i.to_bytes(32, "big")).public for i in range(1, nodes + 1)]
    with Ledger(path, coordinator_key=NodeKey.from_seed(b"\x01" * 32), min_bond=100) as led:
        with led.group() as g:
            for k in keys:
                g.bond(k, 10_000, profile=digest("profile", b"bench"))
        t0 = time.perf_counter()
        done = 0
        while done < n:
            with led.group() as g:
                for i in range(done, min(n, done + group)):
                    g.reward(keys[i % nodes], 7, ref=f"job-{i}")
            done = min(n, done + group)
        return n / (time.perf_counter() - t0)


def bench_raw_insert(path: Path, n: int) -> dict[str, float]:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute(
        "CREATE TABLE events (seq INTEGER PRIMARY KEY, kind TEXT NOT NULL, payload BLOB NOT NULL,"
        " prev_hash BLOB NOT NULL, hash BLOB NOT NULL)"
    )
    node = bytes(32)
    prev = bytes(32)
    rows = []
    for i in range(1, n + 1):
        payload = encode([node, 7, f"job-{i}"])
        h = event_hash(i, "reward", payload, prev)
        rows.append((i, "reward", payload, prev, h))
        prev = h
    t0 = time.perf_counter()
    conn.execute("BEGIN")
    for r in rows:
        conn.execute("INSERT INTO events VALUES (?,?,?,?,?)", r)
    conn.execute("COMMIT")
    plain = n / (time.perf_counter() - t0)
    conn.execute("DELETE FROM events")
    t0 = time.perf_counter()
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO events VALUES (?,?,?,?,?)", rows)
    conn.execute("COMMIT")
    many = n / (time.perf_counter() - t0)
    conn.close()
    return {"raw_insert_per_s": plain, "raw_executemany_per_s": many}


def bench_bare_chain(path: Path) -> float:
    """Fetch every row and sha256 it, nothing else: the floor for verification."""
    conn = sqlite3.connect(path)
    t0 = time.perf_counter()
    count = 0
    dom = hashlib.sha256(b"posp/ledger-event\x00")
    cur = conn.execute("SELECT seq, kind, payload, prev_hash, hash FROM events ORDER BY seq")
    while rows := cur.fetchmany(8192):
        for _seq, _kind, payload, prev, _h in rows:
            h = dom.copy()
            h.update(payload)
            h.update(prev)
            h.digest()
            count += 1
    conn.close()
    return count / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--settlements", type=int, default=50_000)
    ap.add_argument("--group", type=int, default=2_000)
    ap.add_argument("--nodes", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=3, help="verification runs (best is kept)")
    ap.add_argument("--json", metavar="OUT")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="posp-bench-ledger-") as d:
        path = Path(d) / "bench.db"
        settle = bench_settlements(path, args.settlements, args.group, args.nodes)
        runs = [verify(path) for _ in range(args.repeat)]
        assert all(r.ok for r in runs), runs[0].reason
        best = max(runs, key=lambda r: r.events_per_s)
        bare = max(bench_bare_chain(path) for _ in range(args.repeat))
        raw = bench_raw_insert(Path(d) / "raw.db", args.settlements)
    result = {
        "settlements": args.settlements,
        "group": args.group,
        "settlements_per_s": settle,
        "verify_events": best.events,
        "verify_events_per_s": best.events_per_s,
        "verify_events_per_s_runs": [r.events_per_s for r in runs],
        "bare_fetch_and_hash_per_s": bare,
        **raw,
        "targets": {"settlements_per_s": 20_000, "verify_events_per_s": 200_000},
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "cpus": os.cpu_count(),
    }
    print(f"settlements (group commit of {args.group}): {settle:12,.0f} /s   (target 20,000)")
    print(f"full-chain verification:          {best.events_per_s:12,.0f} events/s "
          f"(target 200,000; {best.events} events)")
    print(f"bare fetch + sha256 per row:      {bare:12,.0f} rows/s")
    print(f"raw SQLite INSERT, one txn:       {raw['raw_insert_per_s']:12,.0f} rows/s")
    print(f"raw SQLite executemany, one txn:  {raw['raw_executemany_per_s']:12,.0f} rows/s")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
