"""Merkle roots and inclusion proofs: every proof verifies, every alteration fails."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from posp.errors import BadSignature, ConfigError
from posp.merkle import merkle_proof, merkle_proofs, merkle_root, verify_inclusion


def leaves_of(n: int, salt: bytes = b"") -> list[bytes]:
    return [hashlib.sha256(salt + i.to_bytes(4, "big")).digest() for i in range(n)]


def rfc6962_head(leaves: list[bytes]) -> bytes:
    """RFC 6962 MTH, written straight from the RFC as an independent reference."""
    if len(leaves) == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return hashlib.sha256(b"\x01" + rfc6962_head(leaves[:k]) + rfc6962_head(leaves[k:])).digest()


def flip(b: bytes, bit: int) -> bytes:
    buf = bytearray(b)
    buf[(bit // 8) % len(buf)] ^= 1 << (bit % 8)
    return bytes(buf)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 8, 9, 31, 64, 100])
def test_root_is_rfc6962_head_bound_to_the_count(n: int) -> None:
    leaves = leaves_of(n)
    head = rfc6962_head(leaves)
    assert merkle_root(leaves) == hashlib.sha256(b"\x02" + n.to_bytes(8, "big") + head).digest()


def test_known_answer_root() -> None:
    assert merkle_root(leaves_of(5)).hex() == (
        "f65cafac1cc183e942dddf7d9bdefa56a88e46a4fa939cfd45a6c20d6be250c9"
    )


def test_empty_and_malformed_leaves_are_refused() -> None:
    with pytest.raises(ConfigError, match="leaves"):
        merkle_root([])
    with pytest.raises(ConfigError, match=r"leaves\[1\]"):
        merkle_root([b"\x00" * 32, b"\x00" * 31])
    with pytest.raises(ConfigError, match=r"leaves\[0\]"):
        merkle_proofs(["x" * 32])  # type: ignore[list-item]
    with pytest.raises(ConfigError, match="index"):
        merkle_proof(leaves_of(3), 3)
    with pytest.raises(ConfigError, match="index"):
        merkle_proof(leaves_of(3), -1)


@settings(max_examples=150, deadline=None)
@given(n=st.integers(1, 300), salt=st.binary(max_size=4))
def test_every_proof_verifies(n: int, salt: bytes) -> None:
    leaves = leaves_of(n, salt)
    root = merkle_root(leaves)
    proofs = merkle_proofs(leaves)
    assert len(proofs) == n
    for i, (leaf, proof) in enumerate(zip(leaves, proofs, strict=True)):
        assert verify_inclusion(leaf, i, n, proof, root) == leaf
        assert len(proof) <= max(1, (n - 1).bit_length())
    for i in {0, n // 2, n - 1}:
        assert merkle_proof(leaves, i) == proofs[i]


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_any_alteration_fails(data: st.DataObject) -> None:
    n = data.draw(st.integers(1, 300), label="n")
    leaves = leaves_of(n, data.draw(st.binary(max_size=4), label="salt"))
    i = data.draw(st.integers(0, n - 1), label="index")
    proof = merkle_proof(leaves, i)
    root = merkle_root(leaves)
    leaf = leaves[i]
    what = data.draw(
        st.sampled_from(["proof", "leaf", "index", "count", "root", "drop", "extra"]),
        label="what",
    )
    bit = data.draw(st.integers(0, 255), label="bit")
    args = [leaf, i, n, list(proof), root]
    if what == "proof":
        if not proof:
            return
        j = data.draw(st.integers(0, len(proof) - 1), label="item")
        args[3][j] = flip(proof[j], bit)
    elif what == "leaf":
        args[0] = flip(leaf, bit)
    elif what == "index":
        other = data.draw(st.integers(0, 2 * n + 2).filter(lambda x: x != i), label="to")
        args[1] = other
    elif what == "count":
        other = data.draw(st.integers(0, 2 * n + 2).filter(lambda x: x != n), label="to")
        args[2] = other
    elif what == "root":
        args[4] = flip(root, bit)
    elif what == "drop":
        if not proof:
            return
        args[3] = args[3][:-1]
    else:
        args[3] = [*args[3], leaves[0]]
    with pytest.raises(BadSignature):
        verify_inclusion(*args)  # type: ignore[arg-type]


@settings(max_examples=150, deadline=None)
@given(n=st.integers(2, 200), data=st.data())
def test_a_proof_binds_its_index(n: int, data: st.DataObject) -> None:
    leaves = leaves_of(n)
    root = merkle_root(leaves)
    proofs = merkle_proofs(leaves)
    i = data.draw(st.integers(0, n - 1))
    for j in range(n):
        if j == i:
            continue
        with pytest.raises(BadSignature):
            verify_inclusion(leaves[i], j, n, proofs[i], root)
        with pytest.raises(BadSignature):
            verify_inclusion(leaves[j], j, n, proofs[i], root)


def test_count_is_bound_where_rfc6962_paths_alone_do_not_bind_it() -> None:
    # leaf 0's audit path has the same shape in trees of 5 to 8 leaves
    leaves = leaves_of(5)
    proof = merkle_proof(leaves, 0)
    root = merkle_root(leaves)
    assert verify_inclusion(leaves[0], 0, 5, proof, root) == leaves[0]
    for count in (6, 7, 8):
        with pytest.raises(BadSignature):
            verify_inclusion(leaves[0], 0, count, proof, root)


@pytest.mark.parametrize(
    "args",
    [
        (b"\x00" * 31, 0, 1, (), b"\x00" * 32),
        (b"\x00" * 32, 0, 1, (), b"\x00" * 33),
        ("x" * 32, 0, 1, (), b"\x00" * 32),
        (b"\x00" * 32, -1, 1, (), b"\x00" * 32),
        (b"\x00" * 32, True, 2, (b"\x00" * 32,), b"\x00" * 32),
        (b"\x00" * 32, 0, 0, (), b"\x00" * 32),
        (b"\x00" * 32, 0, 2**64, (), b"\x00" * 32),
        (b"\x00" * 32, 0, 1.0, (), b"\x00" * 32),
        (b"\x00" * 32, 0, 2, b"\x00" * 32, b"\x00" * 32),
        (b"\x00" * 32, 0, 2, None, b"\x00" * 32),
        (b"\x00" * 32, 0, 2, (b"\x00" * 31,), b"\x00" * 32),
        (b"\x00" * 32, 0, 2, ("x" * 32,), b"\x00" * 32),
    ],
)
def test_malformed_arguments_raise_bad_signature(args: tuple[object, ...]) -> None:
    with pytest.raises(BadSignature):
        verify_inclusion(*args)  # type: ignore[arg-type]


def test_single_leaf_tree() -> None:
    leaf = leaves_of(1)[0]
    root = merkle_root([leaf])
    assert merkle_proofs([leaf]) == [()]
    assert verify_inclusion(leaf, 0, 1, (), root) == leaf
    with pytest.raises(BadSignature):
        verify_inclusion(leaf, 0, 1, (leaf,), root)


def test_iterative_head_equals_the_recursive_rfc6962_split():
    from posp import merkle

    for n in range(1, 130):
        leaves = [merkle._leaf_hash(bytes([i % 256]) * 32) for i in range(n)]
        assert merkle._head_iterative(list(leaves)) == merkle._head(leaves, 0, n)


def test_iterative_proofs_equal_the_rfc6962_descent():
    from posp import merkle

    for n in range(1, 70):
        leaves = [bytes([i % 256, n]) * 16 for i in range(n)]
        all_proofs = merkle.merkle_proofs(leaves)
        root = merkle.merkle_root(leaves)
        for i in range(n):
            ref = merkle._merkle_proof_recursive(leaves, i)
            assert merkle.merkle_proof(leaves, i) == ref == all_proofs[i]
            assert merkle.verify_inclusion(leaves[i], i, n, ref, root) == leaves[i]
