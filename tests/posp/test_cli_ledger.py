"""``posp ledger show|verify|audit``: exit codes and the first bad event of a tampered file."""

from __future__ import annotations

import json
import re
import sqlite3

import pytest

from posp.cli import main
from posp.digest import digest
from posp.encoding import decode, encode
from posp.identity import NodeKey
from posp.ledger import Ledger, event_hash
from posp.sampling import EpochSeed, decide

COORD = NodeKey.from_seed(b"\x21" * 32)
NODES = [NodeKey.from_seed(bytes([i + 40]) * 32).public for i in range(4)]
PROFILE = digest("test-profile", b"cpu")
EVENTS = 30


@pytest.fixture
def ledger_path(tmp_path):
    """A ledger of EVENTS events, one commit (and one signed head) per event."""
    p = tmp_path / "l.db"
    with Ledger(p, coordinator_key=COORD, min_bond=100) as led:
        for n in NODES:
            led.bond(n, 1000, profile=PROFILE)
        seed = EpochSeed(b"\x09" * 32)
        led.epoch_open(1, seed.commitment)
        for i in range(EVENTS - len(NODES) - 4):
            led.reward(NODES[i % 4], 7, ref=f"job-{i}")
        commitment = digest("batch", b"b1")
        ppb = [500_000_000] * 8
        flags = decide(seed, commitment, ppb=ppb)
        led.decision(1, NODES[0], commitment, count=8, rates_ppb=ppb,
                     sampled=[i for i, f in enumerate(flags) if f])
        led.epoch_reveal(1, bytes(seed))
        led.note("end")
        assert led.head[0] == EVENTS
    return p


def sql(path, query, *args):
    c = sqlite3.connect(path)
    rows = c.execute(query, args).fetchall()
    c.commit()
    c.close()
    return rows


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def first_bad(out):
    m = re.search(r"first bad event (\d+)", out)
    return int(m.group(1)) if m else None


def test_show(ledger_path, tmp_path, capsys):
    code, out, err = run(capsys, "ledger", "show", str(ledger_path), "--json",
                         str(tmp_path / "s.json"))
    assert code == 0, err
    assert "reward 22" in out and f"head: {EVENTS}:" in out
    data = json.loads((tmp_path / "s.json").read_text())
    assert data["events"] == EVENTS and len(data["accounts_table"]) == 4


def test_verify_intact(ledger_path, tmp_path, capsys):
    code, out, _ = run(capsys, "ledger", "verify", str(ledger_path), "--json",
                       str(tmp_path / "v.json"))
    assert code == 0 and f"intact: {EVENTS} events verified" in out
    data = json.loads((tmp_path / "v.json").read_text())
    assert data["ok"] and data["head_seq"] == EVENTS


def test_edited_payload(ledger_path, capsys):
    sql(ledger_path, "UPDATE events SET payload=? WHERE seq=12",
        encode([bytes(NODES[0]), 10**6, "job-x"]))
    code, out, _ = run(capsys, "ledger", "verify", str(ledger_path))
    assert code == 1 and first_bad(out) == 12


def test_flipped_byte(ledger_path, capsys):
    (payload,) = sql(ledger_path, "SELECT payload FROM events WHERE seq=17")[0]
    flipped = bytearray(payload)
    flipped[5] ^= 0x01
    sql(ledger_path, "UPDATE events SET payload=? WHERE seq=17", bytes(flipped))
    code, out, _ = run(capsys, "ledger", "verify", str(ledger_path))
    assert code == 1 and first_bad(out) == 17


def test_flipped_hash_byte(ledger_path, capsys):
    (h,) = sql(ledger_path, "SELECT hash FROM events WHERE seq=9")[0]
    sql(ledger_path, "UPDATE events SET hash=? WHERE seq=9", bytes([h[0] ^ 0x80]) + h[1:])
    code, out, _ = run(capsys, "ledger", "verify", str(ledger_path))
    assert code == 1 and first_bad(out) == 9


def test_deleted_row(ledger_path, capsys):
    sql(ledger_path, "DELETE FROM events WHERE seq=8")
    code, out, _ = run(capsys, "ledger", "verify", str(ledger_path))
    assert code == 1 and first_bad(out) == 8


def test_reordered_rows(ledger_path, capsys):
    a = sql(ledger_path, "SELECT kind, payload, prev_hash, hash FROM events WHERE seq=14")[0]
    b = sql(ledger_path, "SELECT kind, payload, prev_hash, hash FROM events WHERE seq=15")[0]
    sql(ledger_path, "UPDATE events SET kind=?, payload=?, prev_hash=?, hash=? WHERE seq=14", *b)
    sql(ledger_path, "UPDATE events SET kind=?, payload=?, prev_hash=?, hash=? WHERE seq=15", *a)
    code, out, _ = run(capsys, "ledger", "verify", str(ledger_path))
    assert code == 1 and first_bad(out) == 14


def test_inserted_row_at_the_end(ledger_path, capsys):
    (h,) = sql(ledger_path, "SELECT hash FROM events WHERE seq=?", EVENTS)[0]
    payload = encode([bytes(NODES[1]), 500, "forged"])
    new = event_hash(EVENTS + 1, "reward", payload, h)
    sql(ledger_path, "INSERT INTO events VALUES (?,?,?,?,?)", EVENTS + 1, "reward", payload, h, new)
    code, out, _ = run(capsys, "ledger", "verify", str(ledger_path))
    assert code == 1 and first_bad(out) == EVENTS + 1


def test_rechained_edit(ledger_path, capsys):
    """An attacker edits event 11 and recomputes every later hash: the signed heads catch it."""
    rows = sql(ledger_path, "SELECT seq, kind, payload, prev_hash FROM events ORDER BY seq")
    prev = None
    for seq, kind, payload, prev_hash in rows:
        if seq < 11:
            continue
        if seq == 11:
            v = decode(payload, records=False)
            v[1] = v[1] + 1000
            payload = encode(v)
            prev = prev_hash
        h = event_hash(seq, kind, payload, prev)
        sql(ledger_path, "UPDATE events SET payload=?, prev_hash=?, hash=? WHERE seq=?",
            payload, prev, h, seq)
        prev = h
    code, out, _ = run(capsys, "ledger", "verify", str(ledger_path))
    assert code == 1 and first_bad(out) == 11


def test_truncation_needs_expect_head(ledger_path, capsys):
    code, out, _ = run(capsys, "ledger", "verify", str(ledger_path))
    head = re.search(r"head (\d+:[0-9a-f]{64})", out).group(1)
    sql(ledger_path, "DELETE FROM events WHERE seq > 20")
    sql(ledger_path, "DELETE FROM heads WHERE seq > 20")
    sql(ledger_path, "DELETE FROM settled WHERE seq > 20")
    # (the tables no longer match the replay either; the expected head is checked first)
    with Ledger(ledger_path, create=False) as led:
        assert led.head[0] == 20
    code, out, _ = run(capsys, "ledger", "verify", str(ledger_path), "--expect-head", head)
    assert code == 1 and first_bad(out) == 21
    code, out, _ = run(capsys, "ledger", "verify", str(ledger_path), "--expect-head",
                       head.split(":")[1])
    assert code == 1 and first_bad(out) == 21


def test_truncation_with_rebuilt_tables_passes_without_expect_head(tmp_path, capsys):
    p = tmp_path / "t.db"
    with Ledger(p, coordinator_key=COORD, min_bond=100) as led:
        for n in NODES:
            led.bond(n, 1000, profile=PROFILE)
        early = led.head
        for i in range(5):
            led.reward(NODES[0], 7, ref=f"j{i}")
        late = led.head
    # roll the whole file back to the state at `early`: events, heads and tables
    sql(p, "DELETE FROM events WHERE seq > ?", early[0])
    sql(p, "DELETE FROM heads WHERE seq > ?", early[0])
    sql(p, "DELETE FROM settled")
    sql(p, "UPDATE accounts SET balance=1000, last_seq=1 WHERE node=?", bytes(NODES[0]))
    sql(p, "UPDATE totals SET value=0 WHERE name='minted'")
    code, out, _ = run(capsys, "ledger", "verify", str(p))
    assert code == 0  # indistinguishable from the file alone
    code, out, _ = run(capsys, "ledger", "verify", str(p), "--expect-head", f"{late[0]}:{late[1]}")
    assert code == 1 and first_bad(out) == early[0] + 1
    code, out, _ = run(capsys, "ledger", "verify", str(p), "--expect-head", f"{early[0]}:{early[1]}")
    assert code == 0


def test_audit_ok_and_tampered(ledger_path, capsys):
    code, out, _ = run(capsys, "ledger", "audit", str(ledger_path))
    assert code == 0 and "audit ok" in out and "1 decisions checked (8 jobs)" in out
    seq, payload = sql(ledger_path, "SELECT seq, payload FROM events WHERE kind='decision'")[0]
    v = decode(payload, records=False)
    v[5] = [i for i in range(8) if i not in v[5]]  # the complement: every decision flipped
    sql(ledger_path, "UPDATE events SET payload=? WHERE seq=?", encode(v), seq)
    code, out, _ = run(capsys, "ledger", "audit", str(ledger_path))
    assert code == 1 and f"MISMATCH: event {seq}" in out


@pytest.mark.parametrize("action", ["show", "verify", "audit"])
def test_missing_and_foreign_files_exit_2(tmp_path, capsys, action):
    code, out, err = run(capsys, "ledger", action, str(tmp_path / "missing.db"))
    assert code == 2 and "no ledger" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    text = tmp_path / "notes.txt"
    text.write_text("not a database at all\n" * 50)
    code, out, err = run(capsys, "ledger", action, str(text))
    assert code == 2 and "not a posp ledger" in err
    assert len(err.strip().splitlines()) == 1
    other = tmp_path / "other.db"
    c = sqlite3.connect(other)
    c.execute("CREATE TABLE things (x)")
    c.commit()
    c.close()
    code, out, err = run(capsys, "ledger", action, str(other))
    assert code == 2 and "not a posp ledger" in err


def test_no_action_exits_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["ledger"])
    assert info.value.code == 2


def test_bad_expect_head_exits_2(ledger_path, capsys):
    code, _, err = run(capsys, "ledger", "verify", str(ledger_path), "--expect-head", "nothex")
    assert code == 2 and "expect_head" in err
