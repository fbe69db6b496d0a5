"""Digests: domain-separated SHA-256 over bytes and over canonically encoded values.

``digest(domain, data)`` is ``sha256(b"posp/" + domain + b"\\x00" + data)``: the domain
(``"output"``, ``"receipt"``, ...) makes a digest computed for one purpose useless for
another, and the NUL (forbidden inside a domain) ends the domain unambiguously.

``digest_value(domain, value)`` digests the canonical encoding of ``value``
(:func:`posp.encoding.encode`) with NaNs canonicalised, so that two honest nodes never
disagree over a NaN's payload or sign bits: every NaN of a float array (``f2``, ``f4``,
``f8`` and ``bf16`` bits) hashes as the one positive quiet NaN of its format (``0x7e00``,
``0x7fc00000``, ``0x7ff8000000000000``, bf16 ``0x7fc0``), and so does every scalar float
NaN (as float64). The digest equals ``digest(domain, encode(v'))`` where ``v'`` is ``value``
with its NaNs so replaced; it is computed without that copy: the structure bytes and then
each array's buffer are streamed into the hash in chunks, a chunk is copied only when it
holds a NaN, and the NaN scan of one chunk overlaps the hashing of the one before
(hashlib releases the GIL), so a large array digests at nearly raw SHA-256 speed.

``-0.0`` and ``+0.0`` keep distinct digests. A digest is a claim of bit-exact agreement;
a digest mismatch only starts a comparison, and the numeric comparators
(:mod:`posp.compare`) treat ``-0.0 == 0.0``. Folding signed zeros here would buy nothing
and would make the digest lie about the bytes.
"""

from __future__ import annotations

import hashlib
import math
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from .encoding import NDArray, array_bytes, array_header, encode, encode_ints, encoded_parts
from .errors import ConfigError

__all__ = ["DIGEST_SIZE", "digest", "digest_array", "digest_many", "digest_value"]

DIGEST_SIZE = 32

#: bytes per hash update; large enough that hashlib drops the GIL and the per-chunk
#: Python overhead vanishes, small enough that a NaN chunk's copy stays cheap
_CHUNK = 2 * 1024 * 1024
_IN_FLIGHT = 2

# wire dtype -> (unsigned view dtype, magnitude mask, +inf bits, canonical quiet NaN bits).
# A value is NaN exactly when its bits without the sign exceed those of +inf.
_NAN_FORMATS: dict[str, tuple[np.dtype[Any], int, int, int]] = {
    "f2": (np.dtype("<u2"), 0x7FFF, 0x7C00, 0x7E00),
    "bf16": (np.dtype("<u2"), 0x7FFF, 0x7F80, 0x7FC0),
    "f4": (np.dtype("<u4"), 0x7FFF_FFFF, 0x7F80_0000, 0x7FC0_0000),
    "f8": (np.dtype("<u8"), 0x7FFF_FFFF_FFFF_FFFF, 0x7FF0_0000_0000_0000, 0x7FF8_0000_0000_0000),
}
# f4 and f8 have fast NaN-propagating max reductions: max() is NaN iff any item is NaN
_FLOAT_VIEW: dict[str, np.dtype[Any]] = {"f4": np.dtype("<f4"), "f8": np.dtype("<f8")}


_PREFIXED: dict[str, hashlib._Hash] = {}


def _hasher(domain: str) -> hashlib._Hash:
    h = _PREFIXED.get(domain)
    if h is None:
        if type(domain) is not str or "\x00" in domain:
            raise ConfigError(
                f"a digest domain is a str without NUL, got {domain!r}", key="domain"
            )
        h = hashlib.sha256(b"posp/" + domain.encode() + b"\x00")
        if len(_PREFIXED) < 256:
            _PREFIXED[domain] = h
    return h.copy()


# native little-endian float dtypes: a job's input or output, hashed in one pass
_FAST_FLOAT: dict[np.dtype[Any], str] = {np.dtype("<f4"): "f4", np.dtype("<f8"): "f8"}


def digest(domain: str, data: bytes | bytearray | memoryview) -> bytes:
    """``sha256(b"posp/" + domain + b"\\x00" + data)``, 32 bytes."""
    h = _hasher(domain)
    h.update(data)
    return h.digest()


def _has_nan(wire: str, chunk: memoryview) -> bool:
    fview = _FLOAT_VIEW.get(wire)
    if fview is not None:
        values = np.frombuffer(chunk, dtype=fview)
        return bool(values.size) and bool(np.isnan(values.max()))
    udt, mag, inf, _ = _NAN_FORMATS[wire]
    bits = np.frombuffer(chunk, dtype=udt)
    return bool(bits.size) and int((bits & mag).max()) > inf


def _canonical_chunk(wire: str, chunk: memoryview) -> bytes | memoryview:
    """The chunk itself when it holds no NaN, else a copy with every NaN canonical."""
    if not _has_nan(wire, chunk):
        return chunk
    udt, mag, inf, canonical = _NAN_FORMATS[wire]
    bits = np.frombuffer(chunk, dtype=udt).copy()
    bits[(bits & udt.type(mag)) > udt.type(inf)] = canonical
    return bits.tobytes()


def _update_array(h: Any, wire: str, data: memoryview) -> None:
    if wire not in _NAN_FORMATS:
        h.update(data)  # integers and bools have no NaN
        return
    n = data.nbytes
    if n <= _CHUNK:
        h.update(_canonical_chunk(wire, data))
        return
    # one worker hashes while this thread scans ahead; updates keep their order because
    # the single worker runs them in submission order. Two queued chunks keep the worker
    # busy across thread hand-offs and bound the NaN copies alive at once.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="posp-digest") as pool:
        queued: deque[Future[None]] = deque()
        for start in range(0, n, _CHUNK):
            piece = _canonical_chunk(wire, data[start : start + _CHUNK])
            if len(queued) >= _IN_FLIGHT:
                queued.popleft().result()
            queued.append(pool.submit(h.update, piece))
        while queued:
            queued.popleft().result()


def digest_value(domain: str, value: Any) -> bytes:
    """Digest of the canonical encoding of ``value`` with every NaN canonicalised.

    ``value`` is anything :func:`posp.encoding.encode` accepts: a record, an array, an
    :class:`~posp.encoding.NDArray`, a list of those, a scalar.
    """
    if (
        type(value) is np.ndarray
        and value.dtype in _FAST_FLOAT
        and value.flags.c_contiguous
        and value.nbytes <= _CHUNK
    ):
        # the hot path (one per job): a float32/64 array without NaN, no copy at all
        name = _FAST_FLOAT[value.dtype]
        n = value.size
        # NaN check: a Python scan beats numpy's call overhead on the small outputs of a job
        if n and not (any(x != x for x in value.flat) if n <= 64
                      else math.isnan(np.maximum.reduce(value, axis=None))):
            h = _hasher(domain)
            h.update(array_header(name, value.shape, value.nbytes))
            h.update(memoryview(value))  # type: ignore[arg-type]  # hashed in place
            return h.digest()
    if type(value) in (int, bytes, str):  # no float inside: plain canonical bytes
        h = _hasher(domain)
        h.update(encode(value))
        return h.digest()
    if type(value) is np.ndarray and value.nbytes <= _CHUNK:
        # the common case (a job's input or output): one header, one update
        dtype_name, shape, data = array_bytes(value)
        h = _hasher(domain)
        h.update(array_header(dtype_name, shape, data.nbytes))
        _update_array(h, dtype_name, data)
        return h.digest()
    h = _hasher(domain)
    for wire, part in encoded_parts(value, canonical_nan=True):
        if wire is None:
            h.update(part)
        else:
            _update_array(h, wire, part)  # type: ignore[arg-type]
    return h.digest()


def digest_many(domain: str, values: Sequence[Any]) -> list[bytes]:
    """``[digest_value(domain, v) for v in values]``, with one pass for a whole batch.

    The batch case (a node's inputs or outputs): float arrays of one dtype and shape are
    checked for NaN with one vectorised scan, and each is then hashed in place from a
    hash state that already holds the shared domain and array header; plain ints skip
    the generic encoder. Anything else falls back to :func:`digest_value` per value, so
    the result is always exactly that.
    """
    n = len(values)
    if not n:
        return []
    first = values[0]
    if type(first) is np.ndarray and first.dtype in _FAST_FLOAT and n > 1:
        dtype, shape = first.dtype, first.shape
        if (
            first.nbytes <= _CHUNK
            and first.size
            and all(
                type(v) is np.ndarray and v.dtype == dtype and v.shape == shape
                and v.flags.c_contiguous for v in values
            )
        ):
            # one copy of the batch's bytes, one NaN scan, then each value's slice hashed
            buf = b"".join([v.data for v in values])
            if not math.isnan(np.maximum.reduce(np.frombuffer(buf, dtype=dtype), axis=None)):
                base = _hasher(domain)
                base.update(array_header(_FAST_FLOAT[dtype], shape, first.nbytes))
                step = first.nbytes
                mv = memoryview(buf)
                out = []
                for i in range(0, len(buf), step):
                    h = base.copy()
                    h.update(mv[i : i + step])
                    out.append(h.digest())
                return out
    elif type(first) is int and all(type(v) is int for v in values):
        base = _hasher(domain)
        out = []
        for enc in encode_ints(values):
            h = base.copy()
            h.update(enc)
            out.append(h.digest())
        return out
    return [digest_value(domain, v) for v in values]


def digest_array(arr: np.ndarray | NDArray, domain: str = "output") -> bytes:
    """``digest_value(domain, arr)``: the digest a receipt carries for a model output."""
    return digest_value(domain, arr)
