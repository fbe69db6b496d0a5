"""The stake ledger: the system of record for bonds, rewards, slashes and ejections.

One SQLite file (standard library, WAL journal, ``synchronous=FULL``) holds:

``meta``      schema version, the coordinator's public key, the parameters, the genesis hash
``accounts``  node public key -> balance, locked stake, status, profile digest, epochs
``events``    the append-only, hash-chained history: ``seq, kind, payload, prev_hash, hash``
``heads``     chain heads ``(seq, hash)`` signed by the coordinator at every commit
``settled``   ``(job ref, node) -> seq``: no party of a job is settled twice
``epochs``    epoch -> seed commitment, revealed seed
``totals``    bonded, minted, burned, paid out, slashed, paid to challengers

Every settlement is one atomic transaction; many settlements share one (group commit)::

    with ledger.group() as g:
        g.reward(node_a, 10, ref="job-1")
        g.reward(node_b, 10, ref="job-2")
    # committed (and the new head signed) here; an exception inside rolls back everything

Each event's payload is the canonical encoding of a list (:func:`posp.encoding.encode`);
``hash = digest("ledger-event", encode([seq, kind, payload, prev_hash]))`` and the first
event's ``prev_hash`` is the genesis hash, a digest of the schema version, coordinator key
and parameters. The coordinator signs ``digest("ledger-head", encode([seq, hash]))`` inside
the same transaction as the events it covers, so a crash leaves either the whole group
with its signed head or nothing of it.

Amounts are Python ints (stake units) below 2**63. A slash is bounded by the node's stake
(balance then locked), pays ``challenger_share`` of it to the honest challengers (split
evenly, rounding down) and burns the rest. Conservation always holds::

    sum(balance) + sum(locked) + burned + paid_out == bonded + minted

:func:`verify` re-walks the chain (hashes, head signatures), replays every event with
plain dicts and compares the result with the tables. A truncation back to an earlier
signed head cannot be seen from the file alone: pass the head you kept (``expect_head``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .digest import digest
from .encoding import decode, encode, encode_flat
from .errors import (
    BadSignature,
    ConfigError,
    LedgerError,
    LedgerIntegrityError,
    LedgerVersionError,
    MalformedMessage,
    SettlementError,
)
from .identity import NodeKey, PublicKey

__all__ = [
    "EVENT_FIELDS",
    "LIVENESS_REASONS",
    "SCHEMA_VERSION",
    "STATUSES",
    "Account",
    "Event",
    "Group",
    "Ledger",
    "VerifyReport",
    "event_hash",
    "head_message",
    "seed_commitment",
    "verify",
]

SCHEMA_VERSION = 1
_FORMAT = "posp-ledger"
_APPLICATION_ID = 0x706F5350  # "poSP": marks the SQLite file as a posp ledger
_MAX_AMOUNT = 2**63 - 1
_MAX_REF = 256
_PPB = 1_000_000_000
_ZERO32 = bytes(32)

#: account statuses. Only an ``active`` node with at least the minimum bond gets work.
STATUSES = ("active", "unbonding", "ejected", "withdrawn")

#: event kind -> names of the payload list's items, in order
EVENT_FIELDS: dict[str, tuple[str, ...]] = {
    "bond": ("node", "amount", "profile"),
    "reward": ("node", "amount", "ref"),
    "slash": ("node", "amount", "challengers", "challenger_share", "burned", "ref", "evidence"),
    "eject": ("node", "reason"),
    "unbond_request": ("node", "amount", "unlock_epoch"),
    "unbond_release": ("node", "amount"),
    "epoch_open": ("epoch", "commitment"),
    "epoch_reveal": ("epoch", "seed"),
    "liveness": ("node", "ref", "reason"),
    "drift": ("ref", "nodes", "metric", "distance"),
    "dispute": ("ref", "outcome"),
    "decision": ("epoch", "node", "commitment", "count", "rates_ppb", "sampled", "roles"),
    "note": ("text", "data"),
}
#: the usual liveness reasons; any short string is accepted (e.g. "bad_receipt")
LIVENESS_REASONS = frozenset({"crash", "timeout", "bad_receipt"})
_TOTAL_NAMES = ("bonded", "minted", "burned", "paid_out", "slashed", "challenger_paid")

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value NOT NULL) WITHOUT ROWID;
CREATE TABLE accounts (
    node BLOB PRIMARY KEY, balance INTEGER NOT NULL, locked INTEGER NOT NULL,
    status TEXT NOT NULL, profile BLOB NOT NULL, registered_epoch INTEGER NOT NULL,
    unlock_epoch INTEGER, last_seq INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE events (
    seq INTEGER PRIMARY KEY, kind TEXT NOT NULL, payload BLOB NOT NULL,
    prev_hash BLOB NOT NULL, hash BLOB NOT NULL);
CREATE TABLE heads (seq INTEGER PRIMARY KEY, hash BLOB NOT NULL, signature BLOB NOT NULL);
CREATE TABLE settled (
    ref TEXT NOT NULL, node BLOB NOT NULL, seq INTEGER NOT NULL,
    PRIMARY KEY (ref, node)) WITHOUT ROWID;
CREATE TABLE epochs (
    epoch INTEGER PRIMARY KEY, commitment BLOB NOT NULL, seed BLOB,
    open_seq INTEGER NOT NULL, reveal_seq INTEGER);
CREATE TABLE totals (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
"""


# ----------------------------------------------------------------------------- hashing

# msgpack headers of [seq, kind, payload, prev_hash], built by hand on the hot path: the
# bytes are exactly encode([seq, kind, payload, prev_hash]) (tests hold them equal), at a
# fraction of the cost of the generic encoder.
_KIND_BYTES: dict[str, bytes] = {}
_EVENT_DOMAIN = hashlib.sha256(b"posp/ledger-event\x00")


def _mp_uint(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    if n < 0x100:
        return b"\xcc" + bytes((n,))
    if n < 0x10000:
        return b"\xcd" + n.to_bytes(2, "big")
    if n < 0x100000000:
        return b"\xce" + n.to_bytes(4, "big")
    return b"\xcf" + n.to_bytes(8, "big")


def _mp_bin_header(n: int) -> bytes:
    if n < 0x100:
        return b"\xc4" + bytes((n,))
    if n < 0x10000:
        return b"\xc5" + n.to_bytes(2, "big")
    return b"\xc6" + n.to_bytes(4, "big")


_BIN8 = [b"\xc4" + bytes((i,)) for i in range(256)]


def _kind_bytes(kind: str) -> bytes:
    b = _KIND_BYTES.get(kind)
    if b is None:
        b = encode(kind)
        _KIND_BYTES[kind] = b
    return b


def _chain_bytes(seq: int, kind: str, payload: bytes, prev_hash: bytes) -> bytes:
    return b"".join(
        (b"\x94", _mp_uint(seq), _kind_bytes(kind), _mp_bin_header(len(payload)), payload,
         _mp_bin_header(len(prev_hash)), prev_hash)
    )


def event_hash(seq: int, kind: str, payload: bytes, prev_hash: bytes) -> bytes:
    """``digest("ledger-event", encode([seq, kind, payload, prev_hash]))``."""
    h = _EVENT_DOMAIN.copy()
    h.update(_chain_bytes(seq, kind, payload, prev_hash))
    return h.digest()


def head_message(seq: int, head_hash: bytes) -> bytes:
    """The 32-byte message the coordinator signs for the chain head ``(seq, hash)``."""
    return digest("ledger-head", encode([seq, head_hash]))


def seed_commitment(seed: bytes) -> bytes:
    """``digest("epoch-seed", seed)``, as :attr:`posp.sampling.EpochSeed.commitment`."""
    return digest("epoch-seed", bytes(seed))


def _genesis(coordinator: bytes, min_bond: int, unbond_epochs: int, share_ppb: int) -> bytes:
    return digest(
        "ledger-genesis",
        encode([_FORMAT, SCHEMA_VERSION, coordinator, min_bond, unbond_epochs, share_ppb]),
    )


# ------------------------------------------------------------------------------ values


@dataclass(frozen=True, slots=True)
class Account:
    """One node's account. ``balance`` is slashable stake that earns work; ``locked`` is
    stake waiting out the unbonding delay (still slashable)."""

    node: bytes
    balance: int
    locked: int
    status: str
    profile_digest: bytes
    registered_epoch: int
    unlock_epoch: int | None
    last_seq: int

    @property
    def stake(self) -> int:
        return self.balance + self.locked

    def to_dict(self) -> dict[str, Any]:
        return {
            "node": self.node.hex(),
            "balance": self.balance,
            "locked": self.locked,
            "status": self.status,
            "profile_digest": self.profile_digest.hex(),
            "registered_epoch": self.registered_epoch,
            "unlock_epoch": self.unlock_epoch,
            "last_seq": self.last_seq,
        }


@dataclass(frozen=True, slots=True)
class Event:
    """One decoded event. ``payload`` and ``hash`` are the stored bytes."""

    seq: int
    kind: str
    fields: dict[str, Any]
    payload: bytes
    prev_hash: bytes
    hash: bytes

    def __getitem__(self, name: str) -> Any:
        return self.fields[name]


@dataclass(frozen=True)
class VerifyReport:
    """What :func:`verify` found. ``ok`` False names ``first_bad_seq`` and ``reason``."""

    ok: bool
    path: str
    events: int
    head_seq: int
    head_hash: str
    heads_checked: int
    first_bad_seq: int | None = None
    reason: str | None = None
    elapsed_s: float = 0.0
    totals: dict[str, int] = field(default_factory=dict)
    expect_head: str | None = None

    @property
    def events_per_s(self) -> float:
        return self.events / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "path": self.path,
            "events": self.events,
            "head_seq": self.head_seq,
            "head_hash": self.head_hash,
            "heads_checked": self.heads_checked,
            "first_bad_seq": self.first_bad_seq,
            "reason": self.reason,
            "elapsed_s": self.elapsed_s,
            "events_per_s": self.events_per_s,
            "totals": dict(self.totals),
            "expect_head": self.expect_head,
        }

    def raise_for_failure(self) -> VerifyReport:
        if not self.ok:
            raise LedgerIntegrityError(self.reason or "verification failed", seq=self.first_bad_seq)
        return self


# ------------------------------------------------------------------------ state machine
#
# One set of transition functions, used by the writer (after validating a settlement)
# and by verification (replaying history), so the two can never disagree.

# account list layout
_BAL, _LOCK, _STATUS, _PROFILE, _REG, _UNLOCK, _LAST = range(7)


class _Bad(Exception):
    """Replay found an event that cannot have been written by a correct ledger."""


class _State:
    __slots__ = (
        "accounts", "current_epoch", "epochs", "min_bond", "settled", "settled_rows", "totals"
    )

    def __init__(self, min_bond: int) -> None:
        self.min_bond = min_bond
        self.accounts: dict[bytes, list[Any]] = {}
        self.totals: dict[str, int] = dict.fromkeys(_TOTAL_NAMES, 0)
        self.settled: dict[tuple[str, bytes], int] = {}
        self.settled_rows: list[tuple[str, bytes, int]] = []  # in seq order
        self.epochs: dict[int, list[Any]] = {}
        self.current_epoch = 0


def _acct(st: _State, node: Any) -> list[Any]:
    a = st.accounts.get(node) if type(node) is bytes else None
    if a is None:
        raise _Bad("event names a node without an account")
    return a


def _settle(st: _State, ref: Any, node: bytes, seq: int) -> None:
    key = (ref, node)
    if key in st.settled:
        raise _Bad(f"job {ref!r} settled twice for the same node")
    st.settled[key] = seq
    st.settled_rows.append((ref, node, seq))


def _amount(v: Any) -> int:
    if type(v) is not int or v < 0:
        raise _Bad("amount is not a non-negative integer")
    return v


def _ap_bond(st: _State, seq: int, v: list[Any]) -> None:
    node, amount, profile = v
    amount = _amount(amount)
    a = st.accounts.get(node)
    if a is None or a[_STATUS] == "withdrawn":
        locked = a[_LOCK] if a is not None else 0
        bal = a[_BAL] if a is not None else 0
        st.accounts[node] = [bal + amount, locked, "active", profile, st.current_epoch, None, seq]
    else:
        a[_BAL] += amount
        a[_LAST] = seq
    st.totals["bonded"] += amount


def _ap_reward(st: _State, seq: int, v: list[Any]) -> None:
    node, amount, ref = v
    a = _acct(st, node)
    amount = _amount(amount)
    _settle(st, ref, node, seq)
    a[_BAL] += amount
    a[_LAST] = seq
    st.totals["minted"] += amount


def _ap_slash(st: _State, seq: int, v: list[Any]) -> None:
    node, amount, challengers, each, burned, ref, _evidence = v
    a = _acct(st, node)
    amount, each, burned = _amount(amount), _amount(each), _amount(burned)
    if amount != each * len(challengers) + burned:
        raise _Bad("slash amount is not challenger shares plus burned")
    if amount > a[_BAL] + a[_LOCK]:
        raise _Bad("slash exceeds the node's stake")
    _settle(st, ref, node, seq)
    from_balance = min(amount, a[_BAL])
    a[_BAL] -= from_balance
    a[_LOCK] -= amount - from_balance
    a[_LAST] = seq
    for c in challengers:
        ca = _acct(st, c)
        ca[_BAL] += each
        ca[_LAST] = seq
    st.totals["slashed"] += amount
    st.totals["burned"] += burned
    st.totals["challenger_paid"] += each * len(challengers)


def _ap_eject(st: _State, seq: int, v: list[Any]) -> None:
    a = _acct(st, v[0])
    a[_STATUS] = "ejected"
    a[_LAST] = seq


def _ap_unbond_request(st: _State, seq: int, v: list[Any]) -> None:
    node, amount, unlock = v
    a = _acct(st, node)
    amount = _amount(amount)
    if amount > a[_BAL]:
        raise _Bad("unbond request exceeds the balance")
    a[_BAL] -= amount
    a[_LOCK] += amount
    a[_UNLOCK] = unlock
    if a[_STATUS] == "active" and a[_BAL] < st.min_bond:
        a[_STATUS] = "unbonding"
    a[_LAST] = seq


def _ap_unbond_release(st: _State, seq: int, v: list[Any]) -> None:
    node, amount = v
    a = _acct(st, node)
    amount = _amount(amount)
    if amount != a[_LOCK]:
        raise _Bad("unbond release does not match the locked stake")
    a[_LOCK] = 0
    a[_UNLOCK] = None
    if a[_STATUS] == "unbonding" and a[_BAL] == 0:
        a[_STATUS] = "withdrawn"
    a[_LAST] = seq
    st.totals["paid_out"] += amount


def _ap_epoch_open(st: _State, seq: int, v: list[Any]) -> None:
    epoch, commitment = v
    if type(epoch) is not int or epoch in st.epochs:
        raise _Bad("epoch opened twice")
    st.epochs[epoch] = [commitment, None, seq, None]
    st.current_epoch = max(st.current_epoch, epoch)


def _ap_epoch_reveal(st: _State, seq: int, v: list[Any]) -> None:
    epoch, seed = v
    e = st.epochs.get(epoch)
    if e is None or e[1] is not None:
        raise _Bad("reveal of an epoch not open")
    if type(seed) is not bytes or seed_commitment(seed) != e[0]:
        raise _Bad("revealed seed does not hash to the epoch's commitment")
    e[1] = seed
    e[3] = seq


def _parse_reward(p: bytes) -> tuple[bytes, int, str] | None:
    """Strictly parse a canonical reward payload ``[node(32 bytes), amount, ref]``.

    Verification's hot path: the generic decoder costs more than everything else per
    event. Anything this does not recognise (or that is not canonical) returns None and
    goes through :func:`posp.encoding.decode`.
    """
    if len(p) < 37 or p[0] != 0x93 or p[1] != 0xC4 or p[2] != 0x20:
        return None
    b = p[35]
    if b < 0x80:
        amount, i = b, 36
    elif b == 0xCC:
        amount, i = p[36], 37
        if amount < 0x80:
            return None
    elif b == 0xCD:
        amount, i = int.from_bytes(p[36:38], "big"), 38
        if amount < 0x100:
            return None
    elif b == 0xCE:
        amount, i = int.from_bytes(p[36:40], "big"), 40
        if amount < 0x10000:
            return None
    else:
        return None
    if i >= len(p):
        return None
    s = p[i]
    if 0xA0 <= s <= 0xBF:
        n, i = s - 0xA0, i + 1
    elif s == 0xD9 and i + 1 < len(p):
        n, i = p[i + 1], i + 2
        if n < 32:
            return None
    else:
        return None
    if i + n != len(p):
        return None
    try:
        ref = p[i:].decode("utf-8")
    except UnicodeDecodeError:
        return None
    return p[3:35], amount, ref


def _ap_none(st: _State, seq: int, v: list[Any]) -> None:
    return None


_APPLY: dict[str, Callable[[_State, int, list[Any]], None]] = {
    "bond": _ap_bond,
    "reward": _ap_reward,
    "slash": _ap_slash,
    "eject": _ap_eject,
    "unbond_request": _ap_unbond_request,
    "unbond_release": _ap_unbond_release,
    "epoch_open": _ap_epoch_open,
    "epoch_reveal": _ap_epoch_reveal,
    "liveness": _ap_none,
    "drift": _ap_none,
    "dispute": _ap_none,
    "decision": _ap_none,
    "note": _ap_none,
}
_NO_DECODE = frozenset({"liveness", "drift", "dispute", "decision", "note"})


# ------------------------------------------------------------------------ file opening


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    return conn


def _not_ledger(path: Path, why: str) -> LedgerVersionError:
    return LedgerVersionError(f"{path} is not a posp ledger ({why})")


def _read_meta(conn: sqlite3.Connection, path: Path) -> dict[str, Any]:
    """Check that ``conn`` is a posp ledger of a known version; return its meta table."""
    try:
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.DatabaseError as exc:
        raise _not_ledger(path, f"not an SQLite database: {exc}") from exc
    if "meta" not in tables:
        raise _not_ledger(path, "an SQLite database without posp tables")
    try:
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    except sqlite3.DatabaseError as exc:
        raise _not_ledger(path, f"unreadable meta table: {exc}") from exc
    if app_id != _APPLICATION_ID or meta.get("format") != _FORMAT:
        raise _not_ledger(path, "an SQLite database of another application")
    version = meta.get("schema_version")
    if version != SCHEMA_VERSION:
        raise LedgerVersionError(
            f"{path}: ledger schema version {version!r} is not supported "
            f"(this posp reads version {SCHEMA_VERSION})"
        )
    missing = {"accounts", "events", "heads", "settled", "epochs", "totals"} - tables
    if missing:
        raise _not_ledger(path, f"tables missing: {', '.join(sorted(missing))}")
    for key in ("coordinator", "min_bond", "unbond_epochs", "challenger_share_ppb", "genesis"):
        if key not in meta:
            raise _not_ledger(path, f"meta key {key!r} missing")
    return meta


def _open_existing(path: Path) -> tuple[sqlite3.Connection, dict[str, Any]]:
    if not path.exists():
        raise LedgerError(f"no ledger at {path}")
    if not path.is_file():
        raise LedgerError(f"{path} is not a file")
    if path.stat().st_size == 0:
        raise _not_ledger(path, "empty file")
    try:
        conn = _connect(path)
    except sqlite3.Error as exc:
        raise LedgerError(f"cannot open {path}: {exc}") from exc
    try:
        meta = _read_meta(conn, path)
    except BaseException:
        conn.close()
        raise
    return conn, meta


def _set_pragmas(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=10000")


def _node_bytes(node: Any, name: str = "node") -> bytes:
    if isinstance(node, PublicKey):
        return bytes(node)
    if isinstance(node, bytes | bytearray | memoryview):
        b = bytes(node)
        if len(b) == 32:
            return b
    raise SettlementError(f"{name} must be a PublicKey or 32 bytes, got {node!r:.80}")


def _check_amount(amount: Any, name: str = "amount", *, allow_zero: bool = False) -> int:
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise SettlementError(f"{name} must be an int (stake units), got {amount!r}")
    amount = int(amount)
    if amount < 0 or (amount == 0 and not allow_zero) or amount > _MAX_AMOUNT:
        raise SettlementError(f"{name} must be a positive int below 2**63, got {amount}")
    return amount


def _check_ref(ref: Any) -> str:
    if not isinstance(ref, str) or not ref or len(ref) > _MAX_REF:
        raise SettlementError(f"ref must be a non-empty str of at most {_MAX_REF} chars")
    if not ref.isascii():
        try:
            ref.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: SQLite and msgpack would refuse it
            raise SettlementError("ref must be valid Unicode (no lone surrogates)") from None
    return ref


def _check_digest(value: Any, name: str) -> bytes:
    if not isinstance(value, bytes | bytearray | memoryview) or len(bytes(value)) != 32:
        raise SettlementError(f"{name} must be 32 bytes")
    return bytes(value)


def _check_epoch(epoch: Any) -> int:
    if isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 <= epoch < 2**62:
        raise SettlementError(f"epoch must be a non-negative int, got {epoch!r}")
    return int(epoch)


def _parse_expect_head(value: str) -> tuple[int | None, bytes]:
    text = value.strip()
    seq: int | None = None
    if ":" in text:
        s, text = text.split(":", 1)
        try:
            seq = int(s)
        except ValueError:
            raise ConfigError(f"{value!r} is not HASH or SEQ:HASH", key="expect_head") from None
    try:
        h = bytes.fromhex(text)
    except ValueError:
        raise ConfigError(f"{value!r} is not a hex hash", key="expect_head") from None
    if len(h) != 32:
        raise ConfigError(f"{value!r} is not a 32-byte hex hash", key="expect_head")
    return seq, h


# ------------------------------------------------------------------------------- group


class Group:
    """One SQLite transaction holding many settlements; see :meth:`Ledger.group`.

    Each method validates first and changes nothing when it raises
    :class:`~posp.errors.SettlementError`, so a caller may catch it and go on. Events,
    account rows and settled refs are written when the group commits.
    """

    def __init__(self, ledger: Ledger, seq: int, head: bytes) -> None:
        self._ledger = ledger
        self._conn = ledger._conn
        self._seq = seq
        self._head = head
        self._start_seq = seq
        st = _State(ledger.min_bond)
        for name, value in self._conn.execute("SELECT name, value FROM totals"):
            st.totals[name] = value
        row = self._conn.execute("SELECT max(epoch) FROM epochs").fetchone()
        st.current_epoch = row[0] if row[0] is not None else 0
        self._st = st
        self._events: list[tuple[int, str, bytes, bytes, bytes]] = []
        self._dirty: set[bytes] = set()
        self._new_settled: dict[tuple[str, bytes], int] = st.settled
        self._epochs_dirty: set[int] = set()
        self._closed = False

    # ---- state access ------------------------------------------------------------

    def _load(self, node: bytes) -> list[Any] | None:
        a = self._st.accounts.get(node)
        if a is None:
            row = self._conn.execute(
                "SELECT balance, locked, status, profile, registered_epoch, unlock_epoch, "
                "last_seq FROM accounts WHERE node=?",
                (node,),
            ).fetchone()
            if row is None:
                return None
            a = list(row)
            self._st.accounts[node] = a
        return a

    def _need(self, node: bytes) -> list[Any]:
        a = self._load(node)
        if a is None:
            raise SettlementError(f"unknown node {node[:4].hex()}: no bond")
        return a

    def _epoch(self, epoch: int) -> list[Any] | None:
        e = self._st.epochs.get(epoch)
        if e is None:
            row = self._conn.execute(
                "SELECT commitment, seed, open_seq, reveal_seq FROM epochs WHERE epoch=?",
                (epoch,),
            ).fetchone()
            if row is None:
                return None
            e = list(row)
            self._st.epochs[epoch] = e
        return e

    def _check_unsettled(self, ref: str, node: bytes) -> None:
        if (ref, node) in self._new_settled or self._conn.execute(
            "SELECT 1 FROM settled WHERE ref=? AND node=?", (ref, node)
        ).fetchone():
            raise SettlementError(f"job {ref!r} already settled for node {node[:4].hex()}")

    def _emit(self, kind: str, values: list[Any], nodes: Sequence[bytes] = (), *,
              flat: bool = False) -> int:
        """Append one event. ``flat``: the caller checked that ``values`` is already in
        wire form (bytes, in-range ints, str, lists of them), so it is packed as it is
        (the same bytes as ``encode``, without the conversion pass; a hot path)."""
        if self._closed:
            raise LedgerError("the group is closed")
        try:
            payload = encode_flat(values) if flat else encode(values)
        except MalformedMessage as exc:
            raise SettlementError(f"{kind}: {exc}") from exc
        except (ValueError, TypeError) as exc:  # from msgpack: e.g. a lone surrogate
            raise SettlementError(f"{kind}: cannot encode: {exc}") from exc
        seq = self._seq + 1
        try:
            _APPLY[kind](self._st, seq, values)
        except _Bad as exc:  # validation should have caught it: a bug, not user error
            raise LedgerError(f"internal: {kind} failed replay rules: {exc}") from exc
        h = event_hash(seq, kind, payload, self._head)
        self._events.append((seq, kind, payload, self._head, h))
        self._seq = seq
        self._head = h
        self._dirty.update(nodes)
        return seq

    def _check_totals(self, **add: int) -> None:
        for k, v in add.items():
            if self._st.totals[k] + v > _MAX_AMOUNT:
                raise SettlementError(f"total {k} would exceed 2**63 - 1")

    # ---- reads inside the group (see pending changes) -----------------------------

    def balance(self, node: Any) -> int:
        a = self._load(_node_bytes(node))
        return 0 if a is None else a[_BAL]

    def account(self, node: Any) -> Account | None:
        n = _node_bytes(node)
        a = self._load(n)
        return None if a is None else Account(n, *a)

    def is_active(self, node: Any) -> bool:
        a = self._load(_node_bytes(node))
        return a is not None and a[_STATUS] == "active" and a[_BAL] >= self._st.min_bond

    @property
    def epoch(self) -> int:
        return self._st.current_epoch

    # ---- settlements ---------------------------------------------------------------

    def bond(self, node: Any, amount: int, *, profile: bytes) -> int:
        """Bond ``amount`` for ``node`` (registering it, or topping up an active node)."""
        n = _node_bytes(node)
        amount = _check_amount(amount)
        profile = _check_digest(profile, "profile")
        a = self._load(n)
        if a is None or a[_STATUS] == "withdrawn":
            if amount + (0 if a is None else a[_BAL]) < self._st.min_bond:
                raise SettlementError(
                    f"first bond {amount} is below the minimum bond {self._st.min_bond}"
                )
        elif a[_STATUS] != "active":
            raise SettlementError(f"node {n[:4].hex()} is {a[_STATUS]}: cannot bond")
        elif a[_PROFILE] != profile:
            raise SettlementError(f"node {n[:4].hex()} is registered with another profile")
        elif a[_BAL] + amount > _MAX_AMOUNT:
            raise SettlementError("balance would exceed 2**63 - 1")
        self._check_totals(bonded=amount)
        return self._emit("bond", [n, amount, profile], (n,))

    def reward(self, node: Any, amount: int, *, ref: str) -> int:
        """Pay ``amount`` (minted) to ``node`` for job ``ref``; each (ref, node) once."""
        n = _node_bytes(node)
        amount = _check_amount(amount)
        ref = _check_ref(ref)
        a = self._need(n)
        self._check_unsettled(ref, n)
        if a[_BAL] + amount > _MAX_AMOUNT:
            raise SettlementError("balance would exceed 2**63 - 1")
        self._check_totals(minted=amount)
        return self._emit("reward", [n, amount, ref], (n,), flat=True)

    def slash(
        self,
        node: Any,
        amount: int,
        *,
        ref: str,
        evidence: bytes,
        challengers: Sequence[Any] = (),
        eject_below_min: bool = True,
    ) -> int:
        """Slash up to ``amount`` of ``node``'s stake (balance, then locked) for job ``ref``.

        The slash is bounded by the stake; ``challenger_share`` of it is split evenly among
        ``challengers`` (rounded down), the rest is burned. With ``eject_below_min`` an
        active node left below the minimum bond is ejected in the same group. Returns the
        slash event's seq.
        """
        n = _node_bytes(node)
        amount = _check_amount(amount)
        ref = _check_ref(ref)
        evidence = _check_digest(evidence, "evidence")
        chs = [_node_bytes(c, "challenger") for c in challengers]
        if len(set(chs)) != len(chs) or n in chs:
            raise SettlementError("challengers must be distinct and not the slashed node")
        a = self._need(n)
        for c in chs:
            ca = self._need(c)
            if ca[_BAL] + amount > _MAX_AMOUNT:
                raise SettlementError("balance would exceed 2**63 - 1")
        self._check_unsettled(ref, n)
        actual = min(amount, a[_BAL] + a[_LOCK])
        each = (actual * self._ledger.challenger_share_ppb // _PPB) // len(chs) if chs else 0
        burned = actual - each * len(chs)
        seq = self._emit(
            "slash", [n, actual, chs, each, burned, ref, evidence], (n, *chs)
        )
        if eject_below_min and a[_STATUS] == "active" and a[_BAL] < self._st.min_bond:
            self._emit("eject", [n, "below minimum bond"], (n,))
        return seq

    def eject(self, node: Any, *, reason: str) -> int:
        """Eject ``node``: it receives no more work; its remaining stake can still unbond."""
        n = _node_bytes(node)
        if not isinstance(reason, str) or not reason:
            raise SettlementError("reason must be a non-empty str")
        a = self._need(n)
        if a[_STATUS] == "ejected":
            raise SettlementError(f"node {n[:4].hex()} is already ejected")
        return self._emit("eject", [n, reason], (n,))

    def unbond_request(self, node: Any, amount: int | None = None) -> int:
        """Move ``amount`` (default: the whole balance) to locked until
        ``epoch + unbond_epochs``; a node left below the minimum bond stops getting work."""
        n = _node_bytes(node)
        a = self._need(n)
        if a[_LOCK]:
            raise SettlementError(f"node {n[:4].hex()} already has an unbond pending")
        amount = a[_BAL] if amount is None else _check_amount(amount)
        if amount <= 0 or amount > a[_BAL]:
            raise SettlementError(f"cannot unbond {amount} of a balance of {a[_BAL]}")
        unlock = self._st.current_epoch + self._ledger.unbond_epochs
        return self._emit("unbond_request", [n, amount, unlock], (n,))

    def unbond_release(self, node: Any) -> int:
        """Pay out the locked stake once the current epoch reaches its unlock epoch."""
        n = _node_bytes(node)
        a = self._need(n)
        if not a[_LOCK]:
            raise SettlementError(f"node {n[:4].hex()} has no locked stake")
        if self._st.current_epoch < a[_UNLOCK]:
            raise SettlementError(
                f"stake of {n[:4].hex()} is locked until epoch {a[_UNLOCK]} "
                f"(now {self._st.current_epoch})"
            )
        self._check_totals(paid_out=a[_LOCK])
        return self._emit("unbond_release", [n, a[_LOCK]], (n,))

    def epoch_open(self, epoch: int, commitment: bytes) -> int:
        """Open ``epoch`` publishing ``commitment`` = ``digest("epoch-seed", seed)``."""
        epoch = _check_epoch(epoch)
        commitment = _check_digest(commitment, "commitment")
        row = self._conn.execute("SELECT max(epoch) FROM epochs").fetchone()
        last = max([e for e in (row[0], *self._st.epochs) if e is not None], default=None)
        if last is not None and epoch <= last:
            raise SettlementError(f"epoch {epoch} is not after the last opened epoch {last}")
        self._epochs_dirty.add(epoch)
        return self._emit("epoch_open", [epoch, commitment])

    def epoch_reveal(self, epoch: int, seed: bytes) -> int:
        """Reveal ``epoch``'s seed; it must hash to the committed value."""
        epoch = _check_epoch(epoch)
        if not isinstance(seed, bytes | bytearray | memoryview):
            seed = bytes(seed)  # an EpochSeed
        seed = bytes(seed)
        e = self._epoch(epoch)
        if e is None:
            raise SettlementError(f"epoch {epoch} was never opened")
        if e[1] is not None:
            raise SettlementError(f"epoch {epoch} is already revealed")
        if seed_commitment(seed) != e[0]:
            raise SettlementError(f"revealed seed does not hash to epoch {epoch}'s commitment")
        self._epochs_dirty.add(epoch)
        return self._emit("epoch_reveal", [epoch, seed])

    def liveness(self, node: Any, *, ref: str, reason: str) -> int:
        """Record a crash, timeout or bad receipt. Never moves stake (hard truth 2)."""
        n = _node_bytes(node)
        ref = _check_ref(ref)
        if not isinstance(reason, str) or not reason or len(reason) > 64:
            raise SettlementError(
                f"liveness reason must be a short str (usually one of "
                f"{sorted(LIVENESS_REASONS)}), got {reason!r}"
            )
        return self._emit("liveness", [n, ref, reason])

    def drift(self, ref: str, nodes: Sequence[Any], *, metric: str, distance: float) -> int:
        """Record outputs that differed within tolerance (no stake moves)."""
        ref = _check_ref(ref)
        ns = [_node_bytes(x) for x in nodes]
        if not isinstance(metric, str) or not metric:
            raise SettlementError("metric must be a non-empty str")
        return self._emit("drift", [ref, ns, metric, float(distance)])

    def dispute(self, ref: str, outcome: Any) -> int:
        """Record a dispute's outcome (any encodable value, e.g. a record)."""
        ref = _check_ref(ref)
        return self._emit("dispute", [ref, outcome])

    def decision(
        self,
        epoch: int,
        node: Any,
        commitment: bytes,
        *,
        count: int,
        rates_ppb: Sequence[int],
        sampled: Sequence[int],
        roles: bytes = b"",
    ) -> int:
        """Record a sampling decision for an open, unrevealed epoch, for later audit.

        ``roles`` (one byte per position, or empty) says which positions were first
        executions (``f``), validation (``v``) or arbitration (``a``) jobs, or not the
        coordinator's to judge (``-``: decoys, re-issued jobs), so an audit can show that
        no first execution was exempted from sampling. It is written after the node's
        batch came back, so it reveals nothing a node could use for that batch."""
        epoch = _check_epoch(epoch)
        n = _node_bytes(node)
        commitment = _check_digest(commitment, "commitment")
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise SettlementError(f"count must be a non-negative int, got {count!r}")
        rates = [int(r) for r in rates_ppb]
        if len(rates) != count or any(not 0 <= r <= _PPB for r in rates):
            raise SettlementError(f"rates_ppb must be {count} ints in [0, {_PPB}]")
        idx = [int(i) for i in sampled]
        if idx != sorted(set(idx)) or any(not 0 <= i < count for i in idx):
            raise SettlementError("sampled must be sorted distinct indices below count")
        if type(roles) is not bytes or (roles and (
                len(roles) != count or roles.strip(b"fva-"))):
            raise SettlementError(f"roles must be empty or {count} bytes from b'fva-'")
        e = self._epoch(epoch)
        if e is None or e[1] is not None:
            raise SettlementError(f"epoch {epoch} is not open (decisions precede the reveal)")
        return self._emit("decision", [epoch, n, commitment, count, rates, idx, roles],
                          flat=True)

    def note(self, text: str, data: Any = None) -> int:
        if not isinstance(text, str):
            raise SettlementError("note text must be a str")
        return self._emit("note", [text, data])

    # ---- commit ----------------------------------------------------------------------

    def _flush(self, key: NodeKey) -> None:
        c = self._conn
        st = self._st
        if self._events:
            c.executemany(
                "INSERT INTO events (seq, kind, payload, prev_hash, hash) VALUES (?,?,?,?,?)",
                self._events,
            )
            c.executemany(
                "INSERT OR REPLACE INTO accounts (node, balance, locked, status, profile, "
                "registered_epoch, unlock_epoch, last_seq) VALUES (?,?,?,?,?,?,?,?)",
                [(n, *st.accounts[n]) for n in self._dirty],
            )
            if self._new_settled:
                c.executemany(
                    "INSERT INTO settled (ref, node, seq) VALUES (?,?,?)",
                    [(r, n, s) for (r, n), s in self._new_settled.items()],
                )
            c.executemany(
                "INSERT OR REPLACE INTO epochs (epoch, commitment, seed, open_seq, reveal_seq) "
                "VALUES (?,?,?,?,?)",
                [(e, *st.epochs[e]) for e in self._epochs_dirty],
            )
            c.executemany(
                "INSERT OR REPLACE INTO totals (name, value) VALUES (?,?)",
                list(st.totals.items()),
            )
            c.execute(
                "INSERT INTO heads (seq, hash, signature) VALUES (?,?,?)",
                (self._seq, self._head, key.sign(head_message(self._seq, self._head))),
            )


# ------------------------------------------------------------------------------ ledger


class Ledger:
    """The stake ledger in one SQLite file. See the module docstring.

    ``Ledger(path)`` creates the file when it does not exist (``create=True``) or opens
    it. A new ledger without ``coordinator_key`` gets a fresh key saved beside it as
    ``PATH.key`` (mode 0600); reopening loads it when a write needs it. ``min_bond``,
    ``unbond_epochs`` and ``challenger_share`` (a fraction in [0, 1], stored in parts per
    billion) are fixed at creation; passing different values when reopening raises
    :class:`~posp.errors.ConfigError`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        coordinator_key: NodeKey | None = None,
        create: bool = True,
        min_bond: int | None = None,
        unbond_epochs: int | None = None,
        challenger_share: float | None = None,
    ) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        self._group: Group | None = None
        self._group_thread: int | None = None
        self._is_closed = False
        self._key: NodeKey | None = None
        exists = self.path.exists() and (not self.path.is_file() or self.path.stat().st_size > 0)
        if not exists:
            if not create:
                raise LedgerError(f"no ledger at {self.path}")
            self._conn = self._create(coordinator_key, min_bond, unbond_epochs, challenger_share)
            meta = _read_meta(self._conn, self.path)
        else:
            self._conn, meta = _open_existing(self.path)
            try:
                _set_pragmas(self._conn)
            except sqlite3.Error as exc:
                self._conn.close()
                raise LedgerError(f"cannot open {self.path}: {exc}") from exc
        self._meta = meta
        self.coordinator = PublicKey(meta["coordinator"])
        self.min_bond: int = meta["min_bond"]
        self.unbond_epochs: int = meta["unbond_epochs"]
        self.challenger_share_ppb: int = meta["challenger_share_ppb"]
        self.genesis: bytes = meta["genesis"]
        for name, given, stored in (
            ("min_bond", min_bond, self.min_bond),
            ("unbond_epochs", unbond_epochs, self.unbond_epochs),
            (
                "challenger_share",
                None if challenger_share is None else round(challenger_share * _PPB),
                self.challenger_share_ppb,
            ),
        ):
            if given is not None and given != stored:
                self._conn.close()
                raise ConfigError(f"ledger has {stored}, asked for {given}", key=name)
        if coordinator_key is not None:  # else: the key _create made, or loaded on demand
            self._key = coordinator_key
        if coordinator_key is not None and coordinator_key.public != self.coordinator:
            self._conn.close()
            raise LedgerError(f"{self.path}: coordinator_key is not this ledger's coordinator")

    def _create(
        self,
        key: NodeKey | None,
        min_bond: int | None,
        unbond_epochs: int | None,
        share: float | None,
    ) -> sqlite3.Connection:
        mb = 1000 if min_bond is None else min_bond
        ue = 2 if unbond_epochs is None else unbond_epochs
        sh = 0.5 if share is None else share
        if isinstance(mb, bool) or not isinstance(mb, int) or not 0 < mb <= _MAX_AMOUNT:
            raise ConfigError(f"must be a positive int, got {mb!r}", key="min_bond")
        if isinstance(ue, bool) or not isinstance(ue, int) or not 0 <= ue < 2**31:
            raise ConfigError(f"must be a non-negative int, got {ue!r}", key="unbond_epochs")
        if not 0.0 <= float(sh) <= 1.0:
            raise ConfigError(f"must be in [0, 1], got {sh!r}", key="challenger_share")
        ppb = round(float(sh) * _PPB)
        if not self.path.parent.is_dir():
            raise LedgerError(f"cannot create {self.path}: no directory {self.path.parent}")
        if key is None:
            key = NodeKey.generate()
            if str(self.path) != ":memory:":  # an in-memory ledger leaves no file behind
                key.save(self.key_path)
        coordinator = bytes(key.public)
        genesis = _genesis(coordinator, mb, ue, ppb)
        try:
            conn = _connect(self.path)
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot create {self.path}: {exc}") from exc
        try:
            _set_pragmas(conn)
            conn.execute("BEGIN IMMEDIATE")
            for stmt in _SCHEMA.strip().split(";"):
                if stmt.strip():
                    conn.execute(stmt)
            conn.execute(f"PRAGMA application_id={_APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            conn.executemany(
                "INSERT INTO meta (key, value) VALUES (?,?)",
                [
                    ("format", _FORMAT),
                    ("schema_version", SCHEMA_VERSION),
                    ("coordinator", coordinator),
                    ("min_bond", mb),
                    ("unbond_epochs", ue),
                    ("challenger_share_ppb", ppb),
                    ("genesis", genesis),
                    ("created", int(time.time())),
                ],
            )
            conn.executemany(
                "INSERT INTO totals (name, value) VALUES (?, 0)", [(n,) for n in _TOTAL_NAMES]
            )
            conn.execute(
                "INSERT INTO heads (seq, hash, signature) VALUES (0, ?, ?)",
                (genesis, key.sign(head_message(0, genesis))),
            )
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            conn.close()
            raise
        self._key = key
        return conn

    @property
    def key_path(self) -> Path:
        return self.path.with_name(self.path.name + ".key")

    def _signing_key(self) -> NodeKey:
        if self._key is None:
            if not self.key_path.exists():
                raise LedgerError(
                    f"{self.path}: no coordinator key (pass coordinator_key= or put it at "
                    f"{self.key_path})"
                )
            key = NodeKey.load(self.key_path)
            if key.public != self.coordinator:
                raise LedgerError(f"{self.key_path} is not this ledger's coordinator key")
            self._key = key
        return self._key

    # ---- lifecycle -----------------------------------------------------------------

    def close(self) -> None:
        """Sign the head if a commit left it unsigned, then close the file."""
        with self._lock:
            if self._is_closed:
                return
            try:
                seq, h = self._head_raw()
                row = self._conn.execute("SELECT max(seq) FROM heads").fetchone()
                if row[0] != seq and (self._key is not None or self.key_path.exists()):
                    key = self._signing_key()
                    self._conn.execute("BEGIN IMMEDIATE")
                    self._conn.execute(
                        "INSERT INTO heads (seq, hash, signature) VALUES (?,?,?)",
                        (seq, h, key.sign(head_message(seq, h))),
                    )
                    self._conn.execute("COMMIT")
            finally:
                self._conn.close()
                self._is_closed = True

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Ledger({str(self.path)!r})"

    # ---- writing -------------------------------------------------------------------

    def _head_raw(self) -> tuple[int, bytes]:
        row = self._conn.execute(
            "SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        return (row[0], row[1]) if row else (0, self.genesis)

    @contextlib.contextmanager
    def group(self) -> Iterator[Group]:
        """One transaction for many settlements; commits (and signs the head) on exit.

        An exception inside rolls back the whole group. Returns only after COMMIT.
        """
        me = threading.get_ident()
        if self._group is not None and self._group_thread == me:
            raise LedgerError("groups do not nest")
        with self._lock:
            if self._is_closed:
                raise LedgerError("the ledger is closed")
            key = self._signing_key()
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise LedgerError(f"cannot start a transaction: {exc}") from exc
            try:
                seq, h = self._head_raw()
                g = Group(self, seq, h)
                self._group, self._group_thread = g, me
                yield g
                g._closed = True
                g._flush(key)
                self._conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("ROLLBACK")
                raise
            finally:
                if self._group is not None:
                    self._group._closed = True
                self._group, self._group_thread = None, None

    def _run(self, fn: Callable[[Group], int]) -> int:
        if self._group is not None and self._group_thread == threading.get_ident():
            return fn(self._group)
        with self.group() as g:
            return fn(g)

    def bond(self, node: Any, amount: int, *, profile: bytes) -> int:
        return self._run(lambda g: g.bond(node, amount, profile=profile))

    def reward(self, node: Any, amount: int, *, ref: str) -> int:
        return self._run(lambda g: g.reward(node, amount, ref=ref))

    def slash(
        self,
        node: Any,
        amount: int,
        *,
        ref: str,
        evidence: bytes,
        challengers: Sequence[Any] = (),
        eject_below_min: bool = True,
    ) -> int:
        return self._run(
            lambda g: g.slash(
                node, amount, ref=ref, evidence=evidence, challengers=challengers,
                eject_below_min=eject_below_min,
            )
        )

    def eject(self, node: Any, *, reason: str) -> int:
        return self._run(lambda g: g.eject(node, reason=reason))

    def unbond_request(self, node: Any, amount: int | None = None) -> int:
        return self._run(lambda g: g.unbond_request(node, amount))

    def unbond_release(self, node: Any) -> int:
        return self._run(lambda g: g.unbond_release(node))

    def epoch_open(self, epoch: int, commitment: bytes) -> int:
        return self._run(lambda g: g.epoch_open(epoch, commitment))

    def epoch_reveal(self, epoch: int, seed: bytes) -> int:
        return self._run(lambda g: g.epoch_reveal(epoch, seed))

    def liveness(self, node: Any, *, ref: str, reason: str) -> int:
        return self._run(lambda g: g.liveness(node, ref=ref, reason=reason))

    def drift(self, ref: str, nodes: Sequence[Any], *, metric: str, distance: float) -> int:
        return self._run(lambda g: g.drift(ref, nodes, metric=metric, distance=distance))

    def dispute(self, ref: str, outcome: Any) -> int:
        return self._run(lambda g: g.dispute(ref, outcome))

    def decision(
        self,
        epoch: int,
        node: Any,
        commitment: bytes,
        *,
        count: int,
        rates_ppb: Sequence[int],
        sampled: Sequence[int],
        roles: bytes = b"",
    ) -> int:
        return self._run(
            lambda g: g.decision(
                epoch, node, commitment, count=count, rates_ppb=rates_ppb, sampled=sampled,
                roles=roles,
            )
        )

    def note(self, text: str, data: Any = None) -> int:
        return self._run(lambda g: g.note(text, data))

    # ---- reading (committed state) -----------------------------------------------------

    @property
    def head(self) -> tuple[int, str]:
        """The committed chain head: ``(seq, hash hex)``; ``(0, genesis hex)`` when empty."""
        with self._lock:
            seq, h = self._head_raw()
        return seq, h.hex()

    @property
    def epoch(self) -> int:
        """The last opened epoch (0 before any)."""
        row = self._conn.execute("SELECT max(epoch) FROM epochs").fetchone()
        return row[0] if row[0] is not None else 0

    def unrevealed_epochs(self) -> list[tuple[int, bytes]]:
        """``(epoch, commitment)`` of every opened epoch whose seed is not revealed yet."""
        return [
            (e, c)
            for e, c in self._conn.execute(
                "SELECT epoch, commitment FROM epochs WHERE seed IS NULL ORDER BY epoch"
            )
        ]

    def account(self, node: Any) -> Account | None:
        n = _node_bytes(node)
        row = self._conn.execute(
            "SELECT balance, locked, status, profile, registered_epoch, unlock_epoch, last_seq "
            "FROM accounts WHERE node=?",
            (n,),
        ).fetchone()
        return None if row is None else Account(n, *row)

    def balance(self, node: Any) -> int:
        a = self.account(node)
        return 0 if a is None else a.balance

    def is_active(self, node: Any) -> bool:
        """Whether ``node`` gets work: status active and at least the minimum bond."""
        a = self.account(node)
        return a is not None and a.status == "active" and a.balance >= self.min_bond

    def accounts(self) -> list[Account]:
        rows = self._conn.execute(
            "SELECT node, balance, locked, status, profile, registered_epoch, unlock_epoch, "
            "last_seq FROM accounts ORDER BY node"
        ).fetchall()
        return [Account(*r) for r in rows]

    def is_settled(self, ref: str, node: Any) -> bool:
        return (
            self._conn.execute(
                "SELECT 1 FROM settled WHERE ref=? AND node=?", (ref, _node_bytes(node))
            ).fetchone()
            is not None
        )

    def totals(self) -> dict[str, int]:
        """bonded, minted, burned, paid_out, slashed, challenger_paid, balances, locked."""
        out = dict(self._conn.execute("SELECT name, value FROM totals").fetchall())
        bal, locked = self._conn.execute(
            "SELECT coalesce(sum(balance), 0), coalesce(sum(locked), 0) FROM accounts"
        ).fetchone()
        out["balances"] = bal
        out["locked"] = locked
        return out

    def event_counts(self) -> dict[str, int]:
        return dict(self._conn.execute("SELECT kind, count(*) FROM events GROUP BY kind"))

    def events(self, start: int = 0) -> Iterator[Event]:
        """Decoded events with ``seq >= start``, in order."""
        yield from _iter_events(self._conn, start)

    def raw_events(self, start: int = 0) -> Iterator[tuple[int, str, bytes, bytes, bytes]]:
        """Stored rows ``(seq, kind, payload, prev_hash, hash)`` with ``seq >= start``."""
        cur = self._conn.execute(
            "SELECT seq, kind, payload, prev_hash, hash FROM events WHERE seq >= ? "
            "ORDER BY seq",
            (start,),
        )
        while rows := cur.fetchmany(4096):
            yield from rows

    def summary(self) -> dict[str, Any]:
        seq, h = self.head
        accts = self.accounts()
        return {
            "path": str(self.path),
            "schema_version": SCHEMA_VERSION,
            "coordinator": self.coordinator.hex(),
            "params": {
                "min_bond": self.min_bond,
                "unbond_epochs": self.unbond_epochs,
                "challenger_share_ppb": self.challenger_share_ppb,
            },
            "head": {"seq": seq, "hash": h},
            "epoch": self.epoch,
            "events": seq,
            "event_counts": self.event_counts(),
            "accounts": len(accts),
            "active": sum(
                1 for a in accts if a.status == "active" and a.balance >= self.min_bond
            ),
            "totals": self.totals(),
        }

    def verify(self, *, expect_head: str | None = None) -> VerifyReport:
        """Verify the whole chain; raise LedgerIntegrityError naming the first bad event."""
        with self._lock:
            if self._group is not None:
                raise LedgerError("cannot verify inside a group")
            return _verify_conn(self._conn, self._meta, str(self.path), expect_head)\
                .raise_for_failure()


def _iter_events(conn: sqlite3.Connection, start: int) -> Iterator[Event]:
    cur = conn.execute(
        "SELECT seq, kind, payload, prev_hash, hash FROM events WHERE seq >= ? ORDER BY seq",
        (start,),
    )
    while rows := cur.fetchmany(4096):
        for seq, kind, payload, prev, h in rows:
            values = decode(payload, records=False)
            names = EVENT_FIELDS.get(kind, ())
            fields = dict(zip(names, values, strict=False)) if isinstance(values, list) else {}
            yield Event(seq, kind, fields, payload, prev, h)


# ------------------------------------------------------------------------ verification


def verify(
    source: str | os.PathLike[str] | Ledger, *, expect_head: str | None = None
) -> VerifyReport:
    """Verify a ledger file (or open Ledger) and return a report; never raises for a
    tampered chain (``ok`` False, ``first_bad_seq``, ``reason``).

    Raises :class:`~posp.errors.LedgerVersionError` for a file that is not a ledger,
    :class:`~posp.errors.LedgerError` for a missing file, and
    :class:`~posp.errors.ConfigError` for a malformed ``expect_head``.
    """
    if isinstance(source, Ledger):
        with source._lock:
            return _verify_conn(source._conn, source._meta, str(source.path), expect_head)
    path = Path(source)
    conn, meta = _open_existing(path)
    try:
        return _verify_conn(conn, meta, str(path), expect_head)
    finally:
        conn.close()


def _verify_conn(
    conn: sqlite3.Connection, meta: dict[str, Any], path: str, expect_head: str | None
) -> VerifyReport:
    want_seq, want_hash = _parse_expect_head(expect_head) if expect_head else (None, None)
    t0 = time.perf_counter()
    conn.execute("BEGIN")  # one read snapshot for every table
    try:
        return _walk(conn, meta, path, expect_head, want_seq, want_hash, t0)
    finally:
        conn.execute("COMMIT")


def _walk(
    conn: sqlite3.Connection,
    meta: dict[str, Any],
    path: str,
    expect_head: str | None,
    want_seq: int | None,
    want_hash: bytes | None,
    t0: float,
) -> VerifyReport:
    coordinator = PublicKey(meta["coordinator"])
    min_bond = meta["min_bond"]
    genesis = _genesis(
        meta["coordinator"], min_bond, meta["unbond_epochs"], meta["challenger_share_ppb"]
    )
    heads = {s: (h, sig) for s, h, sig in conn.execute("SELECT seq, hash, signature FROM heads")}
    st = _State(min_bond)
    prev = genesis
    expected = 1
    heads_checked = 0
    found_want = want_hash is not None and want_hash == genesis and want_seq in (None, 0)
    last_good_head = 0

    def report(bad: int | None, reason: str | None) -> VerifyReport:
        return VerifyReport(
            ok=bad is None and reason is None,
            path=path,
            events=expected - 1,
            head_seq=expected - 1,
            head_hash=prev.hex(),
            heads_checked=heads_checked,
            first_bad_seq=bad,
            reason=reason,
            elapsed_s=time.perf_counter() - t0,
            totals=dict(st.totals),
            expect_head=expect_head,
        )

    def check_head(seq: int, h: bytes) -> str | None:
        hh, sig = heads[seq]
        if hh != h:
            return f"signed head at seq {seq} does not match the chain"
        try:
            coordinator.verify(head_message(seq, h), sig)
        except BadSignature:
            return f"head signature at seq {seq} does not verify"
        return None

    if meta["genesis"] != genesis:
        return report(0, "meta parameters do not match the genesis hash")
    if 0 in heads:
        why = check_head(0, genesis)
        if why:
            return report(0, why)
        heads_checked += 1

    apply = _APPLY
    no_decode = _NO_DECODE
    dom = _EVENT_DOMAIN
    mp_uint = _mp_uint
    bin_h = _mp_bin_header
    kind_b = {k: _kind_bytes(k) for k in _APPLY}
    bin8 = _BIN8
    settled_rows = st.settled_rows
    fast_reward = _parse_reward
    accounts = st.accounts
    minted = 0  # rewards' mint, added to st.totals at the end (hot path kept local)
    cur = conn.execute("SELECT seq, kind, payload, prev_hash, hash FROM events ORDER BY seq")
    while rows := cur.fetchmany(8192):
        for seq, kind, payload, prev_hash, stored in rows:
            if seq != expected:
                st.totals["minted"] += minted
                return report(expected, f"event {expected} is missing (next stored is {seq})")
            if prev_hash != prev:
                st.totals["minted"] += minted
                return report(seq, "prev_hash does not link to the previous event")
            kb = kind_b.get(kind)
            if kb is None or type(payload) is not bytes:
                st.totals["minted"] += minted
                return report(seq, f"unknown event kind {kind!r} or payload type")
            n = len(payload)
            h = dom.copy()
            h.update(b"".join((
                b"\x94",
                (b"\xcd" + seq.to_bytes(2, "big")) if 0xFF < seq < 0x10000
                else (b"\xce" + seq.to_bytes(4, "big")) if 0xFFFF < seq < 0x100000000
                else mp_uint(seq),
                kb,
                bin8[n] if n < 256 else bin_h(n),
                payload,
                b"\xc4\x20",
                prev,
            )))
            d = h.digest()
            if d != stored:
                st.totals["minted"] += minted
                return report(seq, "hash does not match the event's contents")
            if seq in heads:
                why = check_head(seq, d)
                if why:
                    # hashes recomputed after an edit: nothing after the last good
                    # signed head is vouched for
                    st.totals["minted"] += minted
                    return report(last_good_head + 1, why + f" (events {last_good_head + 1}"
                                  f"..{seq} are not vouched for)")
                heads_checked += 1
                last_good_head = seq
            r = fast_reward(payload) if kind == "reward" else None
            if r is not None:
                # the hot path: _ap_reward inlined; a job settled twice shows up when
                # the settled rows are compared (the table's key forbids duplicates)
                a = accounts.get(r[0])
                if a is None:
                    st.totals["minted"] += minted
                    return report(seq, "reward for a node without an account")
                settled_rows.append((r[2], r[0], seq))
                a[0] += r[1]
                a[6] = seq
                minted += r[1]
            elif kind not in no_decode:
                try:
                    values = decode(payload, records=False)
                    apply[kind](st, seq, values)
                except (_Bad, MalformedMessage, ValueError, TypeError, KeyError) as exc:
                    st.totals["minted"] += minted
                    return report(seq, f"{kind} cannot be replayed: {exc}")
            if d == want_hash and want_seq in (None, seq):
                found_want = True
            prev = d
            expected = seq + 1
    st.totals["minted"] += minted
    last = expected - 1
    beyond = [s for s in heads if s > last]
    if beyond:
        return report(last + 1, f"signed head at seq {min(beyond)} but the chain ends at {last}: "
                      "events were removed")
    if last_good_head != last:
        return report(last_good_head + 1, f"events {last_good_head + 1}..{last} are not "
                      "covered by a signed head")
    if want_hash is not None and not found_want:
        if want_seq is not None and want_seq <= last:
            return report(want_seq, f"expected head {want_hash.hex()} is not event {want_seq}")
        return report(last + 1, f"expected head {want_hash.hex()} is not in the chain "
                      f"(truncated after event {last}?)")
    why_tables = _compare_tables(conn, st)
    if why_tables:
        return report(*why_tables)
    return report(None, None)


def _compare_tables(conn: sqlite3.Connection, st: _State) -> tuple[int | None, str] | None:
    stored = {
        r[0]: list(r[1:])
        for r in conn.execute(
            "SELECT node, balance, locked, status, profile, registered_epoch, unlock_epoch, "
            "last_seq FROM accounts"
        )
    }
    for node, a in st.accounts.items():
        if a[_BAL] < 0 or a[_LOCK] < 0:
            return a[_LAST], f"negative balance for node {node[:4].hex()}"
        if stored.get(node) != a:
            return a[_LAST], f"accounts row of node {node[:4].hex()} disagrees with the events"
    extra = set(stored) - set(st.accounts)
    if extra:
        return None, f"accounts table has {len(extra)} node(s) that no event created"
    totals = dict(conn.execute("SELECT name, value FROM totals"))
    if totals != st.totals:
        return None, "totals table disagrees with the events"
    bal = sum(a[_BAL] for a in st.accounts.values())
    locked = sum(a[_LOCK] for a in st.accounts.values())
    t = st.totals
    if bal + locked + t["burned"] + t["paid_out"] != t["bonded"] + t["minted"]:
        return None, "stake is not conserved"
    rows = conn.execute("SELECT ref, node, seq FROM settled ORDER BY seq").fetchall()
    if rows != st.settled_rows:  # both in seq order; at most one settlement per event
        seen: set[tuple[str, bytes]] = set()
        for r, n, s in st.settled_rows:
            if (r, n) in seen:
                return s, f"job {r!r} settled twice for node {n[:4].hex()}"
            seen.add((r, n))
        settled = {(r, n): s for r, n, s in rows}
        diff = {k for k in settled.keys() ^ st.settled.keys()} | {
            k for k in settled.keys() & st.settled.keys() if settled[k] != st.settled[k]
        }
        seqs = [s for k in diff for s in (settled.get(k), st.settled.get(k)) if s is not None]
        return (min(seqs) if seqs else None), "settled table disagrees with the events"
    epochs = {
        e: [c, s, o, r]
        for e, c, s, o, r in conn.execute(
            "SELECT epoch, commitment, seed, open_seq, reveal_seq FROM epochs"
        )
    }
    if epochs != st.epochs:
        return None, "epochs table disagrees with the events"
    return None
