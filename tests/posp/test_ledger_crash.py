"""Crash safety: a writer killed with SIGKILL at random instants never loses a commit it
reported and never leaves half a group behind (hard truth 5)."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from posp.ledger import verify

GROUP = 16
KILLS = 30

WRITER = f"""
import sys
from posp.identity import NodeKey
from posp.ledger import Ledger
from posp.digest import digest

G = {GROUP}
led = Ledger(sys.argv[1], coordinator_key=NodeKey.from_seed(b"\\x33" * 32), min_bond=10)
nodes = [NodeKey.from_seed(bytes([i + 1]) * 32).public for i in range(G)]
if led.head[0] == 0:
    with led.group() as g:
        for n in nodes:
            g.bond(n, 100, profile=digest("profile", b"p"))
    print(led.head[0], flush=True)
while True:
    start = led.head[0]
    with led.group() as g:
        for i in range(G):
            g.reward(nodes[i], 1, ref=f"job-{{start + i}}")
    # reported only after the group's transaction returned
    print(start + G, flush=True)
"""


@pytest.mark.slow
def test_sigkill_at_random_points_loses_nothing_committed(tmp_path):
    path = tmp_path / "crash.db"
    rng = random.Random(20240531)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([os.getcwd(), env.get("PYTHONPATH", "")])
    reported = 0
    deadline = time.monotonic() + 90
    kills = 0
    while kills < KILLS and time.monotonic() < deadline:
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        assert proc.stdout is not None
        lines = rng.randint(0, 4)
        seen = []
        for _ in range(lines):
            line = proc.stdout.readline()
            if not line:
                break
            seen.append(int(line))
        time.sleep(rng.uniform(0, 0.03))
        os.kill(proc.pid, signal.SIGKILL)
        rest, err = proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL, err.decode()
        seen += [int(x) for x in rest.split()]
        kills += 1
        if seen:
            reported = max(reported, max(seen))
        if not path.exists():
            continue
        report = verify(path)
        assert report.ok, (kills, report.first_bad_seq, report.reason)
        assert report.events >= reported, (report.events, reported)
        assert report.events % GROUP == 0, report.events  # nothing half-written
        c = sqlite3.connect(path)
        heads = [r[0] for r in c.execute("SELECT seq FROM heads ORDER BY seq")]
        c.close()
        assert heads == list(range(0, report.events + 1, GROUP))
    assert kills >= 25 and reported > 0
