"""The stake ledger: settlements, group commit, versions, verification, audit."""

from __future__ import annotations

import os
import sqlite3
import stat

import pytest

from posp.audit import audit
from posp.digest import digest
from posp.encoding import encode
from posp.errors import (
    ConfigError,
    LedgerError,
    LedgerIntegrityError,
    LedgerVersionError,
    SettlementError,
)
from posp.identity import NodeKey
from posp.ledger import Ledger, event_hash, seed_commitment, verify
from posp.sampling import EpochSeed, decide

COORD = NodeKey.from_seed(b"\x01" * 32)
NODES = [NodeKey.from_seed(bytes([i + 10]) * 32).public for i in range(6)]
PROFILE = digest("test-profile", b"cpu-fp32")
EVIDENCE = digest("test-evidence", b"outputs differ")


def make(tmp_path, name="l.db", **kw):
    kw.setdefault("coordinator_key", COORD)
    kw.setdefault("min_bond", 100)
    kw.setdefault("unbond_epochs", 2)
    kw.setdefault("challenger_share", 0.5)
    return Ledger(tmp_path / name, **kw)


def bonded(tmp_path, n=4, amount=1000, **kw):
    led = make(tmp_path, **kw)
    with led.group() as g:
        for node in NODES[:n]:
            g.bond(node, amount, profile=PROFILE)
    return led


def conserved(led):
    t = led.totals()
    return t["balances"] + t["locked"] + t["burned"] + t["paid_out"] == t["bonded"] + t["minted"]


# ---- hashing ------------------------------------------------------------------------


@pytest.mark.parametrize("seq", [0, 1, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32])
@pytest.mark.parametrize("size", [0, 31, 255, 256, 65535, 65536])
def test_event_hash_is_the_documented_digest(seq, size):
    payload, prev = b"x" * size, b"p" * 32
    assert event_hash(seq, "reward", payload, prev) == digest(
        "ledger-event", encode([seq, "reward", payload, prev])
    )


def test_seed_commitment_matches_sampling():
    s = EpochSeed(b"\x07" * 32)
    assert seed_commitment(bytes(s)) == s.commitment


# ---- creation, versions, keys -----------------------------------------------------------


def test_new_ledger_generates_and_reloads_coordinator_key(tmp_path):
    led = Ledger(tmp_path / "l.db", min_bond=10)
    key_file = tmp_path / "l.db.key"
    assert key_file.exists()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    coordinator = led.coordinator
    led.close()
    with Ledger(tmp_path / "l.db") as again:
        assert again.coordinator == coordinator
        again.bond(NODES[0], 10, profile=PROFILE)  # signs with the key loaded from disk
        assert again.verify().ok


def test_reopen_with_other_parameters_is_refused(tmp_path):
    make(tmp_path).close()
    with pytest.raises(ConfigError, match="min_bond"):
        make(tmp_path, min_bond=5)
    with pytest.raises(LedgerError, match="coordinator"):
        make(tmp_path, coordinator_key=NodeKey.from_seed(b"\x02" * 32))


def test_missing_file_without_create(tmp_path):
    with pytest.raises(LedgerError, match="no ledger"):
        Ledger(tmp_path / "nope.db", create=False)


def test_text_file_is_not_a_ledger(tmp_path):
    p = tmp_path / "notes.txt"
    p.write_text("hello, this is not a database\n" * 20)
    with pytest.raises(LedgerVersionError, match="not a posp ledger"):
        Ledger(p)
    assert p.read_text().startswith("hello")  # untouched
    with pytest.raises(LedgerVersionError):
        verify(p)


def test_sqlite_of_another_app_is_not_a_ledger(tmp_path):
    p = tmp_path / "other.db"
    c = sqlite3.connect(p)
    c.execute("CREATE TABLE t (x)")
    c.commit()
    c.close()
    with pytest.raises(LedgerVersionError, match="not a posp ledger"):
        Ledger(p)


def test_unknown_schema_version(tmp_path):
    make(tmp_path).close()
    c = sqlite3.connect(tmp_path / "l.db")
    c.execute("UPDATE meta SET value=99 WHERE key='schema_version'")
    c.commit()
    c.close()
    with pytest.raises(LedgerVersionError, match="version 99"):
        make(tmp_path)


# ---- settlements ----------------------------------------------------------------------


def test_bond_reward_and_reads(tmp_path):
    led = bonded(tmp_path)
    seq = led.reward(NODES[0], 25, ref="job-1")
    assert led.balance(NODES[0]) == 1025
    acct = led.account(NODES[0])
    assert acct is not None and acct.last_seq == seq and acct.status == "active"
    assert led.is_active(NODES[0]) and not led.is_active(NODES[5])
    assert led.head[0] == seq == 5
    t = led.totals()
    assert (t["bonded"], t["minted"], t["balances"]) == (4000, 25, 4025)
    kinds = [e.kind for e in led.events()]
    assert kinds == ["bond"] * 4 + ["reward"]
    last = list(led.events(start=5))[0]
    assert last["ref"] == "job-1" and last["amount"] == 25 and last.seq == 5
    assert led.summary()["event_counts"] == {"bond": 4, "reward": 1}
    assert led.verify().ok


def test_amounts_are_ints_only(tmp_path):
    led = bonded(tmp_path)
    for bad in (1.5, -1, 0, True, 2**63):
        with pytest.raises(SettlementError):
            led.reward(NODES[0], bad, ref=f"job-{bad}")
    assert led.head[0] == 4


def test_no_job_settled_twice(tmp_path):
    led = bonded(tmp_path)
    led.reward(NODES[0], 5, ref="job-1")
    led.reward(NODES[1], 5, ref="job-1")  # another party of the same job
    head = led.head
    with pytest.raises(SettlementError, match="already settled"):
        led.reward(NODES[0], 5, ref="job-1")
    with pytest.raises(SettlementError, match="already settled"):
        led.slash(NODES[0], 5, ref="job-1", evidence=EVIDENCE)
    assert led.head == head and led.balance(NODES[0]) == 1005
    assert led.is_settled("job-1", NODES[1]) and not led.is_settled("job-2", NODES[1])


def test_unknown_node_cannot_be_rewarded(tmp_path):
    led = bonded(tmp_path, n=1)
    with pytest.raises(SettlementError, match="unknown node"):
        led.reward(NODES[3], 5, ref="j")


def test_group_rolls_back_on_exception(tmp_path):
    led = bonded(tmp_path)
    head = led.head
    with pytest.raises(RuntimeError), led.group() as g:
        g.reward(NODES[0], 5, ref="a")
        g.reward(NODES[1], 5, ref="b")
        raise RuntimeError("crash inside the group")
    assert led.head == head and led.balance(NODES[0]) == 1000
    assert not led.is_settled("a", NODES[0])


def test_caught_settlement_error_inside_group_changes_nothing(tmp_path):
    led = bonded(tmp_path)
    with led.group() as g:
        g.reward(NODES[0], 5, ref="a")
        with pytest.raises(SettlementError):
            g.reward(NODES[0], 5, ref="a")
        assert g.balance(NODES[0]) == 1005
        g.reward(NODES[1], 5, ref="a")
    assert led.head[0] == 6 and led.verify().ok


def test_group_commit_signs_one_head(tmp_path):
    led = bonded(tmp_path)
    with led.group() as g:
        for i in range(100):
            g.reward(NODES[i % 4], 1, ref=f"j{i}")
    c = sqlite3.connect(tmp_path / "l.db")
    heads = [r[0] for r in c.execute("SELECT seq FROM heads ORDER BY seq")]
    assert heads == [0, 4, 104]
    report = led.verify()
    assert report.heads_checked == 3 and report.events == 104


def test_groups_do_not_nest_but_single_calls_join(tmp_path):
    led = bonded(tmp_path)
    with led.group() as g:
        led.reward(NODES[0], 1, ref="x")  # joins the open group
        with pytest.raises(LedgerError, match="nest"), led.group():
            pass
        g.reward(NODES[1], 1, ref="y")
    assert led.head[0] == 6


def test_slash_bounded_shared_and_burned(tmp_path):
    led = bonded(tmp_path, challenger_share=0.5)
    seq = led.slash(NODES[0], 10**6, ref="job-9", evidence=EVIDENCE,
                    challengers=[NODES[1], NODES[2]])
    ev = list(led.events(start=seq))
    slash = ev[0]
    assert slash["amount"] == 1000  # bounded by the stake
    assert slash["challenger_share"] == 250 and slash["burned"] == 500
    assert ev[1].kind == "eject" and ev[1]["reason"] == "below minimum bond"
    assert led.balance(NODES[1]) == 1250 and led.balance(NODES[0]) == 0
    assert not led.is_active(NODES[0])
    assert led.totals()["burned"] == 500 and conserved(led)
    with pytest.raises(SettlementError, match="ejected"):
        led.bond(NODES[0], 1000, profile=PROFILE)
    assert led.verify().ok


def test_slash_rounding_goes_to_burn(tmp_path):
    led = bonded(tmp_path, challenger_share=1 / 3)
    seq = led.slash(NODES[0], 100, ref="j", evidence=EVIDENCE,
                    challengers=[NODES[1], NODES[2], NODES[3]], eject_below_min=False)
    ev = next(iter(led.events(start=seq)))
    assert ev["challenger_share"] == 11 and ev["burned"] == 67
    assert conserved(led) and led.is_active(NODES[0])


def test_unbonding_keeps_stake_locked_and_slashable(tmp_path):
    led = bonded(tmp_path)
    led.epoch_open(1, seed_commitment(b"\x01" * 32))
    led.unbond_request(NODES[0])
    a = led.account(NODES[0])
    assert a.balance == 0 and a.locked == 1000 and a.unlock_epoch == 3
    assert a.status == "unbonding" and not led.is_active(NODES[0])
    with pytest.raises(SettlementError, match="locked until epoch 3"):
        led.unbond_release(NODES[0])
    # a cheater found out after requesting to leave is still slashed
    led.slash(NODES[0], 400, ref="late", evidence=EVIDENCE, challengers=[NODES[1]])
    assert led.account(NODES[0]).locked == 600
    led.epoch_open(2, seed_commitment(b"\x02" * 32))
    with pytest.raises(SettlementError):
        led.unbond_release(NODES[0])
    led.epoch_open(3, seed_commitment(b"\x03" * 32))
    led.unbond_release(NODES[0])
    a = led.account(NODES[0])
    assert a.locked == 0 and a.status == "withdrawn"
    t = led.totals()
    assert t["paid_out"] == 600 and conserved(led)
    led.bond(NODES[0], 500, profile=PROFILE)  # may come back
    assert led.is_active(NODES[0]) and led.verify().ok


def test_liveness_never_moves_stake(tmp_path):
    led = bonded(tmp_path)
    before = led.totals()
    led.liveness(NODES[0], ref="job-3", reason="crash")
    led.liveness(NODES[0], ref="job-3", reason="timeout")
    led.drift("job-4", [NODES[0], NODES[1]], metric="max_abs", distance=5.8e-7)
    led.dispute("job-5", ["majority", 2, 1])
    led.note("operator restarted", {"why": "test"} and ["why", "test"])
    led.liveness(NODES[0], ref="job-3", reason="bad_receipt")
    with pytest.raises(SettlementError):
        led.liveness(NODES[0], ref="job-3", reason="")
    assert led.totals() == before and led.verify().ok


def test_epoch_reveal_must_match(tmp_path):
    led = bonded(tmp_path)
    s = EpochSeed(b"\x05" * 32)
    led.epoch_open(1, s.commitment)
    with pytest.raises(SettlementError, match="commitment"):
        led.epoch_reveal(1, b"\x06" * 32)
    with pytest.raises(SettlementError, match="not after"):
        led.epoch_open(1, s.commitment)
    assert led.unrevealed_epochs() == [(1, s.commitment)]
    led.epoch_reveal(1, bytes(s))
    assert led.unrevealed_epochs() == []
    with pytest.raises(SettlementError, match="already revealed"):
        led.epoch_reveal(1, bytes(s))
    with pytest.raises(SettlementError, match="not open"):
        led.decision(1, NODES[0], EVIDENCE, count=1, rates_ppb=[10], sampled=[])
    assert led.epoch == 1 and led.verify().ok


# ---- verification -------------------------------------------------------------------


def _tamper(path, sql, *args):
    c = sqlite3.connect(path)
    c.execute(sql, args)
    c.commit()
    c.close()


def _ledger_with_history(tmp_path):
    led = bonded(tmp_path)
    for i in range(20):
        led.reward(NODES[i % 4], 3, ref=f"job-{i}")  # one group, one head, per event
    led.close()
    return tmp_path / "l.db"


def test_verify_detects_edited_payload(tmp_path):
    p = _ledger_with_history(tmp_path)
    _tamper(p, "UPDATE events SET payload=? WHERE seq=10", encode([bytes(NODES[0]), 9999, "x"]))
    r = verify(p)
    assert not r.ok and r.first_bad_seq == 10
    with make(tmp_path) as led, pytest.raises(LedgerIntegrityError) as info:
        led.verify()
    assert info.value.seq == 10


def test_verify_detects_accounts_table_edit(tmp_path):
    p = _ledger_with_history(tmp_path)
    _tamper(p, "UPDATE accounts SET balance=balance+1000000 WHERE node=?", bytes(NODES[1]))
    r = verify(p)
    assert not r.ok and "accounts" in r.reason


def test_verify_expect_head(tmp_path):
    p = _ledger_with_history(tmp_path)
    with make(tmp_path) as led:
        seq, h = led.head
    assert verify(p, expect_head=h).ok
    assert verify(p, expect_head=f"{seq}:{h}").ok
    with pytest.raises(ConfigError):
        verify(p, expect_head="zz")


# ---- audit ----------------------------------------------------------------------------


def _audited_ledger(tmp_path):
    led = bonded(tmp_path)
    seeds = [EpochSeed(bytes([e]) * 32) for e in range(1, 4)]
    for e, s in enumerate(seeds, start=1):
        led.epoch_open(e, s.commitment)
        for k in range(3):
            commitment = digest("batch", bytes([e, k]))
            ppb = [300_000_000, 500_000_000, 1_000_000_000, 0] * 4
            flags = decide(s, commitment, ppb=ppb)
            led.decision(e, NODES[k], commitment, count=len(ppb), rates_ppb=ppb,
                         sampled=[i for i, f in enumerate(flags) if f])
        if e < 3:
            led.epoch_reveal(e, bytes(s))
    return led


def test_audit_clean(tmp_path):
    led = _audited_ledger(tmp_path)
    r = audit(led)
    assert r.ok and r.decisions_checked == 6 and r.decisions_unauditable == 3
    assert r.unauditable_epochs == [3] and r.epochs_closed == 2 and r.jobs_checked == 96


def test_audit_flags_a_tampered_decision(tmp_path):
    led = _audited_ledger(tmp_path)
    led.close()
    p = tmp_path / "l.db"
    c = sqlite3.connect(p)
    seq, payload = c.execute(
        "SELECT seq, payload FROM events WHERE kind='decision' ORDER BY seq LIMIT 1"
    ).fetchone()
    c.close()
    from posp.encoding import decode

    v = decode(payload, records=False)
    v[5] = [i for i in range(v[3]) if i not in v[5]][:1] + v[5][1:]  # swap a sampled job
    v[5] = sorted(set(v[5]))
    _tamper(p, "UPDATE events SET payload=? WHERE seq=?", encode(v), seq)
    r = audit(p)
    assert not r.ok and [m.seq for m in r.mismatches] == [seq]
    assert verify(p).first_bad_seq == seq


def test_decision_validation(tmp_path):
    led = bonded(tmp_path)
    led.epoch_open(1, seed_commitment(b"\x01" * 32))
    with pytest.raises(SettlementError):
        led.decision(1, NODES[0], EVIDENCE, count=2, rates_ppb=[1], sampled=[])
    with pytest.raises(SettlementError):
        led.decision(1, NODES[0], EVIDENCE, count=2, rates_ppb=[1, 2], sampled=[2])
    with pytest.raises(SettlementError):
        led.decision(1, NODES[0], EVIDENCE, count=2, rates_ppb=[1, 2 * 10**9], sampled=[])
    with pytest.raises(SettlementError, match="not open"):
        led.decision(7, NODES[0], EVIDENCE, count=1, rates_ppb=[1], sampled=[])


def test_close_is_idempotent(tmp_path):
    led = bonded(tmp_path)
    led.close()
    led.close()
    with pytest.raises(LedgerError):
        led.reward(NODES[0], 1, ref="after-close")
    assert os.path.exists(tmp_path / "l.db")


def test_in_memory_ledgers_write_no_key_file(tmp_path, monkeypatch) -> None:
    from posp.ledger import Ledger

    monkeypatch.chdir(tmp_path)
    a, b = Ledger(":memory:"), Ledger(":memory:")  # two at once: no clash over a file
    for led in (a, b):
        with led.group() as g:
            g.note("hello")
    assert list(tmp_path.iterdir()) == []


def test_hot_path_payloads_are_the_canonical_encoding(tmp_path):
    # reward and decision pack their checked values as they are (encode_flat): the bytes
    # must be exactly encode(values), or an audit that re-encodes would disagree
    led = bonded(tmp_path)
    led.epoch_open(1, seed_commitment(b"\x01" * 32))
    big = 2**63 - 1 - 10**6
    led.reward(NODES[0], big, ref="r-\u00e9\u4e2d")
    led.reward(NODES[1], 1, ref="x" * 200)
    led.decision(1, NODES[0], EVIDENCE, count=3, rates_ppb=[0, 10**9, 127],
                 sampled=[0, 2], roles=b"fv-")
    with pytest.raises(SettlementError, match="surrogate"):
        led.reward(NODES[0], 1, ref="bad-\ud800")  # a typed error, not UnicodeEncodeError
    rows = sqlite3.connect(tmp_path / "l.db").execute(
        "SELECT kind, payload FROM events WHERE kind IN ('reward', 'decision') ORDER BY seq"
    ).fetchall()
    assert [k for k, _ in rows] == ["reward", "reward", "decision"]
    assert rows[0][1] == encode([bytes(NODES[0]), big, "r-\u00e9\u4e2d"])
    assert rows[1][1] == encode([bytes(NODES[1]), 1, "x" * 200])
    assert rows[2][1] == encode([1, bytes(NODES[0]), EVIDENCE, 3, [0, 10**9, 127], [0, 2], b"fv-"])
    assert verify(tmp_path / "l.db").ok
