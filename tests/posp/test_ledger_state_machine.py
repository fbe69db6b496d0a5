"""The ledger against a plain dict model: balances never negative, stake conserved, no job
settled twice, history never rewritten."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from posp.digest import digest
from posp.errors import SettlementError
from posp.identity import NodeKey
from posp.ledger import Ledger, seed_commitment

COORD = NodeKey.from_seed(b"\x44" * 32)
NODES = [bytes(NodeKey.from_seed(bytes([i + 70]) * 32).public) for i in range(4)]
PROFILE = digest("profile", b"p")
EVIDENCE = digest("evidence", b"e")
MIN_BOND = 50
UNBOND = 2
SHARE_PPB = 400_000_000

node_idx = st.integers(0, len(NODES) - 1)
amounts = st.integers(1, 400)
refs = st.sampled_from([f"job-{i}" for i in range(6)])


class LedgerMachine(RuleBasedStateMachine):
    @initialize()
    def start(self):
        self.dir = Path(tempfile.mkdtemp(prefix="posp-ledger-sm-"))
        self.led = Ledger(self.dir / "l.db", coordinator_key=COORD, min_bond=MIN_BOND,
                          unbond_epochs=UNBOND, challenger_share=SHARE_PPB / 1e9)
        # model: node -> [balance, locked, status, unlock]
        self.acc: dict[bytes, list] = {}
        self.settled: set[tuple[str, bytes]] = set()
        self.t = {"bonded": 0, "minted": 0, "burned": 0, "paid_out": 0}
        self.epoch = 0
        self.history: list[tuple[bytes, bytes]] = []

    def teardown(self):
        if hasattr(self, "led"):
            self.led.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    def _expect_error(self, fn):
        head = self.led.head
        try:
            fn()
        except SettlementError:
            assert self.led.head == head  # a refused settlement changes nothing
            return True
        return False

    @rule(i=node_idx, amount=amounts)
    def bond(self, i, amount):
        n = NODES[i]
        a = self.acc.get(n)
        ok = (a is None and amount >= MIN_BOND) or (
            a is not None and a[2] == "active"
        ) or (a is not None and a[2] == "withdrawn" and a[0] + amount >= MIN_BOND)
        refused = self._expect_error(lambda: self.led.bond(n, amount, profile=PROFILE))
        assert refused == (not ok)
        if ok:
            if a is None:
                self.acc[n] = [amount, 0, "active", None]
            else:
                a[0] += amount
                a[2] = "active"
            self.t["bonded"] += amount

    @rule(i=node_idx, amount=amounts, ref=refs)
    def reward(self, i, amount, ref):
        n = NODES[i]
        ok = n in self.acc and (ref, n) not in self.settled
        refused = self._expect_error(lambda: self.led.reward(n, amount, ref=ref))
        assert refused == (not ok)
        if ok:
            self.acc[n][0] += amount
            self.t["minted"] += amount
            self.settled.add((ref, n))

    @rule(i=node_idx, c=node_idx, amount=st.integers(1, 3000), ref=refs)
    def slash(self, i, c, amount, ref):
        n, ch = NODES[i], NODES[c]
        challengers = [ch] if ch != n and ch in self.acc else []
        ok = n in self.acc and (ref, n) not in self.settled
        refused = self._expect_error(
            lambda: self.led.slash(n, amount, ref=ref, evidence=EVIDENCE, challengers=challengers)
        )
        assert refused == (not ok)
        if ok:
            a = self.acc[n]
            actual = min(amount, a[0] + a[1])
            each = (actual * SHARE_PPB // 10**9) if challengers else 0
            take = min(actual, a[0])
            a[0] -= take
            a[1] -= actual - take
            if challengers:
                self.acc[ch][0] += each
            self.t["burned"] += actual - each
            self.settled.add((ref, n))
            if a[2] == "active" and a[0] < MIN_BOND:
                a[2] = "ejected"

    @rule(i=node_idx)
    def unbond(self, i):
        n = NODES[i]
        a = self.acc.get(n)
        ok = a is not None and a[1] == 0 and a[0] > 0
        refused = self._expect_error(lambda: self.led.unbond_request(n))
        assert refused == (not ok)
        if ok:
            a[1], a[0] = a[0], 0
            a[3] = self.epoch + UNBOND
            if a[2] == "active":
                a[2] = "unbonding"

    @rule(i=node_idx)
    def release(self, i):
        n = NODES[i]
        a = self.acc.get(n)
        ok = a is not None and a[1] > 0 and self.epoch >= a[3]
        refused = self._expect_error(lambda: self.led.unbond_release(n))
        assert refused == (not ok)
        if ok:
            self.t["paid_out"] += a[1]
            a[1] = 0
            if a[2] == "unbonding" and a[0] == 0:
                a[2] = "withdrawn"

    @rule()
    def next_epoch(self):
        self.epoch += 1
        seed = bytes([self.epoch % 256]) * 32
        with self.led.group() as g:
            g.epoch_open(self.epoch, seed_commitment(seed))
            g.epoch_reveal(self.epoch, seed)

    @rule(i=node_idx)
    def liveness(self, i):
        self.led.liveness(NODES[i], ref="job-0", reason="timeout")

    @invariant()
    def matches_model(self):
        if not hasattr(self, "led"):
            return
        for n, (bal, locked, status, _unlock) in self.acc.items():
            a = self.led.account(n)
            assert a is not None
            assert a.balance >= 0 and a.locked >= 0
            assert (a.balance, a.locked, a.status) == (bal, locked, status)
        t = self.led.totals()
        for k, v in self.t.items():
            assert t[k] == v, k
        assert t["balances"] + t["locked"] + t["burned"] + t["paid_out"] == (
            t["bonded"] + t["minted"]
        )

    @invariant()
    def history_is_append_only(self):
        if not hasattr(self, "led"):
            return
        now = [(e.payload, e.hash) for e in self.led.events()]
        assert now[: len(self.history)] == self.history
        self.history = now


LedgerMachine.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestLedgerStateMachine = LedgerMachine.TestCase


def test_final_state_verifies(tmp_path):
    """One long deterministic run, then a full verification."""
    with Ledger(tmp_path / "l.db", coordinator_key=COORD, min_bond=MIN_BOND) as led:
        for n in NODES:
            led.bond(n, 500, profile=PROFILE)
        for k in range(40):
            led.reward(NODES[k % 4], 3, ref=f"r{k}")
        led.slash(NODES[0], 10_000, ref="s", evidence=EVIDENCE, challengers=NODES[1:])
        assert led.verify().ok
