"""Canonical encoding: the one module that imports msgpack.

Wire records are frozen, typed values encoded as tagged, versioned msgpack arrays in a
fixed field order: ``[tag, version, field_1, ..., field_n]``. There are no maps on the
wire, so a hash never covers a structure whose order could change, and the same value
always gives the same bytes (msgpack picks the shortest integer form deterministically;
floats are always float64).

Arrays travel as the record ``["nd", 1, dtype, shape, data]`` where ``dtype`` is one of
:data:`DTYPES` and ``data`` is the C-order little-endian bytes (a big-endian or strided
input is converted, so equal values give equal bytes). ``bfloat16`` has no numpy dtype:
the lossless route is to view the torch tensor as 16-bit integer bits
(``t.view(torch.int16).numpy()``) and wrap them with :func:`bf16_array`, which tags the
array as ``"bf16"`` so that its digest and its decoding keep the meaning of the bits
(decoding gives back ``NDArray("bf16", uint16 bits)``).

A record is a list on the wire, so the first item of a list says what it is: a
five-item plain list may not start with the array tag ``"nd"`` (:func:`encode` refuses it
rather than write bytes that decode to something else), and a list that starts with a
registered record tag decodes as that record (``encode(rec.to_wire()) == encode(rec)``).

Decoding is strict and bounded by :class:`Limits`: a wrong type, length, size or depth,
and any byte string that is not exactly what :func:`encode` would produce for the decoded
value (non-minimal integers, float32, maps, extension types, trailing bytes), raises
:class:`~posp.errors.MalformedMessage` naming the field; nothing half-decoded escapes.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import struct
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar, TypeVar

import msgpack
import numpy as np

from .errors import MalformedMessage

__all__ = [
    "DEFAULT_LIMITS",
    "DTYPES",
    "Limits",
    "NDArray",
    "Record",
    "array_bytes",
    "bf16_array",
    "decode",
    "decode_array",
    "encode",
    "encode_array",
    "encoded_parts",
    "field_any",
    "field_array",
    "field_bool",
    "field_bytes",
    "field_digest",
    "field_fixed_bytes",
    "field_float",
    "field_int",
    "field_list",
    "field_record",
    "field_str",
    "field_uint",
    "record",
    "to_wire_list",
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

_ARRAY_TAG = "nd"
_ARRAY_VERSION = 1
_MAX_DIMS = 32
_INT_MIN = -(2**63)
_UINT_MAX = 2**64 - 1
#: the float64 quiet NaN that :func:`encoded_parts` writes for every scalar NaN on request
_CANONICAL_NAN: float = struct.unpack("<d", bytes.fromhex("000000000000f87f"))[0]


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


def _le_contiguous(arr: np.ndarray, dtype: np.dtype[Any]) -> np.ndarray:
    # np.ascontiguousarray would turn a 0-d array into shape (1,), changing the value
    le = arr.astype(dtype, copy=False)
    if not le.flags.c_contiguous:
        le = le.copy(order="C")
    return le


@dataclasses.dataclass(frozen=True, eq=False)
class NDArray:
    """An array value on the wire: a wire dtype name plus a read-only numpy array.

    ``NDArray`` exists so that bfloat16 bits (numpy ``uint16``) keep their meaning; for
    every other dtype it is interchangeable with the plain numpy array. The array is
    stored as a read-only, C-contiguous, little-endian view (copied only when the input
    is not already in that form).
    """

    dtype: str
    array: np.ndarray

    def __post_init__(self) -> None:
        if type(self.dtype) is not str or self.dtype not in DTYPES:
            raise MalformedMessage(f"dtype {self.dtype!r} not allowed", field="dtype")
        arr = self.array
        if not isinstance(arr, np.ndarray):
            raise MalformedMessage(
                f"expected a numpy array, got {type(arr).__name__}", field="array"
            )
        if self.dtype == "bf16":
            if arr.dtype.itemsize != 2 or arr.dtype.kind not in "iu":
                raise MalformedMessage(
                    "bfloat16 bits must be a 16-bit integer array", field="dtype"
                )
            # reinterpret the bits in their own byte order first, so no value is converted
            arr = _le_contiguous(arr, arr.dtype.newbyteorder("<")).view(DTYPES["bf16"])
        else:
            want = DTYPES[self.dtype]
            if arr.dtype.newbyteorder("<") != want:
                raise MalformedMessage(
                    f"array of dtype {arr.dtype} cannot be tagged {self.dtype!r}", field="dtype"
                )
            arr = _le_contiguous(arr, want)
        if arr.flags.writeable:
            arr = arr.view()
            arr.flags.writeable = False
        object.__setattr__(self, "array", arr)

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
    if not isinstance(bits, np.ndarray):
        raise MalformedMessage(f"expected a numpy array, got {type(bits).__name__}", field="array")
    return NDArray("bf16", bits)


def _as_ndarray(value: np.ndarray | NDArray) -> tuple[str, np.ndarray]:
    if isinstance(value, NDArray):
        return value.dtype, value.array
    dt = value.dtype
    wire = _NP_TO_WIRE.get(dt.newbyteorder("<")) if dt.isnative or dt.byteorder in "<>|" else None
    if wire is None:
        raise MalformedMessage(f"unsupported array dtype {value.dtype}", field="dtype")
    return wire, value


def array_bytes(value: np.ndarray | NDArray) -> tuple[str, tuple[int, ...], memoryview]:
    """(wire dtype, shape, C-order little-endian bytes) of an array, copying only if needed."""
    wire, arr = _as_ndarray(value)
    le = _le_contiguous(arr, DTYPES[wire])
    # a flat uint8 view: memoryview.cast refuses shapes with a zero in them
    return wire, tuple(int(s) for s in le.shape), memoryview(le.reshape(-1).view(np.uint8))  # type: ignore[arg-type]


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
        out: list[Any] = [self.TAG, self.VERSION]
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            try:
                out.append(_to_wire_value(getattr(self, f.name)))
            except MalformedMessage as exc:
                raise MalformedMessage(str(exc), field=f"{self.TAG}.{f.name}") from exc
        return out

    @classmethod
    def from_wire(cls: type[R], items: Any) -> R:
        fields = dataclasses.fields(cls)  # type: ignore[arg-type]
        where = cls.TAG
        if type(items) is not list:
            raise MalformedMessage("expected a record array", field=where)
        if len(items) != 2 + len(fields):
            raise MalformedMessage(
                f"expected {2 + len(fields)} items, got {len(items)}", field=where
            )
        # type checks first: comparing a numpy array with == gives an array, not a bool
        if type(items[0]) is not str or items[0] != cls.TAG:
            raise MalformedMessage(
                f"expected tag {cls.TAG!r}, got {_short(items[0])}", field=f"{where}.tag"
            )
        if type(items[1]) is not int or items[1] != cls.VERSION:
            raise MalformedMessage(
                f"unknown version {_short(items[1])}", field=f"{where}.version"
            )
        values = {}
        for f, check, raw in zip(fields, cls.WIRE_CHECKS, items[2:], strict=True):
            values[f.name] = check(raw, f"{where}.{f.name}")
        try:
            return cls(**values)
        except MalformedMessage:
            raise
        except Exception as exc:  # a __post_init__ refusing the values
            raise MalformedMessage(str(exc), field=where) from exc

    def encode(self) -> bytes:
        return encode(self)

    @classmethod
    def decode(cls: type[R], data: bytes, *, limits: Limits = DEFAULT_LIMITS) -> R:
        items = decode(data, limits=limits, records=False)
        try:
            return cls.from_wire(items)
        except MalformedMessage:
            raise
        except Exception as exc:  # a field checker that failed in an unplanned way
            raise MalformedMessage(f"{type(exc).__name__}: {exc}", field=cls.TAG) from exc


R = TypeVar("R", bound=Record)

_REGISTRY: dict[str, type[Record]] = {}


def record(cls: type[R]) -> type[R]:
    """Class decorator: register a Record subclass so :func:`decode` can rebuild it."""
    if type(cls.TAG) is not str or cls.TAG == _ARRAY_TAG:
        raise ValueError(f"record tag {cls.TAG!r} is reserved or not a str")
    if cls.TAG in _REGISTRY and _REGISTRY[cls.TAG] is not cls:
        raise ValueError(f"record tag {cls.TAG!r} registered twice")
    if len(cls.WIRE_CHECKS) != len(dataclasses.fields(cls)):  # type: ignore[arg-type]
        raise ValueError(f"record {cls.__name__}: one WIRE_CHECKS entry per field")
    _REGISTRY[cls.TAG] = cls
    return cls


def _short(value: Any) -> str:
    if isinstance(value, np.ndarray | NDArray):
        return "an array"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


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
    """A float; an int is accepted and converted (so ``Rec(x=1)`` still decodes)."""
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
        if not isinstance(value, list | tuple):
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
    """The msgpack-ready tree of a value; an array becomes ``["nd", 1, dtype, shape, mv]``.

    The memoryview in the last slot marks an array node: a user memoryview is turned into
    bytes here, so nothing else in the tree is a memoryview.
    """
    t = type(value)
    if t is bytes or t is str or (t is int and _INT_MIN <= value <= _UINT_MAX):
        return value  # already wire form (the common leaves, checked first)
    if isinstance(value, Record):
        return value.to_wire()
    if isinstance(value, np.ndarray | NDArray):
        wire, shape, data = array_bytes(value)
        return [_ARRAY_TAG, _ARRAY_VERSION, wire, list(shape), data]
    if isinstance(value, list | tuple):
        if len(value) == 5 and type(value[0]) is str and value[0] == _ARRAY_TAG:
            if _is_valid_array_node(value):  # from Record.to_wire(): already wire form
                return value
            raise MalformedMessage(f"a plain list may not start with the array tag {_ARRAY_TAG!r}")
        return [_to_wire_value(v) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        if not _INT_MIN <= value <= _UINT_MAX:
            raise MalformedMessage(f"integer {value} out of 64-bit range")
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, bytes | memoryview | bytearray):
        return bytes(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return _to_wire_value(int(value))
    if isinstance(value, np.floating):
        return float(value)
    raise MalformedMessage(f"cannot encode value of type {type(value).__name__}")


def _is_valid_array_node(node: Any) -> bool:
    if not (_is_array_node(node) and node[1] == _ARRAY_VERSION and type(node[1]) is int):
        return False
    wire, shape, data = node[2], node[3], node[4]
    if type(wire) is not str or wire not in DTYPES or type(shape) is not list:
        return False
    if not all(type(s) is int and s >= 0 for s in shape) or len(shape) > _MAX_DIMS:
        return False
    return data.nbytes == math.prod(shape) * DTYPES[wire].itemsize


def _packb(wire: Any) -> bytes:
    try:
        return msgpack.packb(wire, use_bin_type=True, use_single_float=False, strict_types=False)
    except (ValueError, TypeError, OverflowError) as exc:  # e.g. a lone surrogate in a str
        raise MalformedMessage(f"cannot encode: {exc}") from exc


def encode(value: Any) -> bytes:
    """Canonical bytes of a value: records, arrays, lists/tuples, scalars, str, bytes.

    Maps are refused: their order is not part of their value.
    """
    t = type(value)
    if (t is int and _INT_MIN <= value <= _UINT_MAX) or t is bytes:
        return _packb(value)  # a scalar in wire form already (digests of job inputs)
    return _packb(_to_wire_value(value))


def encode_ints(values: Sequence[int]) -> list[bytes]:
    """``[encode(v) for v in values]`` for plain ints (a hot path: one per job input in
    the simulator), with one packer for the whole list."""
    pack = msgpack.Packer(use_bin_type=True).pack
    out = []
    for v in values:
        if type(v) is not int or not _INT_MIN <= v <= _UINT_MAX:
            raise MalformedMessage(f"cannot encode {v!r} as a wire int")
        out.append(pack(v))
    return out


def encode_flat(items: list[Any]) -> bytes:
    """Canonical bytes of a list already in wire form (only bytes, str, bool, int, None).

    A hot path (one receipt per job): the caller guarantees the wire form, so no
    conversion pass runs. Gives exactly ``encode(items)`` for such lists.
    """
    return msgpack.packb(items, use_bin_type=True)


def encode_array(value: np.ndarray | NDArray) -> bytes:
    return encode(value)


def _is_array_node(node: Any) -> bool:
    return type(node) is list and len(node) == 5 and type(node[4]) is memoryview


def _bin_header(n: int) -> bytes:
    if n < 1 << 8:
        return struct.pack(">BB", 0xC4, n)
    if n < 1 << 16:
        return struct.pack(">BH", 0xC5, n)
    if n < 1 << 32:
        return struct.pack(">BI", 0xC6, n)
    raise MalformedMessage(f"{n} bytes of array data exceed msgpack's 4 GiB limit", field="data")


def _array_header(node: list[Any]) -> bytes:
    return b"\x95" + b"".join(_packb(x) for x in node[:4])  # 0x95: a fixarray of 5


def _canon_float(x: Any) -> Any:
    return _CANONICAL_NAN if type(x) is float and math.isnan(x) else x


def _parts(node: Any, canonical_nan: bool) -> Iterator[tuple[str | None, bytes | memoryview]]:
    if _is_array_node(node):
        data: memoryview = node[4]
        yield None, _array_header(node) + _bin_header(data.nbytes)
        yield node[2], data
    elif type(node) is list:
        if not any(type(x) is list for x in node):
            # a flat list packs in one call: fast for long lists of scalars
            yield None, _packb([_canon_float(x) for x in node] if canonical_nan else node)
            return
        packer = msgpack.Packer(use_bin_type=True, use_single_float=False)
        yield None, packer.pack_array_header(len(node))
        for item in node:
            yield from _parts(item, canonical_nan)
    else:
        yield None, _packb(_canon_float(node) if canonical_nan else node)


@functools.lru_cache(maxsize=1024)
def array_header(wire: str, shape: tuple[int, ...], nbytes: int) -> bytes:
    """The bytes :func:`encode` writes before an array's data (a hot path for digests)."""
    head = msgpack.packb([_ARRAY_TAG, _ARRAY_VERSION, wire, list(shape)], use_bin_type=True)
    # fixarray(4) -> fixarray(5), then the bin header of the data
    if nbytes < 256:
        bin_head = b"\xc4" + nbytes.to_bytes(1, "big")
    elif nbytes < 65536:
        bin_head = b"\xc5" + nbytes.to_bytes(2, "big")
    else:
        bin_head = b"\xc6" + nbytes.to_bytes(4, "big")
    return b"\x95" + head[1:] + bin_head


def encoded_parts(
    value: Any, *, canonical_nan: bool = False
) -> Iterator[tuple[str | None, bytes | memoryview]]:
    """The bytes of :func:`encode` as a stream of parts, without copying array data.

    Each part is ``(None, structure_bytes)`` or ``(wire_dtype, array_data)``; the array
    data is a zero-copy memoryview of the array when it is already little-endian and
    C-contiguous. Joining the parts gives ``encode(value)`` exactly. With
    ``canonical_nan`` every scalar float NaN is written as the one quiet NaN
    ``0x7ff8000000000000``; array data is passed through untouched (the caller, e.g.
    :mod:`posp.digest`, canonicalises it while streaming).
    """
    pending: list[bytes] = []
    for kind, part in _parts(_to_wire_value(value), canonical_nan):
        if kind is None:
            pending.append(part)  # type: ignore[arg-type]
            continue
        if pending:
            yield None, b"".join(pending)
            pending = []
        yield kind, part
    if pending:
        yield None, b"".join(pending)


# ---- decode ---------------------------------------------------------------------------


def _array_from_wire(items: Any, name: str, limits: Limits) -> np.ndarray | NDArray:
    # type checks come before == so that a nested numpy array never meets a comparison
    if type(items) is not list or len(items) != 5 or type(items[0]) is not str or (
        items[0] != _ARRAY_TAG
    ):
        raise MalformedMessage("expected an array record", field=name)
    if type(items[1]) is not int or items[1] != _ARRAY_VERSION:
        raise MalformedMessage(f"unknown array version {_short(items[1])}", field=f"{name}.version")
    wire = items[2]
    if type(wire) is not str or wire not in DTYPES:
        raise MalformedMessage(f"dtype {_short(wire)} not allowed", field=f"{name}.dtype")
    shape = items[3]
    if type(shape) is not list or len(shape) > _MAX_DIMS:
        raise MalformedMessage(
            f"expected a shape list of at most {_MAX_DIMS} dims", field=f"{name}.shape"
        )
    count = 1
    for i, s in enumerate(shape):
        if type(s) is not int or s < 0:
            raise MalformedMessage("expected a non-negative int", field=f"{name}.shape[{i}]")
        # zero dims are skipped so that [0, 2**63] cannot slip through a product of 0
        count *= s or 1
        if count > limits.max_array_elements:
            raise MalformedMessage(
                f"more than {limits.max_array_elements} elements", field=f"{name}.shape"
            )
    if 0 in shape:
        count = 0
    data = items[4]
    if type(data) is not bytes:
        raise MalformedMessage("expected bytes", field=f"{name}.data")
    dt = DTYPES[wire]
    if len(data) != count * dt.itemsize:
        raise MalformedMessage(
            f"expected {count * dt.itemsize} bytes for shape {shape}, got {len(data)}",
            field=f"{name}.data",
        )
    try:
        arr = np.frombuffer(data, dtype=dt).reshape(shape)
    except (ValueError, TypeError, OverflowError) as exc:
        raise MalformedMessage(f"bad shape: {exc}", field=f"{name}.shape") from exc
    if wire == "bool" and count and bool((arr.view(np.uint8) > 1).any()):
        # only 0 and 1 are booleans; another byte would decode to a value with two encodings
        raise MalformedMessage("bool bytes must be 0 or 1", field=f"{name}.data")
    if wire == "bf16":
        return NDArray("bf16", arr)
    return arr


def _walk(value: Any, depth: int, name: str, limits: Limits, records: bool) -> Any:
    if depth > limits.max_depth:
        raise MalformedMessage(f"nesting deeper than {limits.max_depth}", field=name)
    if type(value) is dict:  # max_map_len=0 still lets the empty map through
        raise MalformedMessage("maps are not part of the wire format", field=name)
    if type(value) is not list:
        return value
    if len(value) > limits.max_items:
        raise MalformedMessage(f"more than {limits.max_items} items", field=name)
    if len(value) == 5 and type(value[0]) is str and value[0] == _ARRAY_TAG:
        return _array_from_wire(value, name, limits)
    out = [_walk(v, depth + 1, f"{name}[{i}]", limits, records) for i, v in enumerate(value)]
    if records and out and type(out[0]) is str and out[0] in _REGISTRY:
        return _REGISTRY[out[0]].from_wire(out)
    return out


def decode(
    data: bytes | bytearray | memoryview,
    *,
    limits: Limits = DEFAULT_LIMITS,
    records: bool = True,
) -> Any:
    """Strictly decode canonical bytes.

    With ``records=True`` every list whose first item is a registered record tag is
    rebuilt as that record (and validated). Raises :class:`MalformedMessage` for anything
    malformed, oversized, non-canonical or of the wrong type, never another exception.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MalformedMessage(f"expected bytes, got {type(data).__name__}", field="message")
    size = data.nbytes if isinstance(data, memoryview) else len(data)
    if size > limits.max_message_bytes:
        raise MalformedMessage(
            f"{size} bytes exceeds the limit of {limits.max_message_bytes}", field="message"
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
    except Exception as exc:  # msgpack raises several, partly undocumented, types
        raise MalformedMessage(
            f"not canonical msgpack: {type(exc).__name__}: {exc}", field="message"
        ) from exc
    try:
        value = _walk(raw, 0, "message", limits, records)
        # bytes that decode but are not what encode() writes (a long integer form, a
        # float32) would give one value two encodings, and a signature over one of them
        # would not cover the other
        canonical = msgpack.packb(raw, use_bin_type=True, use_single_float=False)
    except MalformedMessage:
        raise
    except RecursionError as exc:
        raise MalformedMessage("nesting too deep", field="message") from exc
    except Exception as exc:  # a record's own validation failing in an unplanned way
        raise MalformedMessage(f"{type(exc).__name__}: {exc}", field="message") from exc
    if canonical != (data if isinstance(data, bytes) else bytes(data)):
        raise MalformedMessage("not the canonical encoding of its value", field="message")
    return value


def decode_array(data: bytes, *, limits: Limits = DEFAULT_LIMITS) -> np.ndarray | NDArray:
    value = decode(data, limits=limits, records=False)
    if not isinstance(value, np.ndarray | NDArray):
        raise MalformedMessage("expected an array", field="message")
    return value


def to_wire_list(items: Sequence[Any]) -> list[Any]:
    return [_to_wire_value(v) for v in items]
