"""Canonical encoding: the one module that imports msgpack.

Wire records are frozen, typed values encoded as tagged, versioned msgpack arrays in a
fixed field order: ``[tag, version, field_1, ..., field_n]``. There are no maps on the
wire, so a hash never covers a structure whose order could change, and the same value
always gives the same bytes (msgpack picks the shortest integer form deterministically;
floats are always float64).

Arrays travel as the record ``["nd", 1, dtype, shape, data]`` where ``dtype`` is one of
:data:`DTYPES` and ``data`` is the C-order little-endian bytes. ``bfloat16`` has no numpy
dtype: the lossless route is to view the torch tensor as ``int16``/``uint16`` bits
(``t.view(torch.uint16)``) and wrap it with :func:`bf16_array`, which tags the array as
``"bf16"`` so that its digest and its decoding keep the meaning of the bits.

Decoding is strict and bounded by :class:`Limits`: a wrong type, length, size or depth
raises :class:`~posp.errors.MalformedMessage` naming the field; nothing half-decoded
escapes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, TypeVar

import msgpack
import numpy as np

from .errors import MalformedMessage

__all__ = [
    "DTYPES",
    "Limits",
    "NDArray",
    "Record",
    "bf16_array",
    "decode",
    "decode_array",
    "encode",
    "encode_array",
    "field_bytes",
    "field_int",
    "field_list",
    "field_str",
    "record",
]

#: wire dtype name -> numpy dtype (little-endian). "bf16" is stored as uint16 bits.
DTYPES: dict[str, np.dtype[Any]] = {
    "bool": np.dtype("?"),
    "i1": np.dtype("<i1"),
    "i2": np.dtype("<i2"),
    "i4": np.dtype("<i4"),
    "i8": np.dtype("<i8"),
    "u1": np.dtype("<u1"),
    "u2": np.dtype("<u2"),
    "u4": np.dtype("<u4"),
    "u8": np.dtype("<u8"),
    "f2": np.dtype("<f2"),
    "f4": np.dtype("<f4"),
    "f8": np.dtype("<f8"),
    "bf16": np.dtype("<u2"),
}
_NP_TO_WIRE: dict[np.dtype[Any], str] = {v: k for k, v in DTYPES.items() if k != "bf16"}

_INT_MIN = -(2**63)
_UINT_MAX = 2**64 - 1


@dataclasses.dataclass(frozen=True)
class Limits:
    """Bounds on what :func:`decode` accepts. Defaults fit a batch of model outputs."""

    max_message_bytes: int = 256 * 1024 * 1024
    max_array_elements: int = 64 * 1024 * 1024
    max_depth: int = 32
    max_items: int = 1_000_000  # per list
    max_str_len: int = 1 << 20
    max_bin_len: int = 256 * 1024 * 1024


DEFAULT_LIMITS = Limits()


@dataclasses.dataclass(frozen=True, eq=False)
class NDArray:
    """An array value on the wire: a wire dtype name plus a read-only numpy array.

    ``NDArray`` exists so that bfloat16 bits (numpy ``uint16``) keep their meaning; for
    every other dtype it is interchangeable with the plain numpy array.
    """

    dtype: str
    array: np.ndarray

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, NDArray):
            return NotImplemented
        return (
            self.dtype == other.dtype
            and self.array.shape == other.array.shape
            and self.array.tobytes() == other.array.tobytes()
        )

    def __hash__(self) -> int:
        return hash((self.dtype, self.array.shape, self.array.tobytes()))


def bf16_array(bits: np.ndarray) -> NDArray:
    """Wrap the raw bits of a bfloat16 tensor (as uint16 or int16) as a ``bf16`` array."""
    if bits.dtype.itemsize != 2 or bits.dtype.kind not in "iu":
        raise MalformedMessage("bfloat16 bits must be a 16-bit integer array", field="dtype")
    return NDArray("bf16", np.ascontiguousarray(bits).view("<u2"))


def _as_ndarray(value: np.ndarray | NDArray) -> tuple[str, np.ndarray]:
    if isinstance(value, NDArray):
        return value.dtype, value.array
    dt = value.dtype
    if dt.byteorder == ">":
        dt = dt.newbyteorder("<")
    wire = _NP_TO_WIRE.get(np.dtype(dt))
    if wire is None:
        raise MalformedMessage(f"unsupported array dtype {value.dtype}", field="dtype")
    return wire, value


def array_bytes(value: np.ndarray | NDArray) -> tuple[str, tuple[int, ...], memoryview]:
    """(wire dtype, shape, C-order little-endian bytes) of an array, copying only if needed."""
    wire, arr = _as_ndarray(value)
    le = arr.astype(DTYPES[wire], copy=False)
    le = np.ascontiguousarray(le)
    return wire, tuple(int(s) for s in le.shape), memoryview(le).cast("B")


class Record:
    """Base of wire records: frozen dataclasses with a tag, a version and typed fields.

    Subclasses are ``@dataclass(frozen=True, slots=True)`` classes that set ``TAG`` and
    ``VERSION`` and list their fields in wire order. ``to_wire`` returns the list encoded
    on the wire; ``from_wire`` validates each field with the checker named in
    ``WIRE_CHECKS`` (a tuple, one per field, of callables ``(value, field_name) -> value``).
    """

    TAG: ClassVar[str]
    VERSION: ClassVar[int]
    WIRE_CHECKS: ClassVar[tuple[Callable[[Any, str], Any], ...]]

    def to_wire(self) -> list[Any]:
        names = [f.name for f in dataclasses.fields(self)]  # type: ignore[arg-type]
        return [self.TAG, self.VERSION, *(_to_wire_value(getattr(self, n)) for n in names)]

    @classmethod
    def from_wire(cls: type[R], items: Any) -> R:
        fields = dataclasses.fields(cls)  # type: ignore[arg-type]
        where = cls.TAG
        if not isinstance(items, list):
            raise MalformedMessage("expected a record array", field=where)
        if len(items) != 2 + len(fields):
            raise MalformedMessage(
                f"expected {2 + len(fields)} items, got {len(items)}", field=where
            )
        if items[0] != cls.TAG:
            raise MalformedMessage(f"expected tag {cls.TAG!r}, got {items[0]!r}", field=where)
        if items[1] != cls.VERSION or type(items[1]) is not int:
            raise MalformedMessage(f"unknown version {items[1]!r}", field=f"{where}.version")
        values = {}
        for f, check, raw in zip(fields, cls.WIRE_CHECKS, items[2:], strict=True):
            values[f.name] = check(raw, f"{where}.{f.name}")
        try:
            return cls(**values)
        except MalformedMessage:
            raise
        except (TypeError, ValueError) as exc:
            raise MalformedMessage(str(exc), field=where) from exc

    def encode(self) -> bytes:
        return encode(self)

    @classmethod
    def decode(cls: type[R], data: bytes, *, limits: Limits = DEFAULT_LIMITS) -> R:
        return cls.from_wire(decode(data, limits=limits, records=False))


R = TypeVar("R", bound=Record)

_REGISTRY: dict[str, type[Record]] = {}


def record(cls: type[R]) -> type[R]:
    """Class decorator: register a Record subclass so :func:`decode` can rebuild it."""
    if cls.TAG in _REGISTRY and _REGISTRY[cls.TAG] is not cls:
        raise ValueError(f"record tag {cls.TAG!r} registered twice")
    _REGISTRY[cls.TAG] = cls
    return cls


# ---- field checkers (used in WIRE_CHECKS) -------------------------------------------


def field_int(value: Any, name: str) -> int:
    if type(value) is not int:
        raise MalformedMessage(f"expected int, got {type(value).__name__}", field=name)
    return value


def field_uint(value: Any, name: str) -> int:
    v = field_int(value, name)
    if v < 0:
        raise MalformedMessage("expected a non-negative int", field=name)
    return v


def field_float(value: Any, name: str) -> float:
    if type(value) is float:
        return value
    if type(value) is int:
        return float(value)
    raise MalformedMessage(f"expected float, got {type(value).__name__}", field=name)


def field_bool(value: Any, name: str) -> bool:
    if type(value) is not bool:
        raise MalformedMessage(f"expected bool, got {type(value).__name__}", field=name)
    return value


def field_str(value: Any, name: str) -> str:
    if type(value) is not str:
        raise MalformedMessage(f"expected str, got {type(value).__name__}", field=name)
    return value


def field_bytes(value: Any, name: str) -> bytes:
    if type(value) is not bytes:
        raise MalformedMessage(f"expected bytes, got {type(value).__name__}", field=name)
    return value


def field_digest(value: Any, name: str) -> bytes:
    """A 32-byte digest."""
    b = field_bytes(value, name)
    if len(b) != 32:
        raise MalformedMessage(f"expected 32 bytes, got {len(b)}", field=name)
    return b


def field_fixed_bytes(n: int) -> Callable[[Any, str], bytes]:
    def check(value: Any, name: str) -> bytes:
        b = field_bytes(value, name)
        if len(b) != n:
            raise MalformedMessage(f"expected {n} bytes, got {len(b)}", field=name)
        return b

    return check


def field_list(item: Callable[[Any, str], Any]) -> Callable[[Any, str], tuple[Any, ...]]:
    """A list whose items all pass ``item``; decoded as a tuple (records are immutable)."""

    def check(value: Any, name: str) -> tuple[Any, ...]:
        if not isinstance(value, list):
            raise MalformedMessage(f"expected list, got {type(value).__name__}", field=name)
        return tuple(item(v, f"{name}[{i}]") for i, v in enumerate(value))

    return check


def field_record(cls: type[R]) -> Callable[[Any, str], R]:
    def check(value: Any, name: str) -> R:
        if isinstance(value, cls):
            return value
        try:
            return cls.from_wire(value)
        except MalformedMessage as exc:
            raise MalformedMessage(str(exc), field=name) from exc

    return check


def field_array(value: Any, name: str) -> np.ndarray | NDArray:
    if isinstance(value, np.ndarray | NDArray):
        return value
    return _array_from_wire(value, name, DEFAULT_LIMITS)


def field_any(value: Any, name: str) -> Any:
    return value


# ---- encode ---------------------------------------------------------------------------


def _to_wire_value(value: Any) -> Any:
    if isinstance(value, Record):
        return value.to_wire()
    if isinstance(value, np.ndarray | NDArray):
        wire, shape, data = array_bytes(value)
        return ["nd", 1, wire, list(shape), data]
    if isinstance(value, list | tuple):
        return [_to_wire_value(v) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        if not _INT_MIN <= value <= _UINT_MAX:
            raise MalformedMessage(f"integer {value} out of 64-bit range")
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str | bytes):
        return value
    if isinstance(value, memoryview | bytearray):
        return bytes(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.bool_):
        return bool(value)
    raise MalformedMessage(f"cannot encode value of type {type(value).__name__}")


def encode(value: Any) -> bytes:
    """Canonical bytes of a value: records, arrays, lists/tuples, scalars, str, bytes.

    Maps are refused: their order is not part of their value.
    """
    wire = _to_wire_value(value)
    return msgpack.packb(wire, use_bin_type=True, use_single_float=False, strict_types=False)


def encode_array(value: np.ndarray | NDArray) -> bytes:
    return encode(value)


# ---- decode ---------------------------------------------------------------------------


def _array_from_wire(items: Any, name: str, limits: Limits) -> np.ndarray | NDArray:
    if not isinstance(items, list) or len(items) != 5 or items[0] != "nd":
        raise MalformedMessage("expected an array record", field=name)
    if items[1] != 1 or type(items[1]) is not int:
        raise MalformedMessage(f"unknown array version {items[1]!r}", field=f"{name}.version")
    wire = items[2]
    if type(wire) is not str or wire not in DTYPES:
        raise MalformedMessage(f"dtype {wire!r} not allowed", field=f"{name}.dtype")
    shape = items[3]
    if not isinstance(shape, list) or len(shape) > 32:
        raise MalformedMessage("expected a shape list of at most 32 dims", field=f"{name}.shape")
    count = 1
    for i, s in enumerate(shape):
        if type(s) is not int or s < 0:
            raise MalformedMessage("expected a non-negative int", field=f"{name}.shape[{i}]")
        count *= s
        if count > limits.max_array_elements:
            raise MalformedMessage(
                f"more than {limits.max_array_elements} elements", field=f"{name}.shape"
            )
    data = items[4]
    if type(data) is not bytes:
        raise MalformedMessage("expected bytes", field=f"{name}.data")
    dt = DTYPES[wire]
    if len(data) != count * dt.itemsize:
        raise MalformedMessage(
            f"expected {count * dt.itemsize} bytes for shape {shape}, got {len(data)}",
            field=f"{name}.data",
        )
    arr = np.frombuffer(data, dtype=dt).reshape(shape)
    if wire == "bf16":
        return NDArray("bf16", arr)
    return arr


def _walk(value: Any, depth: int, name: str, limits: Limits, records: bool) -> Any:
    if depth > limits.max_depth:
        raise MalformedMessage(f"nesting deeper than {limits.max_depth}", field=name)
    if isinstance(value, list):
        if len(value) > limits.max_items:
            raise MalformedMessage(f"more than {limits.max_items} items", field=name)
        if value and value[0] == "nd" and len(value) == 5:
            return _array_from_wire(value, name, limits)
        out = [_walk(v, depth + 1, f"{name}[{i}]", limits, records) for i, v in enumerate(value)]
        if records and out and type(out[0]) is str and out[0] in _REGISTRY:
            return _REGISTRY[out[0]].from_wire(out)
        return out
    if isinstance(value, float):
        return value
    return value


def decode(
    data: bytes | bytearray | memoryview,
    *,
    limits: Limits = DEFAULT_LIMITS,
    records: bool = True,
) -> Any:
    """Strictly decode canonical bytes.

    With ``records=True`` every list whose first item is a registered record tag is
    rebuilt as that record (and validated). Raises :class:`MalformedMessage` for anything
    malformed, oversized or of the wrong type, never another exception.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MalformedMessage(f"expected bytes, got {type(data).__name__}", field="message")
    if len(data) > limits.max_message_bytes:
        raise MalformedMessage(
            f"{len(data)} bytes exceeds the limit of {limits.max_message_bytes}", field="message"
        )
    try:
        raw = msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_str_len=limits.max_str_len,
            max_bin_len=limits.max_bin_len,
            max_array_len=limits.max_items,
            max_map_len=0,
            max_ext_len=0,
        )
    except MalformedMessage:
        raise
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError,
            msgpack.OutOfData, UnicodeDecodeError, RecursionError, OverflowError) as exc:
        raise MalformedMessage(f"not canonical msgpack: {exc}", field="message") from exc
    except Exception as exc:  # msgpack raises a few undocumented types; translate all
        raise MalformedMessage(f"not canonical msgpack: {exc!r}", field="message") from exc
    try:
        return _walk(raw, 0, "message", limits, records)
    except MalformedMessage:
        raise
    except RecursionError as exc:
        raise MalformedMessage("nesting too deep", field="message") from exc


def decode_array(data: bytes, *, limits: Limits = DEFAULT_LIMITS) -> np.ndarray | NDArray:
    value = decode(data, limits=limits, records=False)
    if not isinstance(value, np.ndarray | NDArray):
        raise MalformedMessage("expected an array", field="message")
    return value


def to_wire_list(items: Sequence[Any]) -> list[Any]:
    return [_to_wire_value(v) for v in items]
