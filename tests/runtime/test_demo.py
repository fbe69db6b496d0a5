"""`posp demo` end to end on the shared Ray instance, then the ledger it wrote is attacked."""

from __future__ import annotations

import json
import re
import sqlite3

import pytest

from posp.cli import main
from posp.ledger import event_hash

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def demo_run(ray_session, tmp_path_factory):
    d = tmp_path_factory.mktemp("demo")
    ledger, report = d / "L.db", d / "R.json"
    code = main(["demo", "--nodes", "6", "--cheaters", "2", "--tasks", "600",
                 "--sample-rate", "0.2", "--seed", "7", "--ledger", str(ledger),
                 "--json", str(report), "--quiet"])
    assert code == 0
    return ledger, json.loads(report.read_text())


def test_demo_report(demo_run):
    _ledger, rep = demo_run
    assert rep["honest_slashed"] == 0
    assert rep["cheaters_slashed"] == 2
    for key, typ in [("tasks", int), ("sampled", int), ("disputes", int), ("cheaters", int),
                     ("cheaters_slashed", int), ("honest_slashed", int), ("ledger", str),
                     ("ledger_head", str), ("nodes", list)]:
        assert isinstance(rep[key], typ), key
    assert rep["tasks"] == 600 and rep["cheaters"] == 2
    assert re.fullmatch(r"[0-9a-f]{64}", rep["ledger_head"])
    assert 0 < rep["sampled"] < 600 and rep["disputes"] >= 2
    for n in rep["nodes"]:
        assert set(n) == {"id", "role", "slashed", "stake_before", "stake_after",
                          "tasks_to_detection"}
        assert n["role"] in ("honest", "cheater")
        if n["role"] == "honest":
            assert n["slashed"] is False and n["tasks_to_detection"] is None
            assert n["stake_after"] >= n["stake_before"]
        else:
            assert n["slashed"] is True and isinstance(n["tasks_to_detection"], int)
            assert n["stake_after"] < n["stake_before"]


def _verify(capsys, path, *extra):
    code = main(["ledger", "verify", str(path), *extra])
    out, _err = capsys.readouterr()
    return code, out


def _copy(src, dst):
    a, b = sqlite3.connect(src), sqlite3.connect(dst)
    a.backup(b)
    a.close()
    b.close()
    return dst


def _rows(path):
    c = sqlite3.connect(path)
    rows = c.execute("SELECT seq, kind, payload, prev_hash, hash FROM events ORDER BY seq").fetchall()
    c.close()
    return rows


def test_intact_ledger_verifies_and_audits(demo_run, capsys):
    ledger, rep = demo_run
    code, out = _verify(capsys, ledger, "--expect-head", rep["ledger_head"])
    assert code == 0, out
    assert main(["ledger", "audit", str(ledger)]) == 0


def test_edited_row_is_caught(demo_run, tmp_path, capsys):
    ledger, _ = demo_run
    p = _copy(ledger, tmp_path / "edit.db")
    seq = next(s for s, kind, *_ in _rows(p) if kind == "slash")
    c = sqlite3.connect(p)
    (payload,) = c.execute("SELECT payload FROM events WHERE seq=?", (seq,)).fetchone()
    edited = payload[:-1] + bytes([payload[-1] ^ 1])  # the evidence digest's last byte
    c.execute("UPDATE events SET payload=? WHERE seq=?", (edited, seq))
    c.commit()
    c.close()
    code, out = _verify(capsys, p)
    assert code == 1 and f"first bad event {seq}" in out


def test_flipped_byte_is_caught(demo_run, tmp_path, capsys):
    ledger, _ = demo_run
    p = _copy(ledger, tmp_path / "flip.db")
    rows = _rows(p)
    seq, _kind, _payload, _prev, h = rows[len(rows) // 2]
    c = sqlite3.connect(p)
    c.execute("UPDATE events SET hash=? WHERE seq=?", (bytes([h[0] ^ 1]) + h[1:], seq))
    c.commit()
    c.close()
    code, out = _verify(capsys, p)
    assert code == 1 and "first bad event" in out


def test_rechained_edit_is_caught_by_the_signed_head(demo_run, tmp_path, capsys):
    ledger, _ = demo_run
    p = _copy(ledger, tmp_path / "rechain.db")
    rows = _rows(p)
    k = next(i for i, r in enumerate(rows) if r[1] == "slash")
    c = sqlite3.connect(p)
    prev = rows[k][3]
    for i in range(k, len(rows)):
        seq, kind, payload, _p, _h = rows[i]
        if i == k:
            payload = payload[:-1] + bytes([payload[-1] ^ 1])
        h = event_hash(seq, kind, payload, prev)
        c.execute("UPDATE events SET payload=?, prev_hash=?, hash=? WHERE seq=?",
                  (payload, prev, h, seq))
        prev = h
    c.commit()
    c.close()
    code, out = _verify(capsys, p)
    assert code == 1 and "first bad event" in out


def test_truncation_needs_the_kept_head(demo_run, tmp_path, capsys):
    ledger, rep = demo_run
    p = _copy(ledger, tmp_path / "trunc.db")
    c = sqlite3.connect(p)
    (last_head,) = c.execute("SELECT max(seq) FROM heads WHERE seq < "
                             "(SELECT max(seq) FROM heads)").fetchone()
    c.close()
    # cut the chain back to an earlier signed head: the head the user kept reveals it
    # (tests/posp/test_cli_ledger.py also rebuilds the derived tables, as a careful
    # attacker would, and shows --expect-head is then the only thing that catches it)
    c = sqlite3.connect(p)
    c.execute("DELETE FROM events WHERE seq > ?", (last_head,))
    c.execute("DELETE FROM heads WHERE seq > ?", (last_head,))
    c.commit()
    c.close()
    code, out = _verify(capsys, p, "--expect-head", f"{rep['ledger_head_seq']}:{rep['ledger_head']}")
    assert code == 1 and "first bad event" in out


@pytest.mark.parametrize("argv", [
    ["--sample-rate", "1.5"],
    ["--cheat-rate", "-0.1"],
    ["--nodes", "3", "--cheaters", "4"],
    ["--ledger", "/nonexistent-dir/x.db"],
    ["--json", "/nonexistent-dir/r.json"],
])
def test_bad_flags_exit_2(argv, capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        code = main(["demo", "--quiet", "--ledger", str(tmp_path / "l.db"), *argv])
        raise SystemExit(code)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip()
