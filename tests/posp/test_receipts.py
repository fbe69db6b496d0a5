"""Receipts, batch commitments, inclusion proofs, profiles, known-answer vectors."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from posp.encoding import decode, encode
from posp.errors import BadSignature, ConfigError, MalformedMessage, ProfileMismatch
from posp.identity import NodeKey, PublicKey
from posp.receipts import (
    BatchCommitment,
    ExecutionProfile,
    Receipt,
    SignedReceipt,
    capture_profile,
    job_id_from_seed,
    new_job_id,
    prove_equivocation,
    sign_batch,
    verify_batch,
    verify_receipt,
)

DATA = Path(__file__).resolve().parents[1] / "data"
KEY = NodeKey.from_seed(bytes(range(32)))
OTHER = NodeKey.from_seed(bytes(32))
PROFILE = ExecutionProfile(
    libraries=(("numpy", "2.0.0"), ("torch", "2.4.0")),
    device="cpu",
    dtype="float32",
    threads=2,
    batched=True,
    deterministic=False,
    platform="Linux-x86_64-py3.11",
)
PD = PROFILE.digest()


def make_receipts(
    n: int, key: NodeKey = KEY, *, start: int = 0, profile_digest: bytes = PD
) -> list[Receipt]:
    node = bytes(key.public)
    return [
        Receipt(
            job_id=(start + i).to_bytes(16, "big"),
            node=node,
            input_digest=bytes([i % 256]) * 32,
            output_digest=bytes([(i + 1) % 256]) * 32,
            profile_digest=profile_digest,
            seq=start + i,
        )
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def signed5() -> tuple[BatchCommitment, list[SignedReceipt]]:
    return sign_batch(KEY, make_receipts(5), batch_seq=3)


# ---- round trips -----------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 40), batch_seq=st.integers(0, 2**64 - 1))
def test_sign_verify_round_trip(n: int, batch_seq: int) -> None:
    receipts = make_receipts(n)
    batch, signed = sign_batch(KEY, receipts, batch_seq=batch_seq)
    assert batch.count == n and batch.node == bytes(KEY.public) and batch.batch_seq == batch_seq
    assert batch.verify() is batch
    cache: dict[BatchCommitment, bytes] = {}
    for i, s in enumerate(signed):
        assert s.index == i and s.batch == batch
        assert verify_receipt(s, expected_profile_digest=PD) == receipts[i]
        assert verify_receipt(s, verified_batches=cache) == receipts[i]
        wire = SignedReceipt.decode(s.encode())
        assert wire == s
        assert verify_receipt(wire, verified_batches=cache) == receipts[i]
    assert cache == {batch: batch.commitment}
    assert verify_batch(batch, receipts, expected_profile_digest=PD) == receipts


def test_records_round_trip_through_generic_decode(signed5) -> None:
    batch, signed = signed5
    for value in (PROFILE, signed[0].receipt, batch, signed[2]):
        assert decode(encode(value)) == value
        assert type(value).decode(value.encode()) == value


@settings(max_examples=50, deadline=None)
@given(
    job_id=st.binary(min_size=16, max_size=16),
    digests=st.lists(st.binary(min_size=32, max_size=32), min_size=4, max_size=4),
    seq=st.integers(0, 2**64 - 1),
    batch_seq=st.integers(0, 2**64 - 1),
)
def test_fast_paths_match_generic_encoding(job_id, digests, seq, batch_seq) -> None:
    from posp.digest import digest_value
    from posp.encoding import Record

    r = Receipt(job_id, bytes(KEY.public), digests[1], digests[2], digests[3], seq)
    assert r.to_wire() == Record.to_wire(r)
    assert r.digest() == digest_value("receipt", r)
    batch, (s,) = sign_batch(KEY, [r], batch_seq=batch_seq)
    assert batch.to_wire() == Record.to_wire(batch)
    assert s.to_wire() == Record.to_wire(s)
    assert encode(s) == encode(Record.to_wire(s))


def test_cache_skips_only_identical_batches(signed5) -> None:
    batch, signed = signed5
    cache: dict[BatchCommitment, bytes] = {}
    verify_receipt(signed[0], verified_batches=cache)
    # same header, different signature bytes: not a cache hit, and fails
    forged = dataclasses.replace(batch, signature=bytes(64))
    assert forged.commitment == batch.commitment  # commitment excludes the signature
    with pytest.raises(BadSignature):
        verify_receipt(dataclasses.replace(signed[1], batch=forged), verified_batches=cache)
    assert forged not in cache
    # a cached batch still needs a valid inclusion proof
    tampered = dataclasses.replace(
        signed[1], receipt=dataclasses.replace(signed[1].receipt, output_digest=bytes(32))
    )
    with pytest.raises(BadSignature):
        verify_receipt(tampered, verified_batches=cache)


def test_commitment_covers_every_header_field(signed5) -> None:
    batch, _ = signed5
    variants = [
        dataclasses.replace(batch, node=bytes(OTHER.public)),
        dataclasses.replace(batch, batch_seq=batch.batch_seq + 1),
        dataclasses.replace(batch, count=batch.count + 1),
        dataclasses.replace(batch, root=bytes(32)),
    ]
    commitments = {batch.commitment} | {v.commitment for v in variants}
    assert len(commitments) == 5
    for v in variants:
        with pytest.raises(BadSignature):
            v.verify()
    assert len(batch.commitment) == 32


def test_single_receipt_batch() -> None:
    receipts = make_receipts(1)
    batch, (s,) = sign_batch(KEY, receipts, batch_seq=0)
    assert s.proof == () and batch.count == 1
    assert verify_receipt(s) == receipts[0]
    assert verify_batch(batch, receipts) == receipts


# ---- tampering -------------------------------------------------------------------------


def _check_tampered(data: bytes, original: SignedReceipt) -> None:
    """A flipped encoding either fails to decode, fails to verify, or is the same value."""
    try:
        value = SignedReceipt.decode(data)
    except MalformedMessage:
        return
    try:
        verify_receipt(value, expected_profile_digest=PD)
    except (BadSignature, ProfileMismatch):
        return
    assert value == original, "a tampered receipt verified with different content"


def _check_tampered_batch(data: bytes, original: BatchCommitment) -> None:
    try:
        value = BatchCommitment.decode(data)
    except MalformedMessage:
        return
    try:
        value.verify()
    except BadSignature:
        return
    assert value == original, "a tampered batch verified with different content"


def test_every_flipped_byte_of_a_signed_receipt_fails(signed5) -> None:
    _, signed = signed5
    for s in (signed[0], signed[4]):
        data = s.encode()
        for pos in range(len(data)):
            for mask in (0x01, 0x80, 0xFF):
                buf = bytearray(data)
                buf[pos] ^= mask
                _check_tampered(bytes(buf), s)


def test_every_flipped_byte_of_a_batch_fails(signed5) -> None:
    batch, _ = signed5
    data = batch.encode()
    for pos in range(len(data)):
        for mask in (0x01, 0x80, 0xFF):
            buf = bytearray(data)
            buf[pos] ^= mask
            _check_tampered_batch(bytes(buf), batch)


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_random_flips_fail(signed5, data: st.DataObject) -> None:
    batch, signed = signed5
    s = data.draw(st.sampled_from(signed))
    raw = bytearray(s.encode())
    for _ in range(data.draw(st.integers(1, 3))):
        pos = data.draw(st.integers(0, len(raw) - 1))
        raw[pos] ^= data.draw(st.integers(1, 255))
    _check_tampered(bytes(raw), s)
    braw = bytearray(batch.encode())
    pos = data.draw(st.integers(0, len(braw) - 1))
    braw[pos] ^= data.draw(st.integers(1, 255))
    _check_tampered_batch(bytes(braw), batch)


def test_field_level_tampering(signed5) -> None:
    _, signed = signed5
    s0, s1 = signed[0], signed[1]
    bad = [
        dataclasses.replace(s0, index=1),  # wrong position
        dataclasses.replace(s0, proof=s1.proof),  # someone else's proof
        dataclasses.replace(s0, proof=s0.proof[:-1]),  # truncated proof
        dataclasses.replace(s0, proof=(*s0.proof, bytes(32))),  # extended proof
        dataclasses.replace(s0, receipt=s1.receipt),  # receipt swapped
        dataclasses.replace(s0, receipt=dataclasses.replace(s0.receipt, seq=99)),
        dataclasses.replace(s0, batch=dataclasses.replace(s0.batch, count=6)),
    ]
    for b in bad:
        with pytest.raises(BadSignature):
            verify_receipt(b)


def test_receipt_and_batch_node_must_match(signed5) -> None:
    _, signed = signed5
    other_batch, other_signed = sign_batch(OTHER, make_receipts(5, OTHER), batch_seq=3)
    with pytest.raises(BadSignature, match="node"):
        verify_receipt(dataclasses.replace(signed[0], batch=other_batch))
    with pytest.raises(BadSignature):
        verify_batch(other_batch, [s.receipt for s in signed])


# ---- profiles --------------------------------------------------------------------------


def test_wrong_profile_is_profile_mismatch(signed5) -> None:
    _, signed = signed5
    other = dataclasses.replace(PROFILE, threads=4).digest()
    with pytest.raises(ProfileMismatch):
        verify_receipt(signed[0], expected_profile_digest=other)
    with pytest.raises(ProfileMismatch):
        verify_batch(signed[0].batch, [s.receipt for s in signed], expected_profile_digest=other)
    assert verify_receipt(signed[0], expected_profile_digest=PD) == signed[0].receipt


def test_forgery_is_bad_signature_even_with_wrong_profile(signed5) -> None:
    # authenticity is checked before the profile: a forged receipt is never blamed on
    # the node's configuration
    _, signed = signed5
    forged = dataclasses.replace(
        signed[0], receipt=dataclasses.replace(signed[0].receipt, profile_digest=bytes(32))
    )
    with pytest.raises(BadSignature):
        verify_receipt(forged, expected_profile_digest=PD)


def test_profile_digest_depends_on_every_field() -> None:
    variants = [
        dataclasses.replace(PROFILE, libraries=(("numpy", "2.0.1"), ("torch", "2.4.0"))),
        dataclasses.replace(PROFILE, device="cuda:0"),
        dataclasses.replace(PROFILE, dtype="bfloat16"),
        dataclasses.replace(PROFILE, threads=1),
        dataclasses.replace(PROFILE, batched=False),
        dataclasses.replace(PROFILE, deterministic=True),
        dataclasses.replace(PROFILE, platform="Darwin-arm64-py3.12"),
    ]
    digests = {PROFILE.digest()} | {v.digest() for v in variants}
    assert len(digests) == len(variants) + 1
    assert PROFILE.label == "cpu/float32/t2/batched"
    assert variants[5].label == "cpu/float32/t2/batched/det"
    assert variants[4].label == "cpu/float32/t2/single"


def test_profile_validation() -> None:
    with pytest.raises(MalformedMessage, match="sorted"):
        dataclasses.replace(PROFILE, libraries=(("torch", "2"), ("numpy", "1")))
    with pytest.raises(MalformedMessage, match="sorted"):
        dataclasses.replace(PROFILE, libraries=(("numpy", "2"), ("numpy", "1")))
    with pytest.raises(MalformedMessage):
        dataclasses.replace(PROFILE, libraries=[("numpy", "2")])  # type: ignore[arg-type]
    with pytest.raises(MalformedMessage):
        dataclasses.replace(PROFILE, threads=0)
    with pytest.raises(MalformedMessage):
        dataclasses.replace(PROFILE, batched=1)  # type: ignore[arg-type]
    # unsorted libraries on the wire are rejected too
    wire = PROFILE.to_wire()
    wire[2] = [["torch", "2"], ["numpy", "1"]]
    from posp import encoding

    with pytest.raises(MalformedMessage):
        ExecutionProfile.decode(encoding.encode(wire))


def test_capture_profile() -> None:
    p = capture_profile(threads=3, batched=False, libraries=("torch", "numpy", "no-such-lib-xyz"))
    names = [n for n, _ in p.libraries]
    assert names == sorted(names) == ["no-such-lib-xyz", "numpy", "torch"]
    assert dict(p.libraries)["no-such-lib-xyz"] == "absent"
    assert dict(p.libraries)["numpy"] == np.__version__
    assert p.threads == 3 and not p.batched and p.device == "cpu" and p.dtype == "float32"
    assert f"-py{sys.version_info.major}.{sys.version_info.minor}" in p.platform
    # deterministic: the same settings give the same digest
    again = capture_profile(threads=3, batched=False, libraries=("numpy", "torch", "no-such-lib-xyz"))
    assert again.digest() == p.digest()
    assert capture_profile(threads=4, batched=False).digest() != p.digest()
    with pytest.raises(ConfigError):
        capture_profile(threads=1, batched=False, libraries="numpy")


def test_capture_profile_does_not_import_torch() -> None:
    code = (
        "import sys; from posp.receipts import capture_profile; "
        "capture_profile(threads=1, batched=True); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# ---- receipts, batches, sign_batch misuse -----------------------------------------------


def test_receipt_validation() -> None:
    good = make_receipts(1)[0]
    for field, bad in [
        ("job_id", bytes(15)),
        ("job_id", bytes(32)),
        ("node", bytes(31)),
        ("input_digest", b""),
        ("output_digest", bytes(33)),
        ("profile_digest", "00" * 32),
        ("seq", -1),
        ("seq", 2**64),
        ("seq", True),
    ]:
        with pytest.raises(MalformedMessage, match=field):
            dataclasses.replace(good, **{field: bad})


def test_batch_validation(signed5) -> None:
    batch, _ = signed5
    for field, bad in [("count", 0), ("signature", bytes(63)), ("root", bytes(31))]:
        with pytest.raises(MalformedMessage, match=field):
            dataclasses.replace(batch, **{field: bad})


def test_sign_batch_refuses_misuse() -> None:
    with pytest.raises(ConfigError, match="node"):
        sign_batch(KEY, make_receipts(2) + make_receipts(1, OTHER, start=9), batch_seq=0)
    with pytest.raises(ConfigError, match="empty"):
        sign_batch(KEY, [], batch_seq=0)
    dup = make_receipts(2)
    with pytest.raises(ConfigError, match="twice"):
        sign_batch(KEY, [dup[0], dup[1], dup[0]], batch_seq=0)
    with pytest.raises(MalformedMessage):
        sign_batch(KEY, make_receipts(2), batch_seq=-1)
    # ConfigError is a ValueError
    with pytest.raises(ValueError):
        sign_batch(KEY, [], batch_seq=0)


def test_verify_batch_needs_exactly_the_signed_receipts(signed5) -> None:
    batch, signed = signed5
    receipts = [s.receipt for s in signed]
    assert verify_batch(batch, receipts) == receipts
    for bad in (receipts[:-1], receipts[::-1], [*receipts[:4], make_receipts(6)[5]]):
        with pytest.raises(BadSignature):
            verify_batch(batch, bad)
    with pytest.raises(BadSignature):
        verify_batch(dataclasses.replace(batch, signature=bytes(64)), receipts)


# ---- job ids and equivocation ----------------------------------------------------------


def test_job_ids() -> None:
    ids = {new_job_id() for _ in range(100)}
    assert len(ids) == 100 and all(len(i) == 16 for i in ids)
    a = [job_id_from_seed(random.Random(5)) for _ in range(2)]
    assert a[0] == a[1] and len(a[0]) == 16
    rng = random.Random(5)
    assert job_id_from_seed(rng) != job_id_from_seed(rng)
    g1, g2 = np.random.default_rng(7), np.random.default_rng(7)
    assert job_id_from_seed(g1) == job_id_from_seed(g2)
    assert job_id_from_seed(3) == job_id_from_seed(3) != job_id_from_seed(4)
    with pytest.raises(ConfigError):
        job_id_from_seed(True)
    with pytest.raises(ConfigError):
        job_id_from_seed("seed")  # type: ignore[arg-type]


def test_prove_equivocation() -> None:
    job = job_id_from_seed(1)
    r1 = dataclasses.replace(make_receipts(1)[0], job_id=job)
    r2 = dataclasses.replace(r1, output_digest=bytes([0xEE]) * 32, seq=50)
    _, (s1,) = sign_batch(KEY, [r1], batch_seq=1)
    _, s2s = sign_batch(KEY, [*make_receipts(3, start=10), r2], batch_seq=2)
    s2 = s2s[3]
    cache: dict[BatchCommitment, bytes] = {}
    assert prove_equivocation(s1, s2, verified_batches=cache) == (r1, r2)
    assert len(cache) == 2
    # same output: a retry, not equivocation
    r3 = dataclasses.replace(r1, seq=51)
    _, (s3,) = sign_batch(KEY, [r3], batch_seq=3)
    with pytest.raises(ConfigError, match="same output"):
        prove_equivocation(s1, s3)
    # different jobs
    _, (s4,) = sign_batch(KEY, make_receipts(1, start=77), batch_seq=4)
    with pytest.raises(ConfigError, match="job"):
        prove_equivocation(s1, s4)
    # different nodes
    o = dataclasses.replace(r2, node=bytes(OTHER.public))
    _, (s5,) = sign_batch(OTHER, [o], batch_seq=0)
    with pytest.raises(ConfigError, match="nodes"):
        prove_equivocation(s1, s5)
    # a forged second receipt proves nothing
    forged = dataclasses.replace(s2, receipt=dataclasses.replace(r2, seq=1))
    with pytest.raises(BadSignature):
        prove_equivocation(s1, forged)


# ---- known-answer vectors --------------------------------------------------------------


def _load_generator():
    spec = importlib.util.spec_from_file_location(
        "make_receipt_vectors", DATA / "make_receipt_vectors.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_known_answer_vectors() -> None:
    vectors = json.loads((DATA / "receipt_vectors.json").read_text())
    gen = _load_generator()
    # the committed bytes are what this code produces...
    assert gen.build_vectors() == vectors
    # ...and they verify on their own, from the JSON alone
    key = NodeKey.from_seed(bytes.fromhex(vectors["seed"]))
    assert key.public == PublicKey(bytes.fromhex(vectors["public_key"]))
    b = vectors["batch"]
    batch = BatchCommitment.decode(bytes.fromhex(b["encoded"]))
    assert batch.root.hex() == b["root"] and batch.signature.hex() == b["signature"]
    assert batch.commitment.hex() == b["commitment"]
    key.public.verify(bytes.fromhex(b["commitment"]), bytes.fromhex(b["signature"]))
    profile = ExecutionProfile.decode(bytes.fromhex(vectors["profile"]["encoded"]))
    assert profile.digest().hex() == vectors["profile"]["digest"]
    receipts = [Receipt.decode(bytes.fromhex(r["encoded"])) for r in vectors["receipts"]]
    assert [r.digest().hex() for r in receipts] == [r["leaf"] for r in vectors["receipts"]]
    assert verify_batch(batch, receipts, expected_profile_digest=profile.digest()) == receipts
    for i, item in enumerate(vectors["signed_receipts"]):
        s = SignedReceipt.decode(bytes.fromhex(item["encoded"]))
        assert s.index == i and [p.hex() for p in s.proof] == item["proof"]
        assert verify_receipt(s, expected_profile_digest=profile.digest()) == receipts[i]
