"""Which jobs get re-executed: epoch seeds, auditable commit-bound decisions, policies.

Hard truth 4: sampling must be unpredictable before commitment and auditable after. The
coordinator draws a secret :class:`EpochSeed` per epoch and publishes only its
``commitment`` (a digest) in the ledger when the epoch opens. A node signs a batch
commitment (the Merkle root of its receipts) *before* any decision about that batch
exists; the decisions are then a keyed function of the seed and that commitment::

    u = HMAC-SHA256(seed, b"posp/sample" + commitment)        # one MAC per batch
    stream = SHAKE-256(u), 8 bytes per job                     # expanded to `count` jobs
    x_i = (big-endian uint64 of the i-th 8 bytes) >> 11        # 53-bit integer
    value_i = x_i / 2**53                                      # float64 in [0, 1), exact
    job i sampled  <=>  x_i * 10**9 < ppb_i * 2**53            # i.e. value_i < ppb_i / 1e9

Without the seed a node cannot tell which of its jobs will be checked (HMAC is a PRF);
once the seed is revealed at the end of the epoch, anyone holding the ledger (commitments,
rates in parts per billion) recomputes every decision with :func:`decide` and checks the
coordinator sampled fairly. Rates travel as integers (:func:`rates_to_ppb`) so the audit
reproduces the decision bit for bit; :func:`decide` takes either form and converts floats
to ppb first, so both give the same answer.

Policies say *how often* a job is sampled; they never see the seed. Every policy has
``rate(node, importance=1.0) -> float``, ``observe(node, outcome) -> None`` and a
``p_min`` property (the lowest rate any task can get: deterrence holds only if
``p_min >= p*``, which :func:`posp.economics.report` checks).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import math
import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from .digest import digest
from .errors import BadSignature, ConfigError, KeyFileError

__all__ = [
    "OUTCOMES",
    "PPB",
    "SEED_SIZE",
    "AdaptivePolicy",
    "EpochSeed",
    "ImportancePolicy",
    "SamplingPolicy",
    "UniformPolicy",
    "decide",
    "decision_ints",
    "decision_values",
    "ppb_to_rates",
    "rates_to_ppb",
]

SEED_SIZE = 32
#: rates are stored as integer parts per billion
PPB = 1_000_000_000
_SAMPLE_DOMAIN = b"posp/sample"
_TWO53 = 1 << 53

#: what ``observe`` may be told about a node's finished task
OUTCOMES = frozenset({"agreed", "not_sampled", "drift", "dispute", "fault", "slashed"})


# ---------------------------------------------------------------------------- epoch seed


class EpochSeed:
    """The coordinator's secret for one epoch: 32 bytes, revealed only when the epoch closes.

    ``EpochSeed.generate()`` draws from ``os.urandom``; ``EpochSeed(seed_bytes)`` rebuilds
    a known seed (tests, simulation, audit after the reveal). The seed never appears in
    ``repr``; ``bytes(seed)`` is the explicit way to reveal it.
    """

    __slots__ = ("_seed",)

    def __init__(self, seed: bytes) -> None:
        if not isinstance(seed, bytes | bytearray | memoryview):
            raise ConfigError(f"must be bytes, not {type(seed).__name__}", key="seed")
        seed = bytes(seed)
        if len(seed) != SEED_SIZE:
            raise ConfigError(f"must be {SEED_SIZE} bytes, got {len(seed)}", key="seed")
        self._seed = seed

    @classmethod
    def generate(cls) -> EpochSeed:
        return cls(os.urandom(SEED_SIZE))

    @classmethod
    def from_reveal(cls, seed: bytes, commitment: bytes) -> EpochSeed:
        """The revealed seed, checked against the commitment published at epoch start.

        Raises :class:`~posp.errors.BadSignature` when they do not match.
        """
        s = cls(seed)
        if not hmac.compare_digest(s.commitment, bytes(commitment)):
            raise BadSignature("revealed epoch seed does not match its commitment")
        return s

    @property
    def commitment(self) -> bytes:
        """``digest("epoch-seed", seed)``: published in the ledger when the epoch opens."""
        return digest("epoch-seed", self._seed)

    def __bytes__(self) -> bytes:
        return self._seed

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, EpochSeed):
            return NotImplemented
        return hmac.compare_digest(self._seed, other._seed)

    def __hash__(self) -> int:
        return hash(self.commitment)

    def __repr__(self) -> str:
        return f"EpochSeed(commitment={self.commitment.hex()[:16]}...)"

    # The runtime keeps the open epoch's seed in a 0600 file beside the ledger, so a
    # coordinator restart mid-epoch can still reveal the seed it committed to.
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the seed as hex to ``path`` with mode 0600 (atomically, replacing it)."""
        p = Path(path)
        tmp = p.with_name(p.name + ".tmp")
        try:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(self._seed.hex() + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, p)
        except OSError as exc:
            raise KeyFileError(f"cannot write epoch seed {str(p)!r}: {exc.strerror or exc}") from exc

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> EpochSeed:
        """Read a seed written by :meth:`save`; KeyFileError on wrong permissions or size."""
        p = Path(path)
        try:
            st = os.stat(p)
            if os.name == "posix" and stat.S_IMODE(st.st_mode) & 0o077:
                raise KeyFileError(
                    f"epoch seed {str(p)!r} is readable by others "
                    f"(mode {stat.S_IMODE(st.st_mode):04o}); expected 0600"
                )
            text = p.read_text(encoding="ascii").strip()
        except KeyFileError:
            raise
        except (OSError, UnicodeDecodeError) as exc:
            msg = getattr(exc, "strerror", None) or str(exc)
            raise KeyFileError(f"cannot read epoch seed {str(p)!r}: {msg}") from exc
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raise KeyFileError(f"epoch seed {str(p)!r} is not hex") from None
        if len(raw) != SEED_SIZE:
            raise KeyFileError(
                f"epoch seed {str(p)!r} holds {len(raw)} bytes; expected {SEED_SIZE}"
            )
        return cls(raw)


# ----------------------------------------------------------------------------- decisions


def _seed_bytes(seed: bytes | EpochSeed) -> bytes:
    raw = bytes(seed)
    if len(raw) != SEED_SIZE:
        raise ConfigError(f"must be {SEED_SIZE} bytes, got {len(raw)}", key="seed")
    return raw


def decision_ints(seed: bytes | EpochSeed, commitment: bytes, count: int) -> np.ndarray:
    """The 53-bit integers behind :func:`decision_values` (uint64 array of ``count``)."""
    if isinstance(count, bool) or not isinstance(count, int | np.integer) or count < 0:
        raise ConfigError(f"must be a non-negative integer, got {count!r}", key="count")
    count = int(count)
    mac = hmac.new(_seed_bytes(seed), _SAMPLE_DOMAIN + bytes(commitment), hashlib.sha256)
    if count == 0:
        return np.zeros(0, dtype=np.uint64)
    stream = hashlib.shake_256(mac.digest()).digest(8 * count)
    words = np.frombuffer(stream, dtype=">u8").astype(np.uint64)
    return words >> np.uint64(11)


def decision_values(seed: bytes | EpochSeed, commitment: bytes, count: int) -> np.ndarray:
    """One float64 in [0, 1) per job of a committed batch, derived from the epoch seed.

    ``value_i = x_i / 2**53`` with ``x_i`` the i-th 53-bit integer of the stream (exact in
    float64). Same inputs, same values; a different seed or commitment, unrelated values.
    """
    return decision_ints(seed, commitment, count).astype(np.float64) / float(_TWO53)


def _check_rate(rate: float, key: str) -> float:
    r = float(rate)
    if not (0.0 <= r <= 1.0):  # also rejects NaN
        raise ConfigError(f"must be in [0, 1], got {rate!r}", key=key)
    return r


def rates_to_ppb(rates: Sequence[float] | np.ndarray) -> list[int]:
    """Rates in [0, 1] as integer parts per billion (round half to even), for the ledger."""
    if type(rates) is list:
        # a batch holds few distinct rates (one per importance, 0.0 for re-executions):
        # each converted once. round() on a float rounds half to even, as np.rint does
        conv: dict[float, int] = {}
        out = []
        for r in rates:
            if type(r) is not float:
                break  # an int, a numpy scalar or array, ...: the checked path below
            v = conv.get(r)
            if v is None:
                if not 0.0 <= r <= 1.0:
                    break  # out of range or NaN: the checked path raises
                v = conv[r] = round(r * PPB)
            out.append(v)
        else:
            return out
    arr = np.asarray(rates, dtype=np.float64).reshape(-1)
    if arr.size and not (np.all(arr >= 0.0) and np.all(arr <= 1.0)):
        bad = arr[~((arr >= 0.0) & (arr <= 1.0))][0]
        raise ConfigError(f"must be in [0, 1], got {float(bad)!r}", key="rates")
    return [int(v) for v in np.rint(arr * PPB).astype(np.int64)]


def ppb_to_rates(ppb: Sequence[int] | np.ndarray) -> list[float]:
    """Inverse of :func:`rates_to_ppb` (``ppb / 1e9`` as floats)."""
    out = []
    for v in _check_ppb(ppb):
        out.append(v / PPB)
    return out


def _check_ppb(ppb: Sequence[int] | np.ndarray) -> list[int]:
    if type(ppb) is list and all(type(v) is int and 0 <= v <= PPB for v in ppb):
        return ppb
    vals = []
    for v in np.asarray(ppb).reshape(-1).tolist():
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= PPB:
            raise ConfigError(f"must be integers in [0, {PPB}], got {v!r}", key="ppb")
        vals.append(v)
    return vals


def decide(
    seed: bytes | EpochSeed,
    commitment: bytes,
    rates: Sequence[float] | np.ndarray | None = None,
    *,
    ppb: Sequence[int] | np.ndarray | None = None,
) -> list[bool]:
    """Which jobs of a committed batch are sampled: job i iff ``value_i < rate_i``.

    Pass float ``rates`` (converted to ppb first) or integer ``ppb=`` (what the ledger
    stores), not both. Decided in integer arithmetic:
    ``x_i * 10**9 < ppb_i * 2**53``, so an audit from the ledger reproduces it exactly.
    """
    if rates is not None and ppb is None:
        levels = rates_to_ppb(rates)
    elif ppb is not None and rates is None:
        levels = _check_ppb(ppb)
    else:
        raise ConfigError("give exactly one of rates and ppb", key="rates")
    if not levels:
        return []
    x = decision_ints(seed, commitment, len(levels))
    # threshold t = ceil(ppb * 2**53 / 1e9): for integer x, x*1e9 < ppb*2**53  <=>  x < t.
    # Computed in Python ints (exact) once per distinct rate.
    l0 = levels[0]
    if levels.count(l0) == len(levels):  # one rate for the batch: one threshold
        return (x < np.uint64(-((-l0 * _TWO53) // PPB))).tolist()
    th: dict[int, int] = {}
    for v in levels:
        if v not in th:
            th[v] = -((-v * _TWO53) // PPB)
    return (x < np.array([th[v] for v in levels], dtype=np.uint64)).tolist()


# ------------------------------------------------------------------------------ policies


@runtime_checkable
class SamplingPolicy(Protocol):
    """How often a node's task is re-executed. Policies never see the epoch seed.

    - ``rate(node, importance=1.0) -> float``: the sampling probability in [0, 1] for the
      next task of ``node`` (32-byte public key), whose caller-declared importance is
      ``importance`` (>= 0; 1.0 is ordinary).
    - ``observe(node, outcome)``: what became of one of the node's tasks, one of
      :data:`OUTCOMES`.
    - ``p_min``: the lowest rate any task can get. Deterrence is as strong as this rate,
      not the average: a rational cheater cheats where it is least likely to be checked.
    """

    @property
    def p_min(self) -> float: ...

    def rate(self, node: bytes, importance: float = 1.0) -> float: ...

    def observe(self, node: bytes, outcome: str) -> None: ...


def _check_outcome(outcome: str) -> None:
    if outcome not in OUTCOMES:
        raise ConfigError(
            f"unknown outcome {outcome!r}; expected one of {sorted(OUTCOMES)}", key="outcome"
        )


def _check_importance(importance: float) -> float:
    x = float(importance)
    if not (math.isfinite(x) and x >= 0.0):
        raise ConfigError(f"must be a finite number >= 0, got {importance!r}", key="importance")
    return x


class UniformPolicy:
    """Every task sampled with the same probability ``p``."""

    def __init__(self, p: float) -> None:
        self.p = _check_rate(p, "p")

    @property
    def p_min(self) -> float:
        return self.p

    def rate(self, node: bytes, importance: float = 1.0) -> float:
        _check_importance(importance)
        return self.p

    def observe(self, node: bytes, outcome: str) -> None:
        _check_outcome(outcome)

    def __repr__(self) -> str:
        return f"UniformPolicy(p={self.p})"


class ImportancePolicy:
    """Rate grows with the task's declared importance: ``clip(p_base * importance, p_min, p_max)``.

    The importance is the caller's business and the coordinator's only: it is never
    sent to nodes (a node that knew which tasks matter would cheat on the others). Even
    so, deterrence rests on ``p_min``, the rate of the least important task, which must
    stay at or above the Nash threshold p*.
    """

    def __init__(self, p_base: float, p_min: float, p_max: float = 1.0) -> None:
        self.p_base = _check_rate(p_base, "p_base")
        self._p_min = _check_rate(p_min, "p_min")
        self.p_max = _check_rate(p_max, "p_max")
        if self._p_min > self.p_base:
            raise ConfigError(f"must be <= p_base ({self.p_base}), got {p_min}", key="p_min")
        if self.p_max < self.p_base:
            raise ConfigError(f"must be >= p_base ({self.p_base}), got {p_max}", key="p_max")

    @property
    def p_min(self) -> float:
        return self._p_min

    def rate(self, node: bytes, importance: float = 1.0) -> float:
        x = _check_importance(importance)
        return min(self.p_max, max(self._p_min, self.p_base * x))

    def observe(self, node: bytes, outcome: str) -> None:
        _check_outcome(outcome)

    def __repr__(self) -> str:
        return f"ImportancePolicy(p_base={self.p_base}, p_min={self._p_min}, p_max={self.p_max})"


@dataclass
class _NodeState:
    streak: int = 0  # consecutive verified (sampled and agreed) tasks since the last fault
    watch: int = 0  # tasks left under closer watch after drift or a dispute


class AdaptivePolicy:
    """Risk-based rates in the manner of BOINC's adaptive replication.

    Per node, the policy counts consecutive verified tasks (sampled and agreed). The rate
    of a task, before importance, is:

    - ``new_node_rate`` while the node has fewer than ``warmup`` verified tasks (new
      nodes, and nodes whose trust was reset);
    - then ``p_base * warmup / streak``: trust grows with the streak, halving the rate
      each time the streak doubles, down to ``floor`` and never below it;
    - at least ``suspect_rate`` for the next ``watch`` tasks after a ``"drift"`` or
      ``"dispute"`` outcome;
    - at least ``suspect_rate`` when ``stake_of(node)`` is below
      ``low_stake_multiple * min_bond`` (the slash a node can pay is bounded by its stake,
      so a thin stake deters less), and 1.0 below ``min_bond`` itself.

    ``"fault"`` and ``"slashed"`` reset the streak to 0 (back to ``new_node_rate``);
    ``"not_sampled"`` leaves it unchanged (nothing was verified). Importance then scales
    the rate: ``clip(rate * importance, floor, 1)``.

    The floor is what deters: a patient cheater can behave until trusted, so
    ``floor >= p*`` is the condition that matters, and ``p_min`` returns it.
    """

    def __init__(
        self,
        p_base: float,
        floor: float,
        new_node_rate: float,
        *,
        suspect_rate: float | None = None,
        warmup: int = 10,
        watch: int = 20,
        stake_of: Callable[[bytes], int] | None = None,
        min_bond: int | None = None,
        low_stake_multiple: float = 2.0,
    ) -> None:
        self.p_base = _check_rate(p_base, "p_base")
        self.floor = _check_rate(floor, "floor")
        self.new_node_rate = _check_rate(new_node_rate, "new_node_rate")
        self.suspect_rate = _check_rate(
            new_node_rate if suspect_rate is None else suspect_rate, "suspect_rate"
        )
        if self.floor > self.p_base:
            raise ConfigError(f"must be <= p_base ({self.p_base}), got {floor}", key="floor")
        if self.new_node_rate < self.p_base:
            raise ConfigError(
                f"must be >= p_base ({self.p_base}), got {new_node_rate}", key="new_node_rate"
            )
        if self.suspect_rate < self.p_base:
            raise ConfigError(
                f"must be >= p_base ({self.p_base}), got {suspect_rate}", key="suspect_rate"
            )
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 1:
            raise ConfigError(f"must be an integer >= 1, got {warmup!r}", key="warmup")
        if isinstance(watch, bool) or not isinstance(watch, int) or watch < 0:
            raise ConfigError(f"must be an integer >= 0, got {watch!r}", key="watch")
        if min_bond is not None and (
            isinstance(min_bond, bool) or not isinstance(min_bond, int) or min_bond < 0
        ):
            raise ConfigError(f"must be an integer >= 0, got {min_bond!r}", key="min_bond")
        if stake_of is not None and min_bond is None:
            raise ConfigError("is required when stake_of is given", key="min_bond")
        if not (math.isfinite(low_stake_multiple) and low_stake_multiple >= 1.0):
            raise ConfigError(
                f"must be a finite number >= 1, got {low_stake_multiple!r}",
                key="low_stake_multiple",
            )
        self.warmup = warmup
        self.watch = watch
        self.stake_of = stake_of
        self.min_bond = min_bond
        self.low_stake_multiple = float(low_stake_multiple)
        self._nodes: dict[bytes, _NodeState] = {}

    @property
    def p_min(self) -> float:
        return self.floor

    def streak(self, node: bytes) -> int:
        """Consecutive verified tasks of ``node`` since its last fault (0 if unknown)."""
        st = self._nodes.get(bytes(node))
        return st.streak if st else 0

    def rate(self, node: bytes, importance: float = 1.0) -> float:
        x = _check_importance(importance)
        st = self._nodes.get(bytes(node)) or _NodeState()
        if st.streak < self.warmup:
            r = self.new_node_rate
        else:
            r = max(self.floor, self.p_base * self.warmup / st.streak)
        if st.watch > 0:
            r = max(r, self.suspect_rate)
        if self.stake_of is not None and self.min_bond is not None:
            stake = self.stake_of(bytes(node))
            if stake < self.min_bond:
                r = 1.0
            elif stake < self.low_stake_multiple * self.min_bond:
                r = max(r, self.suspect_rate)
        return min(1.0, max(self.floor, r * x))

    def observe(self, node: bytes, outcome: str) -> None:
        _check_outcome(outcome)
        st = self._nodes.setdefault(bytes(node), _NodeState())
        if outcome in ("agreed", "not_sampled"):
            if outcome == "agreed":
                st.streak += 1
            if st.watch > 0:
                st.watch -= 1
        elif outcome in ("drift", "dispute"):
            st.watch = self.watch
        else:  # fault, slashed
            st.streak = 0
            st.watch = self.watch

    def __repr__(self) -> str:
        return (
            f"AdaptivePolicy(p_base={self.p_base}, floor={self.floor}, "
            f"new_node_rate={self.new_node_rate}, nodes={len(self._nodes)})"
        )
