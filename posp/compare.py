"""Numeric comparators: two outputs in, a :class:`Verdict` (kind and measured distance) out.

Floating point is not reproducible across batch sizes, thread counts or hardware, so a
digest mismatch only starts a dispute; a comparator then measures *how far apart* two
outputs are. Every comparator is a small frozen value with a ``metric`` name and a
``tolerance`` and one method, ``compare(a, b) -> Verdict``:

* ``MATCH``    the arrays are equal element for element (same shape and dtype; equal NaN
  positions count as equal and ``-0.0 == 0.0``), distance 0;
* ``DRIFT``    not equal, but the distance is within the tolerance (honest numeric drift);
* ``MISMATCH`` the distance exceeds the tolerance, or the outputs are not comparable at all
  (shape or dtype differ, not an array, a NaN where the other side has a number):
  distance ``inf``.

A cheater sending garbage is a *result*, never an exception: ``compare`` does not raise on
anything a node can send. Exceptions are reserved for misuse (a negative tolerance).

Comparators accept numpy arrays and :class:`~posp.encoding.NDArray` (bfloat16 bits are
widened exactly to float32). Integer and bool arrays are compared as numbers.
Workloads choose and parametrise them (``with_tolerance`` sets a calibrated tolerance).
"""

from __future__ import annotations

import dataclasses
import enum
import math
from typing import Any, ClassVar, Protocol, TypeVar, runtime_checkable

import numpy as np

from .encoding import NDArray
from .errors import ConfigError

__all__ = [
    "Comparator",
    "Cosine",
    "Elementwise",
    "Exact",
    "MaxAbs",
    "MaxUlp",
    "RelativeL2",
    "TopKAgreement",
    "Verdict",
    "VerdictKind",
    "as_numeric",
    "bitwise_equal",
]

INF = math.inf


class VerdictKind(enum.Enum):
    """How two outputs relate: equal, apart within tolerance, or apart beyond it."""

    MATCH = "match"
    DRIFT = "drift"
    MISMATCH = "mismatch"


@dataclasses.dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of one comparison: its kind plus the measured distance, never a bare bool."""

    kind: VerdictKind
    distance: float
    metric: str
    tolerance: float

    @property
    def agrees(self) -> bool:
        """True for MATCH and DRIFT: the two outputs are the same answer."""
        return self.kind is not VerdictKind.MISMATCH

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "distance": self.distance,
            "metric": self.metric,
            "tolerance": self.tolerance,
        }


@runtime_checkable
class Comparator(Protocol):
    """What the protocol needs from a comparator."""

    @property
    def metric(self) -> str: ...

    @property
    def tolerance(self) -> float: ...

    def compare(self, a: Any, b: Any) -> Verdict: ...

    def with_tolerance(self, tolerance: float) -> Comparator: ...


# ---- coercion ------------------------------------------------------------------------


def as_numeric(value: Any) -> np.ndarray | None:
    """A numeric numpy view of ``value``, or None if it is not a comparable array.

    bfloat16 bits (``NDArray("bf16", ...)``) are widened exactly to float32.
    """
    if isinstance(value, NDArray):
        if value.dtype == "bf16":
            bits = np.ascontiguousarray(value.array).view("<u2").astype(np.uint32) << 16
            return bits.view(np.float32)
        value = value.array
    if not isinstance(value, np.ndarray):
        return None
    if value.dtype.kind not in "biuf":
        return None
    return value


def _coerce(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """Both arrays if they are comparable (numeric, same shape and dtype), else None."""
    if isinstance(a, NDArray) != isinstance(b, NDArray):
        return None
    if isinstance(a, NDArray) and isinstance(b, NDArray) and a.dtype != b.dtype:
        return None
    x, y = as_numeric(a), as_numeric(b)
    if x is None or y is None:
        return None
    if x.shape != y.shape or x.dtype != y.dtype:
        return None
    return x, y


def bitwise_equal(a: np.ndarray, b: np.ndarray) -> bool:
    """Element-wise equality of two same-shape arrays; equal NaN positions are equal."""
    if a.dtype.kind == "f":
        return bool(np.array_equal(a, b, equal_nan=True))
    return bool(np.array_equal(a, b))


def _float(x: np.ndarray) -> np.ndarray:
    """Float64 copy of a numeric array (float64 keeps every smaller dtype exact)."""
    return x.astype(np.float64, copy=False)


def _abs_diff(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """|x - y| in float64 with equal elements (incl. equal NaN / equal inf) set to 0.

    A NaN facing a number, or inf facing a different value, yields inf.
    """
    xf, yf = _float(x), _float(y)
    with np.errstate(invalid="ignore", over="ignore"):
        d = np.abs(xf - yf)
    same = (xf == yf) | (np.isnan(xf) & np.isnan(yf))
    d = np.where(same, 0.0, d)
    return np.where(np.isnan(d), INF, d)


def _drop_equal_nonfinite(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Float64 copies with equal non-finite pairs (NaN/NaN, inf/inf) zeroed on both sides.

    None if a non-finite value remains (it faces a different value): not comparable.
    """
    xf, yf = _float(x), _float(y)
    if np.all(np.isfinite(xf)) and np.all(np.isfinite(yf)):
        return xf, yf
    same = (xf == yf) | (np.isnan(xf) & np.isnan(yf))
    xf = np.where(same & ~np.isfinite(xf), 0.0, xf)
    yf = np.where(same & ~np.isfinite(yf), 0.0, yf)
    if not (np.all(np.isfinite(xf)) and np.all(np.isfinite(yf))):
        return None
    return xf, yf


def _finite_max(d: np.ndarray) -> float:
    if d.size == 0:
        return 0.0
    m = float(np.max(d))
    return INF if math.isnan(m) else m


def _check_tol(name: str, value: float) -> float:
    v = float(value)
    if not (v >= 0.0) or math.isnan(v):
        raise ConfigError(f"must be a non-negative number, got {value!r}", key=name)
    return v


T = TypeVar("T", bound="_Base")


@dataclasses.dataclass(frozen=True, slots=True)
class _Base:
    """Shared logic: comparability, MATCH detection, then ``_distance`` vs ``tolerance``."""

    METRIC: ClassVar[str] = ""

    @property
    def metric(self) -> str:
        return self.METRIC

    @property
    def tolerance(self) -> float:
        return self.tol  # type: ignore[attr-defined]  # every subclass has ``tol``

    def _distance(self, x: np.ndarray, y: np.ndarray) -> float:
        raise NotImplementedError

    def _verdict(self, kind: VerdictKind, distance: float) -> Verdict:
        return Verdict(kind, distance, self.metric, self.tolerance)

    def compare(self, a: Any, b: Any) -> Verdict:
        pair = _coerce(a, b)
        if pair is None:
            return self._verdict(VerdictKind.MISMATCH, INF)
        x, y = pair
        if bitwise_equal(x, y):
            return self._verdict(VerdictKind.MATCH, 0.0)
        dist = float(self._distance(x, y))
        if math.isnan(dist):
            dist = INF
        kind = VerdictKind.DRIFT if dist <= self.tolerance else VerdictKind.MISMATCH
        return self._verdict(kind, dist)

    def with_tolerance(self: T, tolerance: float) -> T:
        """A copy with ``tolerance`` (e.g. a calibrated one); the other parameters kept."""
        return dataclasses.replace(self, tol=_check_tol("tolerance", tolerance))  # type: ignore[call-arg]

    def params(self) -> dict[str, Any]:
        """JSON-able description: metric name plus parameters (for calibration files)."""
        out: dict[str, Any] = {"metric": self.metric}
        for f in dataclasses.fields(self):
            out[f.name] = getattr(self, f.name)
        return out


@dataclasses.dataclass(frozen=True, slots=True)
class Exact(_Base):
    """Bitwise equality (what a digest comparison decides); distance 0 or inf."""

    METRIC: ClassVar[str] = "exact"
    tol: float = 0.0

    def _distance(self, x: np.ndarray, y: np.ndarray) -> float:
        return INF


@dataclasses.dataclass(frozen=True, slots=True)
class Elementwise(_Base):
    """``max |a-b| / (atol + rtol * |b|)`` over elements (numpy's ``isclose``); tolerance 1.0.

    ``b`` is the reference (the checker's own output). Not symmetric in ``rtol``; a
    symmetric ``max(|a|, |b|)`` would let the distance shrink as ``a`` grows.
    """

    METRIC: ClassVar[str] = "elementwise"
    atol: float = 1e-6
    rtol: float = 1e-5
    tol: float = 1.0

    def __post_init__(self) -> None:
        _check_tol("atol", self.atol)
        _check_tol("rtol", self.rtol)

    def _distance(self, x: np.ndarray, y: np.ndarray) -> float:
        d = _abs_diff(x, y)
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            scale = self.atol + self.rtol * np.abs(_float(y))
            scale = np.where(np.isnan(scale), INF, scale)
            r = np.where(d == 0.0, 0.0, d / scale)
        # d > 0 with scale 0 gives inf; inf / inf (a NaN facing inf) is nan: not comparable
        r = np.where(np.isnan(r) | (np.isinf(d) & (d != 0.0)), INF, r)
        return _finite_max(r)


def _ordered_ints(x: np.ndarray) -> np.ndarray:
    """Map floats to int64 so that adjacent representable values differ by 1."""
    bits, lowest = {
        2: (np.int16, -(2**15)),
        4: (np.int32, -(2**31)),
        8: (np.int64, -(2**63)),
    }[x.dtype.itemsize]
    i = np.ascontiguousarray(x).view(bits).astype(np.int64)
    # sign-magnitude -> two's complement order; -0.0 and +0.0 both map to 0
    return np.where(i < 0, lowest - i, i)


@dataclasses.dataclass(frozen=True, slots=True)
class MaxUlp(_Base):
    """Largest distance in units in the last place of the arrays' own dtype.

    Integer arrays: ``|a - b|``. bfloat16 (``NDArray``) is measured in bfloat16 ULPs.
    A NaN or an infinity facing a different value is ``inf`` ULPs away.
    """

    METRIC: ClassVar[str] = "max_ulp"
    tol: float = 4.0

    def compare(self, a: Any, b: Any) -> Verdict:
        if isinstance(a, NDArray) and isinstance(b, NDArray) and a.dtype == b.dtype == "bf16":
            # measure on the 16-bit patterns themselves, as float16-sized integers
            pa = np.ascontiguousarray(a.array).view("<i2")
            pb = np.ascontiguousarray(b.array).view("<i2")
            x = as_numeric(a)
            y = as_numeric(b)
            if pa.shape != pb.shape or x is None or y is None:
                return self._verdict(VerdictKind.MISMATCH, INF)
            if bitwise_equal(x, y):
                return self._verdict(VerdictKind.MATCH, 0.0)
            return self._judge(self._ulps(pa.view(np.float16), pb.view(np.float16), x, y))
        return _Base.compare(self, a, b)

    def _judge(self, dist: float) -> Verdict:
        kind = VerdictKind.DRIFT if dist <= self.tolerance else VerdictKind.MISMATCH
        return self._verdict(kind, dist)

    @staticmethod
    def _ulps(
        bits_x: np.ndarray, bits_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray
    ) -> float:
        ox, oy = _ordered_ints(bits_x), _ordered_ints(bits_y)
        same_sign = (ox >= 0) == (oy >= 0)
        with np.errstate(over="ignore"):
            near = np.abs(np.where(same_sign, ox - oy, 0)).astype(np.float64)
            far = np.abs(ox).astype(np.float64) + np.abs(oy).astype(np.float64)
        d = np.where(same_sign, near, far)
        nx, ny = np.isnan(val_x), np.isnan(val_y)
        d = np.where(nx & ny, 0.0, d)
        d = np.where(nx ^ ny, INF, d)
        # an infinity facing any other value is not "a few ULPs" away, whatever the bits say
        ix, iy = np.isinf(val_x), np.isinf(val_y)
        d = np.where((ix | iy) & (d != 0.0), INF, d)
        return _finite_max(d)

    def _distance(self, x: np.ndarray, y: np.ndarray) -> float:
        if x.dtype.kind == "f":
            return self._ulps(x, y, x, y)
        return _finite_max(_abs_diff(x, y))


@dataclasses.dataclass(frozen=True, slots=True)
class MaxAbs(_Base):
    """Largest absolute element difference."""

    METRIC: ClassVar[str] = "max_abs"
    tol: float = 1e-5

    def _distance(self, x: np.ndarray, y: np.ndarray) -> float:
        return _finite_max(_abs_diff(x, y))


@dataclasses.dataclass(frozen=True, slots=True)
class RelativeL2(_Base):
    """``||a - b|| / max(||a||, ||b||)``: symmetric, scale-free, 1.0 against zeros."""

    METRIC: ClassVar[str] = "relative_l2"
    tol: float = 1e-4

    def _distance(self, x: np.ndarray, y: np.ndarray) -> float:
        pair = _drop_equal_nonfinite(x, y)
        if pair is None:
            return INF
        xf, yf = pair
        num = float(np.linalg.norm((xf - yf).ravel()))
        den = max(float(np.linalg.norm(xf.ravel())), float(np.linalg.norm(yf.ravel())))
        if num == 0.0:
            return 0.0
        return INF if den == 0.0 else num / den


@dataclasses.dataclass(frozen=True, slots=True)
class Cosine(_Base):
    """``1 - cos(a, b)`` over the flattened arrays (0 same direction, 2 opposite).

    A zero vector against a non-zero one is distance 1.0 (no shared direction).
    """

    METRIC: ClassVar[str] = "cosine"
    tol: float = 1e-6

    def _distance(self, x: np.ndarray, y: np.ndarray) -> float:
        pair = _drop_equal_nonfinite(x, y)
        if pair is None:
            return INF
        xf, yf = pair[0].ravel(), pair[1].ravel()
        nx, ny = float(np.linalg.norm(xf)), float(np.linalg.norm(yf))
        if nx == 0.0 or ny == 0.0:
            return 0.0 if nx == ny else 1.0
        cos = float(np.dot(xf / nx, yf / ny))
        return max(0.0, 1.0 - min(1.0, max(-1.0, cos)))


@dataclasses.dataclass(frozen=True, slots=True)
class TopKAgreement(_Base):
    """Top-k agreement of logits along the last axis.

    Distance = the worst row's ``1 - |topk(a) & topk(b)| / k`` (k=1: argmax disagreement).
    Ties inside the top-k are broken by index, so exact ties cannot disagree by accident;
    near-ties can, which is why workloads prefer a logit-distance metric for slashing.
    """

    METRIC: ClassVar[str] = "topk"
    k: int = 1
    tol: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.k, int) or self.k < 1:
            raise ConfigError(f"must be a positive int, got {self.k!r}", key="k")

    def _distance(self, x: np.ndarray, y: np.ndarray) -> float:
        if x.ndim == 0 or x.shape[-1] < self.k:
            return INF
        xf = _float(x).reshape(-1, x.shape[-1])
        yf = _float(y).reshape(-1, y.shape[-1])
        if np.isnan(xf).any() or np.isnan(yf).any():
            return INF
        if xf.shape[0] == 0:
            return 0.0
        # stable sort on the negated values: ties broken by lower index
        tx = np.argsort(-xf, axis=-1, kind="stable")[:, : self.k]
        ty = np.argsort(-yf, axis=-1, kind="stable")[:, : self.k]
        worst = 0.0
        for rx, ry in zip(tx, ty, strict=True):
            overlap = len(set(rx.tolist()) & set(ry.tolist()))
            worst = max(worst, 1.0 - overlap / self.k)
        return worst
