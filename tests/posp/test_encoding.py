"""Canonical encoding: round trips, strict bounded decoding, fuzzing, known-answer bytes.

The known-answer vectors live in tests/data/encoding_vectors.json. A change to them is a
change to the wire format: bump a VERSION, do not just regenerate. To regenerate after a
deliberate change::

    .venv/bin/python tests/posp/test_encoding.py --write-vectors
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from posp.encoding import (
    DTYPES,
    Limits,
    NDArray,
    Record,
    bf16_array,
    decode,
    decode_array,
    encode,
    encoded_parts,
    field_array,
    field_bytes,
    field_int,
    field_list,
    field_str,
    field_uint,
    record,
)
from posp.errors import MalformedMessage

VECTORS = Path(__file__).resolve().parents[1] / "data" / "encoding_vectors.json"


@record
@dataclasses.dataclass(frozen=True, slots=True)
class Sample(Record):
    """A test record exercising each kind of field checker."""

    TAG = "test.sample"
    VERSION = 2
    WIRE_CHECKS = (field_str, field_uint, field_bytes, field_array, field_list(field_int))

    name: str
    count: int
    blob: bytes
    values: Any
    ints: tuple[int, ...]


def sample(**over: Any) -> Sample:
    base: dict[str, Any] = {
        "name": "job-7",
        "count": 3,
        "blob": b"\x00\xff",
        "values": np.array([1.5, -2.0, 0.25], dtype="<f4"),
        "ints": (1, -2, 3),
    }
    base.update(over)
    return Sample(**base)


def vector_values() -> dict[str, Any]:
    """The values behind tests/data/encoding_vectors.json (never change one in place)."""
    return {
        "int_small": 7,
        "int_neg_large": -(2**40),
        "uint_max": 2**64 - 1,
        "float": -1.5,
        "str": "posp",
        "bytes": b"\x00\x01\xfe",
        "list": [None, True, False, 0, "a", b"b", [1.0]],
        "f4_array": np.array([1.0, -0.0, np.inf], dtype="<f4"),
        "i2_big_endian_2x2": np.array([[1, -2], [300, -32768]], dtype=">i2"),
        "bool_0d": np.array(True),
        "bf16": bf16_array(np.array([0x3F80, 0x7FC0, 0x8000], dtype="<u2")),
        "record": sample(),
    }


# ---- strategies -----------------------------------------------------------------------

ARRAY_DTYPES = ["bool", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8"]


@st.composite
def arrays(draw: st.DrawFn, max_side: int = 5) -> np.ndarray | NDArray:
    wire = draw(st.sampled_from([*ARRAY_DTYPES, "bf16"]))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=max_side))
    if wire == "bf16":
        return bf16_array(draw(hnp.arrays(np.dtype("<u2"), shape)))
    order = draw(st.sampled_from("<>"))
    dt = DTYPES[wire] if wire in ("bool", "i1", "u1") else DTYPES[wire].newbyteorder(order)
    # floats come with NaN, inf and signed zeros: the encoding must carry their bits
    return draw(hnp.arrays(dt, shape))


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20).filter(lambda s: s != "nd"),
    st.binary(max_size=40),
)

values = st.recursive(
    st.one_of(scalars, arrays()),
    lambda children: st.lists(children, max_size=4),
    max_leaves=12,
)


def same_value(a: Any, b: Any) -> bool:
    """Equality that follows the wire: tuples are lists, arrays by dtype/shape/bits."""
    if isinstance(a, np.ndarray | NDArray) or isinstance(b, np.ndarray | NDArray):
        return encode(a) == encode(b)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return np.float64(a).tobytes() == np.float64(b).tobytes()
    return type(a) is type(b) and a == b


# ---- round trips ----------------------------------------------------------------------


def _starts_with_tag(value: Any) -> bool:
    from posp.encoding import _REGISTRY

    if isinstance(value, list | tuple):
        if value and isinstance(value[0], str) and value[0] in _REGISTRY:
            return True
        return any(_starts_with_tag(v) for v in value)
    return False


@settings(max_examples=400, deadline=None)
@given(value=values)
def test_round_trip_nested_values(value: Any) -> None:
    # a plain list whose first item is a registered record tag (e.g. ["profile"]) reads as
    # that record when decoded: the wire format reserves those lists (signed headers and
    # dispute evidence embed records' wire forms on purpose), so they are not plain values
    assume(not _starts_with_tag(value))
    data = encode(value)
    back = decode(data)
    assert same_value(back, value)
    assert encode(back) == data  # decoding loses nothing the bytes say
    assert encode(value) == data  # the same value always gives the same bytes
    assert b"".join(bytes(p) for _, p in encoded_parts(value)) == data


@settings(max_examples=300, deadline=None)
@given(arr=arrays())
def test_round_trip_arrays(arr: np.ndarray | NDArray) -> None:
    data = encode(arr)
    back = decode_array(data)
    if isinstance(arr, NDArray):
        assert isinstance(back, NDArray) and back == arr
    else:
        assert isinstance(back, np.ndarray)
        assert back.shape == arr.shape
        assert back.dtype == arr.dtype.newbyteorder("<")
        assert back.tobytes() == arr.astype(back.dtype).tobytes()
        assert not back.flags.writeable


@settings(max_examples=200, deadline=None)
@given(
    name=st.text(max_size=30),
    count=st.integers(min_value=0, max_value=2**64 - 1),
    blob=st.binary(max_size=64),
    values=arrays(),
    ints=st.lists(st.integers(min_value=-(2**63), max_value=2**63 - 1), max_size=8),
)
def test_round_trip_records(
    name: str, count: int, blob: bytes, values: Any, ints: list[int]
) -> None:
    rec = Sample(name=name, count=count, blob=blob, values=values, ints=tuple(ints))
    data = rec.encode()
    for back in (decode(data), Sample.decode(data)):
        assert isinstance(back, Sample)
        assert (back.name, back.count, back.blob, back.ints) == (name, count, blob, tuple(ints))
        assert encode(back.values) == encode(values)
        assert back.encode() == data
    # a record nested in a list comes back as a record, and its wire list decodes as it
    assert isinstance(decode(encode([rec, rec]))[1], Sample)
    assert encode(rec.to_wire()) == data


def test_big_endian_and_strided_arrays_encode_as_little_endian() -> None:
    le = np.arange(12, dtype="<i4").reshape(3, 4)
    be = le.astype(">i4")
    assert encode(be) == encode(le)
    assert encode(np.asfortranarray(le)) == encode(le)
    assert encode(le.T) == encode(np.ascontiguousarray(le.T))
    wide = np.arange(24, dtype=">f8")[::2]
    assert encode(wide) == encode(wide.astype("<f8"))
    payload = encode(be)[-48:]
    assert payload == le.tobytes()
    assert decode(encode(be)).dtype == np.dtype("<i4")


def test_zero_dim_and_empty_arrays_keep_their_shape() -> None:
    for arr in (np.array(3.5, dtype="f4"), np.zeros((0, 3)), np.zeros((2, 0, 4), "?")):
        back = decode(encode(arr))
        assert back.shape == arr.shape and back.dtype == arr.dtype


def test_bf16_route_is_lossless() -> None:
    bits = np.array([0x3F80, 0xFFC1, 0x7F80, 0x8000], dtype="<u2")  # 1.0, a NaN, inf, -0.0
    for given_bits in (bits, bits.view("<i2"), bits.astype(">u2"), bits.view("<i2").astype(">i2")):
        nd = bf16_array(given_bits)
        assert nd.dtype == "bf16" and nd.array.dtype == np.dtype("<u2")
        assert nd.array.tobytes() == bits.tobytes()
        back = decode(encode(nd))
        assert isinstance(back, NDArray) and back == nd
    with pytest.raises(MalformedMessage, match="dtype"):
        bf16_array(np.zeros(2, dtype="f4"))
    with pytest.raises(MalformedMessage, match="dtype"):
        NDArray("f4", np.zeros(2, dtype="i4"))  # a tag never converts values
    with pytest.raises(MalformedMessage, match="dtype"):
        NDArray("c8", np.zeros(2, dtype="c8"))


@pytest.mark.parametrize(
    "arr",
    [
        np.zeros(2, dtype="c8"),
        np.zeros(2, dtype=object),
        np.zeros(2, dtype="U3"),
        np.zeros(2, dtype="M8[s]"),
        np.zeros(2, dtype=[("a", "i4")]),
        np.zeros(2, dtype=np.longdouble),
    ],
)
def test_dtype_not_allowed_on_encode(arr: np.ndarray) -> None:
    with pytest.raises(MalformedMessage, match="dtype"):
        encode(arr)


@pytest.mark.parametrize(
    "value",
    [{"a": 1}, {1, 2}, object(), 2**64, -(2**63) - 1, complex(1, 2), ["x", {"k": 1}], "\ud800"],
)
def test_unencodable_values(value: Any) -> None:
    with pytest.raises(MalformedMessage):
        encode(value)


def test_plain_list_may_not_pose_as_an_array() -> None:
    with pytest.raises(MalformedMessage, match="array tag"):
        encode(["nd", 1, "f4", [1], b"\x00\x00\x00\x00"])
    assert decode(encode(["nd", 1, 2])) == ["nd", 1, 2]


def test_record_field_errors_name_the_field_on_encode() -> None:
    with pytest.raises(MalformedMessage, match=r"test\.sample\.values"):
        sample(values={"not": "encodable"}).encode()


# ---- strict decoding ------------------------------------------------------------------


def raises_on(data: bytes, field: str, **limits: Any) -> MalformedMessage:
    kwargs = {"limits": Limits(**limits)} if limits else {}
    with pytest.raises(MalformedMessage) as info:
        decode(data, **kwargs)
    assert info.value.field is not None and field in info.value.field, info.value
    return info.value


def wire(value: Any) -> bytes:
    """Bytes for a hand-built wire tree, bypassing encode's own checks."""
    import msgpack

    return msgpack.packb(value, use_bin_type=True)


def sample_tree(**over: Any) -> list[Any]:
    """Sample's wire list with some slots replaced (tag, version or a field name)."""
    slots = ["tag", "version", "name", "count", "blob", "values", "ints"]
    tree = sample().to_wire()
    for key, value in over.items():
        tree[slots.index(key)] = value
    return tree


def test_record_from_wire_names_what_is_wrong() -> None:
    assert Sample.decode(wire(sample_tree())).encode() == sample().encode()
    cases = [
        (sample_tree(tag="test.other"), r"test\.sample\.tag: expected tag 'test\.sample'"),
        (sample_tree(tag=5), r"test\.sample\.tag"),
        (sample_tree(version=1), r"test\.sample\.version: unknown version 1"),
        (sample_tree(version=True), r"test\.sample\.version"),
        (sample_tree()[:-1], r"test\.sample: expected 7 items, got 6"),
        ([*sample_tree(), 0], r"test\.sample: expected 7 items, got 8"),
        (sample_tree(count="1"), r"test\.sample\.count: expected int, got str"),
        (sample_tree(count=-1), r"test\.sample\.count: expected a non-negative int"),
        (sample_tree(count=1.0), r"test\.sample\.count: expected int, got float"),
        (sample_tree(name=b"n"), r"test\.sample\.name: expected str, got bytes"),
        (sample_tree(blob="x"), r"test\.sample\.blob: expected bytes, got str"),
        (sample_tree(values=[1, 2]), r"test\.sample\.values"),
        (sample_tree(ints=[1, 2.5]), r"test\.sample\.ints\[1\]: expected int"),
        (sample_tree(ints=5), r"test\.sample\.ints: expected list"),
        # an array where the tag or version belongs must not meet an ambiguous ==
        (sample_tree(tag=sample_tree()[5]), r"test\.sample\.tag"),
        (sample_tree(version=sample_tree()[5]), r"test\.sample\.version"),
    ]
    for tree, pattern in cases:
        with pytest.raises(MalformedMessage, match=pattern):
            Sample.decode(wire(tree))
        if tree[0] == Sample.TAG:  # generic decode finds the record by its tag
            with pytest.raises(MalformedMessage, match=pattern):
                decode(wire(tree))
    with pytest.raises(MalformedMessage, match="record array"):
        Sample.decode(encode(5))


def test_depth_limit() -> None:
    nested: Any = 1
    for _ in range(40):
        nested = [nested]
    raises_on(encode(nested), "message", max_depth=32)
    assert decode(encode(nested), limits=Limits(max_depth=40)) is not None
    deep = b"\x91" * 5000 + b"\x01"  # deeper than msgpack's own stack
    raises_on(deep, "message")
    deep_ok: Any = 0
    for _ in range(8):
        deep_ok = [deep_ok]
    raises_on(encode(deep_ok), "message[0][0][0][0]", max_depth=3)


def test_element_and_size_limits() -> None:
    arr = np.zeros(100, dtype="f4")
    raises_on(encode(arr), "message.shape", max_array_elements=99)
    assert decode(encode(arr), limits=Limits(max_array_elements=100)).shape == (100,)
    raises_on(encode(np.zeros((10, 10))), "message.shape", max_array_elements=50)
    raises_on(encode(list(range(11))), "message", max_items=10)
    raises_on(encode("x" * 11), "message", max_str_len=10)
    raises_on(encode(b"x" * 11), "message", max_bin_len=10)
    raises_on(encode(b"x" * 20), "message", max_message_bytes=10)
    # a shape whose product is absurd but which claims no data
    raises_on(wire(["nd", 1, "f4", [0, 2**63], b""]), "message.shape")
    raises_on(wire(["nd", 1, "f4", [2**32, 2**32], b""]), "message.shape")
    raises_on(wire(["nd", 1, "f4", [1] * 33, b"\x00" * 4]), "message.shape")


@pytest.mark.parametrize(
    ("tree", "field"),
    [
        (["nd", 1, "c8", [1], b"\x00" * 8], "message.dtype"),
        (["nd", 1, "O", [1], b"\x00" * 8], "message.dtype"),
        (["nd", 1, ">f4", [1], b"\x00" * 4], "message.dtype"),
        (["nd", 1, 4, [1], b"\x00" * 4], "message.dtype"),
        (["nd", 2, "f4", [1], b"\x00" * 4], "message.version"),
        (["nd", True, "f4", [1], b"\x00" * 4], "message.version"),
        (["nd", 1, "f4", [1], b"\x00" * 3], "message.data"),
        (["nd", 1, "f4", [1], "abcd"], "message.data"),
        (["nd", 1, "f4", [-1], b""], "message.shape[0]"),
        (["nd", 1, "f4", [1.0], b"\x00" * 4], "message.shape[0]"),
        (["nd", 1, "f4", 1, b"\x00" * 4], "message.shape"),
        (["nd", 1, "bool", [2], b"\x01\x02"], "message.data"),
        ([1, ["nd", 1, "u8", [1], b"\x00"]], "message[1].data"),
    ],
)
def test_bad_arrays_name_the_field(tree: list[Any], field: str) -> None:
    raises_on(wire(tree), field)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",  # never used
        b"\x81\xa1a\x01",  # a map
        b"\x80",  # the empty map
        b"\x91\x80",  # the empty map, nested
        b"\xd4\x01\x00",  # an extension type
        b"\xd6\xff\x00\x00\x00\x00",  # a timestamp
        b"\x01\x02",  # trailing bytes
        b"\xcc\x05",  # 5 in a long form: not canonical
        b"\xd1\x00\x01",  # int16 form of 1
        b"\xca\x3f\x80\x00\x00",  # float32 1.0: floats are float64 on the wire
        b"\xd9\x01a",  # str8 for a 1-char str
        b"\xc5\x00\x01x",  # bin16 for 1 byte
        b"\xdc\x00\x01\x01",  # array16 of one item
        b"\xa2\xff\xfe",  # invalid UTF-8
        b"\x92\x01",  # truncated
        b"\xdd\xff\xff\xff\xff",  # an array claiming 4G items
        b"\xc6\xff\xff\xff\xff",  # a bin claiming 4 GiB
    ],
)
def test_malformed_and_non_canonical_bytes(data: bytes) -> None:
    raises_on(data, "message")


def test_decode_refuses_non_bytes() -> None:
    for value in ("text", 5, None, [1]):
        with pytest.raises(MalformedMessage, match="message"):
            decode(value)  # type: ignore[arg-type]
    assert decode(bytearray(encode([1, 2]))) == [1, 2]
    assert decode(memoryview(encode([1, 2]))) == [1, 2]


def test_decode_array_refuses_other_values() -> None:
    with pytest.raises(MalformedMessage, match="expected an array"):
        decode_array(encode([1, 2]))


def test_scalar_nan_payload_survives() -> None:
    odd = np.frombuffer(bytes.fromhex("0100000000f8ffff"), "<f8")[0].item()
    assert math.isnan(odd)
    back = decode(encode(odd))
    assert np.float64(back).tobytes() == np.float64(odd).tobytes()


# ---- fuzzing: only MalformedMessage, or a value whose encoding is those very bytes -----


def check_decode(data: bytes) -> None:
    try:
        value = decode(data, limits=Limits(max_message_bytes=1 << 16, max_items=1000))
    except MalformedMessage as exc:
        assert exc.field is not None
        return
    # whatever decodes is canonical: re-encoding gives the bytes back
    assert encode(value) == data


FUZZ = settings(
    max_examples=3000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@FUZZ
@given(data=st.binary(max_size=200))
def test_fuzz_random_bytes(data: bytes) -> None:
    check_decode(data)


def corpus() -> list[bytes]:
    """Valid messages to mutate: fixed, so that the fuzzer's time goes into mutations."""
    rng = np.random.default_rng(1)
    out = [encode(v) for v in vector_values().values()]
    for wire in ARRAY_DTYPES:
        raw = rng.integers(0, 256, size=6 * DTYPES[wire].itemsize, dtype=np.uint8)
        arr = np.frombuffer(raw.tobytes(), DTYPES[wire]).reshape(2, 3)
        if wire == "bool":
            arr = arr.astype(bool)
        out.append(encode(arr))
        out.append(sample(values=arr, ints=(1, 2**40, -5)).encode())
    out.append(encode([sample(), [1, [2.5, [b"x", np.zeros(0)]]], "text", None]))
    out.append(encode(np.arange(300, dtype="<u2")))  # bin16 length
    out.append(encode("s" * 40))  # str8
    return out


CORPUS = corpus()


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    buf = bytearray(draw(st.sampled_from(CORPUS)))
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete"]))
        pos = draw(st.integers(0, max(len(buf) - 1, 0)))
        if op == "flip" and buf:
            buf[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and buf:
            buf[pos] = draw(st.integers(0, 255))
        elif op == "truncate":
            del buf[pos:]
        elif op == "insert":
            buf[pos:pos] = draw(st.binary(min_size=1, max_size=4))
        elif op == "delete" and buf:
            del buf[pos : pos + draw(st.integers(1, 4))]
    return bytes(buf)


@FUZZ
@given(data=mutated())
def test_fuzz_mutated_messages(data: bytes) -> None:
    check_decode(data)


@FUZZ
@given(data=mutated())
def test_fuzz_mutated_records(data: bytes) -> None:
    try:
        rec = Sample.decode(data)
    except MalformedMessage:
        return
    assert rec.encode() == data


@settings(max_examples=1500, deadline=None)
@given(offset=st.integers(0, 120), byte=st.integers(0, 255))
def test_every_single_byte_change_of_a_record(offset: int, byte: int) -> None:
    data = bytearray(sample().encode())
    offset %= len(data)
    data[offset] = byte
    check_decode(bytes(data))


# ---- known-answer vectors -------------------------------------------------------------


def test_known_answer_vectors() -> None:
    expected = json.loads(VECTORS.read_text())
    values = vector_values()
    assert set(expected) == set(values)
    for name, value in values.items():
        assert encode(value).hex() == expected[name], f"wire bytes of {name!r} changed"
        assert encode(decode(bytes.fromhex(expected[name]))).hex() == expected[name]


def test_known_answer_spot_check() -> None:
    # spelled out by hand from the msgpack spec, independent of the JSON file
    assert encode(np.array([1.0], dtype="<f4")).hex() == (
        "95" "a26e64" "01" "a26634" "9101" "c404" "0000803f"
    )
    assert encode(7) == b"\x07"
    assert encode(-1.5) == b"\xcb\xbf\xf8\x00\x00\x00\x00\x00\x00"


if __name__ == "__main__" and "--write-vectors" in sys.argv:
    VECTORS.write_text(
        json.dumps({k: encode(v).hex() for k, v in vector_values().items()}, indent=2) + "\n"
    )
    print(f"wrote {VECTORS}")
