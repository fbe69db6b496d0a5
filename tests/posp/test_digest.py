"""Digests: domain separation, NaN canonicalisation, streamed == encoded bytes."""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import posp.digest as digest_mod
from posp.digest import DIGEST_SIZE, digest, digest_array, digest_value
from posp.encoding import (
    DTYPES,
    NDArray,
    Record,
    bf16_array,
    encode,
    field_array,
    field_list,
    field_str,
    record,
)
from posp.errors import ConfigError

# wire dtype -> (bits dtype, magnitude mask, +inf bits, canonical NaN bits), written out
# independently of posp.digest so that the test checks the module, not itself
NAN_BITS = {
    "f2": ("<u2", 0x7FFF, 0x7C00, 0x7E00),
    "bf16": ("<u2", 0x7FFF, 0x7F80, 0x7FC0),
    "f4": ("<u4", 0x7FFFFFFF, 0x7F800000, 0x7FC00000),
    "f8": ("<u8", 0x7FFFFFFFFFFFFFFF, 0x7FF0000000000000, 0x7FF8000000000000),
}


def canonical_copy(arr: np.ndarray | NDArray) -> np.ndarray | NDArray:
    """The array with every NaN replaced by its format's canonical quiet NaN."""
    if isinstance(arr, NDArray):
        wire, a = arr.dtype, arr.array
    else:
        a = arr.astype(arr.dtype.newbyteorder("<"))
        wire = {"e": "f2", "f": "f4", "d": "f8"}.get(a.dtype.char, "")
    if wire not in NAN_BITS:
        return arr
    udt, mag, inf, canon = NAN_BITS[wire]
    bits = a.copy(order="C").view(udt)  # not ascontiguousarray: it makes 0-d arrays 1-d
    bits[(bits & np.dtype(udt).type(mag)) > np.dtype(udt).type(inf)] = canon
    if wire == "bf16":
        return NDArray("bf16", bits)
    return bits.view(a.dtype)


def reference(domain: str, value: Any) -> bytes:
    return hashlib.sha256(b"posp/" + domain.encode() + b"\x00" + encode(value)).digest()


@st.composite
def float_arrays(draw: st.DrawFn, max_side: int = 40) -> np.ndarray | NDArray:
    wire = draw(st.sampled_from(["f2", "f4", "f8", "bf16", "i4", "u1", "bool"]))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=max_side))
    udt = NAN_BITS[wire][0] if wire in NAN_BITS else DTYPES[wire]
    # raw bits cover every NaN payload and sign, infinities and signed zeros
    bits = draw(hnp.arrays(np.dtype(udt), shape))
    if wire == "bf16":
        return bf16_array(bits)
    if wire == "bool":
        return bits.astype(bool)
    arr = bits.view(DTYPES[wire])
    return arr.astype(arr.dtype.newbyteorder(">")) if draw(st.booleans()) else arr


def test_digest_is_domain_separated_sha256() -> None:
    assert DIGEST_SIZE == 32
    expected = hashlib.sha256(b"posp/output\x00abc").digest()
    assert digest("output", b"abc") == expected
    assert digest("output", memoryview(b"abc")) == expected
    assert digest("outpu", b"t\x00abc") != expected
    assert digest("input", b"abc") != expected
    assert len(digest("x", b"")) == DIGEST_SIZE
    # known answer, so that a change to the construction fails loudly
    assert digest("output", b"abc").hex() == (
        "5ca4f2a3ebd024f37ef7f2ebd6fce095b204fff63a11cb314a87a797486d3740"
    )


def test_domain_must_not_contain_nul() -> None:
    with pytest.raises(ConfigError, match="domain"):
        digest("out\x00put", b"")
    with pytest.raises(ConfigError, match="domain"):
        digest_value(b"output", 1)  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(arr=float_arrays())
def test_digest_value_equals_hash_of_canonical_encoding(arr: np.ndarray | NDArray) -> None:
    assert digest_value("output", arr) == reference("output", canonical_copy(arr))
    assert digest_array(arr) == digest_value("output", arr)


def test_every_nan_hashes_the_same() -> None:
    f4 = np.array([1.0, np.nan, 2.0], dtype="<f4")
    payloads = [0x7FC00000, 0xFFC00000, 0x7F800001, 0xFFFFFFFF, 0x7FC12345]
    digests = set()
    for p in payloads:
        bits = f4.view("<u4").copy()
        bits[1] = p
        digests.add(digest_array(bits.view("<f4")))
    assert len(digests) == 1
    f8 = np.array([np.nan], dtype="<f8")
    assert digest_array(f8) == digest_array(np.array([0xFFF8000000000001], "<u8").view("<f8"))
    f2 = np.array([0x7E00], "<u2").view("<f2")
    assert digest_array(f2) == digest_array(np.array([0xFD01], "<u2").view("<f2"))
    bf = bf16_array(np.array([0x7FC0], "<u2"))
    assert digest_array(bf) == digest_array(bf16_array(np.array([0xFF81], "<u2")))
    # a NaN is still not an infinity
    assert digest_array(bf) != digest_array(bf16_array(np.array([0x7F80], "<u2")))
    # the canonical digest is the digest of the canonical quiet NaN itself
    assert digest_array(np.array([np.nan], "<f4")) == reference(
        "output", np.array([0x7FC00000], "<u4").view("<f4")
    )


def test_scalar_nans_are_canonical_too() -> None:
    odd = np.array([0xFFF0000000000001], "<u8").view("<f8")[0].item()
    assert digest_value("v", [odd, 1.0]) == digest_value("v", [float("nan"), 1.0])
    assert digest_value("v", odd) == reference("v", float("nan"))


def test_signed_zero_stays_distinct() -> None:
    pos = np.zeros(4, dtype="f4")
    neg = -pos
    assert digest_array(pos) != digest_array(neg)
    assert digest_value("v", 0.0) != digest_value("v", -0.0)


def test_integer_arrays_are_not_touched() -> None:
    bits = np.array([0x7FC00001, 0xFFFFFFFF], dtype="<u4")
    assert digest_array(bits) == reference("output", bits)


def test_layout_does_not_change_the_digest() -> None:
    rng = np.random.default_rng(3)
    le = rng.standard_normal((64, 48)).astype("<f4")
    assert digest_array(le.astype(">f4")) == digest_array(le)
    assert digest_array(np.asfortranarray(le)) == digest_array(le)
    assert digest_array(le[:, ::2]) == digest_array(np.ascontiguousarray(le[:, ::2]))


@pytest.mark.parametrize("wire", ["f2", "f4", "f8", "bf16"])
def test_large_arrays_stream_in_chunks(wire: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # small chunks so that many chunks, a partial last chunk and the thread hand-off are
    # exercised without a big allocation
    monkeypatch.setattr(digest_mod, "_CHUNK", 4096)
    rng = np.random.default_rng(7)
    udt = NAN_BITS[wire][0]
    n = 50_000 + 3  # not a multiple of the chunk
    bits = rng.integers(0, 2 ** (8 * np.dtype(udt).itemsize) - 1, size=n, dtype=udt)
    _, mag, inf, _ = NAN_BITS[wire]
    # clear NaNs from most chunks so that both the view path and the copy path run
    bits = bits & np.dtype(udt).type(mag >> 2)
    bits[[5, 20_000, n - 1]] = np.dtype(udt).type(inf + 1)
    value = bf16_array(bits) if wire == "bf16" else bits.view(DTYPES[wire])
    assert digest_array(value) == reference("output", canonical_copy(value))
    # the caller's array is never modified by canonicalisation
    assert (bits[[5, 20_000, n - 1]] == inf + 1).all()


def test_large_array_default_chunking() -> None:
    rng = np.random.default_rng(11)
    arr = rng.standard_normal(3 * 1024 * 1024 + 5).astype("<f4")  # 12 MiB: several chunks
    arr[[0, 1_000_000, arr.size - 1]] = np.array([0xFFC00001], "<u4").view("<f4")[0]
    assert digest_array(arr) == reference("output", canonical_copy(arr))


@record
@dataclasses.dataclass(frozen=True, slots=True)
class Outputs(Record):
    TAG = "test.outputs"
    VERSION = 1
    WIRE_CHECKS = (field_str, field_list(field_array))

    job: str
    arrays: tuple[Any, ...]


@settings(max_examples=100, deadline=None)
@given(arrays=st.lists(float_arrays(max_side=6), max_size=4), job=st.text(max_size=10))
def test_digest_of_a_record_with_arrays(arrays: list[Any], job: str) -> None:
    rec = Outputs(job=job, arrays=tuple(arrays))
    canonical = Outputs(job=job, arrays=tuple(canonical_copy(a) for a in arrays))
    assert digest_value("receipt", rec) == reference("receipt", canonical)
    assert digest_value("receipt", [rec, 1.5, None]) == reference("receipt", [canonical, 1.5, None])


def test_known_answer_digests() -> None:
    assert digest("output", b"").hex() == hashlib.sha256(b"posp/output\x00").hexdigest()
    arr = np.array([1.0, np.nan, -0.0], dtype="<f4")
    assert digest_array(arr).hex() == (
        "dc94ad67bbf9e30db35b563c8b48057d502d7168df388f8b14a0d140950b9e73"
    )


@settings(deadline=None)  # a shared machine's stall is not a failure
@given(st.one_of(st.integers(min_value=-(2**63), max_value=2**64 - 1), st.binary(max_size=300),
                 st.text(max_size=50)))
def test_scalar_fast_path_equals_the_canonical_encoding(value):
    from posp.encoding import encode

    assert digest_value("t", value) == digest("t", encode(value))
