"""Merkle commitments: one root over a batch of 32-byte digests, and inclusion proofs.

A node signs one root per batch instead of one signature per job; each job then carries
its index, the batch's leaf count and an audit path, and anyone can check it with the pure
function :func:`verify_inclusion`.

The tree is RFC 6962's (Certificate Transparency) with its domain separation:

- leaf hash ``sha256(0x00 || leaf)``, interior node ``sha256(0x01 || left || right)``, so a
  leaf can never be passed off as an interior node (no second-preimage trick);
- ``n`` leaves split as ``k | n - k`` with ``k`` the largest power of two below ``n``, so
  any count works without padding or duplicated leaves;
- the audit path lists sibling hashes from the leaf up (RFC 6962 ``PATH``).

One addition: the root commits to the leaf count,
``root = sha256(0x02 || count as 8 bytes big-endian || tree head)``. An RFC 6962 audit
path alone does not fix the tree size (the path for leaf 0 of 5 leaves also verifies as
leaf 0 of 6, 7 or 8), so without it a commitment would have to carry the count beside the
root to mean anything. With it, a changed count fails like a changed root.

The empty batch has no root: :func:`merkle_root` raises :class:`~posp.errors.ConfigError`
(a ``ValueError``) for it, since a commitment to no jobs is a caller's mistake.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

from .errors import BadSignature, ConfigError

__all__ = [
    "HASH_SIZE",
    "MAX_LEAVES",
    "merkle_proof",
    "merkle_proofs",
    "merkle_root",
    "verify_inclusion",
]

HASH_SIZE = 32
#: a count must fit the 8-byte field of the root; far beyond any batch
MAX_LEAVES = 2**64 - 1

_LEAF = b"\x00"
_NODE = b"\x01"
_ROOT = b"\x02"


def _leaf_hash(leaf: bytes) -> bytes:
    return hashlib.sha256(_LEAF + leaf).digest()


def _node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(_NODE + left + right).digest()


def _root_hash(count: int, head: bytes) -> bytes:
    return hashlib.sha256(_ROOT + count.to_bytes(8, "big") + head).digest()


def _split(n: int) -> int:
    """The largest power of two strictly below ``n`` (``n >= 2``)."""
    return 1 << ((n - 1).bit_length() - 1)


def _checked_leaves(leaves: Sequence[bytes]) -> list[bytes]:
    if leaves and all(type(x) is bytes and len(x) == HASH_SIZE for x in leaves):
        return list(leaves)  # the common case, checked in one pass
    out = []
    for i, leaf in enumerate(leaves):
        if not isinstance(leaf, bytes | bytearray | memoryview) or len(leaf) != HASH_SIZE:
            raise ConfigError(f"a leaf is a {HASH_SIZE}-byte digest, got {leaf!r:.60}",
                              key=f"leaves[{i}]")
        out.append(bytes(leaf))
    if not out:
        raise ConfigError("a Merkle tree needs at least one leaf", key="leaves")
    return out


def _head(hashes: list[bytes], lo: int, hi: int) -> bytes:
    """RFC 6962 tree head over the leaf hashes ``hashes[lo:hi]``."""
    if hi - lo == 1:
        return hashes[lo]
    mid = lo + _split(hi - lo)
    return _node_hash(_head(hashes, lo, mid), _head(hashes, mid, hi))


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    """The 32-byte root over ``leaves`` (32-byte digests, at least one), count included."""
    items = _checked_leaves(leaves)
    sha = hashlib.sha256
    return _root_hash(len(items), _head_iterative([sha(_LEAF + x).digest() for x in items]))


def _head_iterative(level: list[bytes]) -> bytes:
    """The RFC 6962 head, bottom-up: pair left to right, carry an odd last node up.

    This builds the same left-complete tree as the recursive split (a test checks it)
    without a Python call per node: merkle_root runs once per batch on the coordinator.
    """
    sha = hashlib.sha256
    node = _NODE
    while len(level) > 1:
        nxt = [sha(node + level[i] + level[i + 1]).digest() for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def _levels(items: list[bytes]) -> list[list[bytes]]:
    """Every level of the tree, leaf hashes first, built bottom-up (pair left to right,
    carry an odd last node up): the same left-complete tree as the RFC 6962 split."""
    sha = hashlib.sha256
    level = [sha(_LEAF + x).digest() for x in items]
    levels = [level]
    while len(level) > 1:
        nxt = [sha(_NODE + level[k] + level[k + 1]).digest()
               for k in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        levels.append(nxt)
        level = nxt
    return levels


def _path(levels: list[list[bytes]], index: int) -> tuple[bytes, ...]:
    path = []
    for level in levels[:-1]:
        sibling = index ^ 1
        if sibling < len(level):  # else this node is carried up unpaired
            path.append(level[sibling])
        index //= 2
    return tuple(path)


def merkle_levels(leaves: Sequence[bytes]) -> list[list[bytes]]:
    """Every level of the tree (build once, then :func:`proof_from_levels` per leaf)."""
    return _levels(_checked_leaves(leaves))


def proof_from_levels(levels: list[list[bytes]], index: int) -> tuple[bytes, ...]:
    """The audit path of leaf ``index`` from :func:`merkle_levels`' output, O(log n)."""
    if type(index) is not int or not 0 <= index < len(levels[0]):
        raise ConfigError(f"index {index!r} not in [0, {len(levels[0])})", key="index")
    return _path(levels, index)


def merkle_proof(leaves: Sequence[bytes], index: int) -> tuple[bytes, ...]:
    """The audit path of ``leaves[index]``: sibling hashes from the leaf up, O(n)."""
    items = _checked_leaves(leaves)
    if type(index) is not int or not 0 <= index < len(items):
        raise ConfigError(f"index {index!r} not in [0, {len(items)})", key="index")
    return _path(_levels(items), index)


def merkle_proofs(leaves: Sequence[bytes]) -> list[tuple[bytes, ...]]:
    """The audit path of every leaf, in leaf order, in O(n log n) for the whole batch."""
    items = _checked_leaves(leaves)
    levels = _levels(items)
    return [_path(levels, i) for i in range(len(items))]


def _merkle_proof_recursive(leaves: Sequence[bytes], index: int) -> tuple[bytes, ...]:
    """The RFC 6962 descent, kept as the reference the iterative form is tested against."""
    items = _checked_leaves(leaves)
    hashes = [_leaf_hash(x) for x in items]
    path: list[bytes] = []
    lo, hi = 0, len(items)
    while hi - lo > 1:
        mid = lo + _split(hi - lo)
        if index < mid:
            path.append(_head(hashes, mid, hi))
            hi = mid
        else:
            path.append(_head(hashes, lo, mid))
            lo = mid
    return tuple(reversed(path))


def verify_inclusion(
    leaf: bytes, index: int, count: int, proof: Sequence[bytes], root: bytes
) -> bytes:
    """Return ``leaf`` if ``proof`` shows it at ``index`` of a ``count``-leaf tree with
    ``root``; raise :class:`~posp.errors.BadSignature` otherwise (also for malformed
    arguments: a wrong size, a negative index, a proof of the wrong length)."""
    if not isinstance(leaf, bytes) or len(leaf) != HASH_SIZE:
        raise BadSignature(f"the leaf must be {HASH_SIZE} bytes")
    if not isinstance(root, bytes) or len(root) != HASH_SIZE:
        raise BadSignature(f"the root must be {HASH_SIZE} bytes")
    if type(count) is not int or not 1 <= count <= MAX_LEAVES:
        raise BadSignature(f"count {count!r} out of range")
    if type(index) is not int or not 0 <= index < count:
        raise BadSignature(f"index {index!r} not in [0, {count})")
    if isinstance(proof, bytes | str) or not isinstance(proof, Sequence):
        raise BadSignature("the proof must be a sequence of hashes")
    # RFC 9162, section 2.1.3.2: walk up from the leaf, fn its position, sn the last one
    fn, sn = index, count - 1
    r = _leaf_hash(leaf)
    for p in proof:
        if not isinstance(p, bytes) or len(p) != HASH_SIZE:
            raise BadSignature(f"a proof item must be {HASH_SIZE} bytes")
        if sn == 0:
            raise BadSignature("proof longer than the path to the root")
        if fn & 1 or fn == sn:
            r = _node_hash(p, r)
            while not fn & 1 and fn != 0:  # a right-edge subtree skipped a level
                fn >>= 1
                sn >>= 1
        else:
            r = _node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise BadSignature("proof shorter than the path to the root")
    if not hmac.compare_digest(_root_hash(count, r), root):
        raise BadSignature("inclusion proof does not lead to the root")
    return leaf
