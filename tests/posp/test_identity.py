"""Ed25519 identities: sign/verify, constant-time values, key files."""

from __future__ import annotations

import os
import pickle
import stat

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from posp.errors import BadSignature, KeyFileError, MalformedMessage
from posp.identity import NodeKey, PublicKey, verify_signature

SEED = bytes(range(32))
posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")


@pytest.fixture(scope="module")
def key() -> NodeKey:
    return NodeKey.from_seed(SEED)


@settings(max_examples=50, deadline=None)
@given(message=st.binary(max_size=256))
def test_sign_verify_round_trip(key: NodeKey, message: bytes) -> None:
    sig = key.sign(message)
    assert len(sig) == 64
    assert key.public.verify(message, sig) == message
    assert verify_signature(bytes(key.public), message, sig) == message


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_any_flipped_bit_breaks_signature(key: NodeKey, data: st.DataObject) -> None:
    message = data.draw(st.binary(min_size=1, max_size=64))
    sig = key.sign(message)
    target = data.draw(st.sampled_from(["message", "signature"]))
    buf = bytearray(message if target == "message" else sig)
    pos = data.draw(st.integers(0, len(buf) - 1))
    buf[pos] ^= data.draw(st.integers(1, 255))
    with pytest.raises(BadSignature):
        if target == "message":
            key.public.verify(bytes(buf), sig)
        else:
            key.public.verify(message, bytes(buf))


def test_signing_is_deterministic(key: NodeKey) -> None:
    assert key.sign(b"x") == NodeKey.from_seed(SEED).sign(b"x")
    assert key.sign(b"x") != key.sign(b"y")


def test_wrong_key_and_bad_signature_shapes(key: NodeKey) -> None:
    other = NodeKey.from_seed(bytes(32))
    sig = key.sign(b"m")
    with pytest.raises(BadSignature):
        other.public.verify(b"m", sig)
    for bad in (sig[:63], sig + b"\0", b"", "x" * 64):
        with pytest.raises(BadSignature):
            key.public.verify(b"m", bad)  # type: ignore[arg-type]
    # an all-zero (small-order) public key verifies nothing
    with pytest.raises(BadSignature):
        PublicKey(bytes(32)).verify(b"m", sig)
    # BadSignature is also a ValueError
    with pytest.raises(ValueError):
        other.public.verify(b"m", sig)


def test_nacl_exception_is_translated(key: NodeKey) -> None:
    with pytest.raises(BadSignature) as info:
        key.public.verify(b"m", bytes(64))
    assert info.value.__cause__ is not None
    assert type(info.value.__cause__).__module__.startswith("nacl")


def test_public_key_validation() -> None:
    for bad in (b"", bytes(31), bytes(33)):
        with pytest.raises(MalformedMessage):
            PublicKey(bad)
    with pytest.raises(MalformedMessage):
        PublicKey("00" * 32)  # type: ignore[arg-type]
    with pytest.raises(MalformedMessage):
        verify_signature(bytes(31), b"m", bytes(64))
    with pytest.raises(MalformedMessage):
        NodeKey.from_seed(bytes(31))


def test_public_key_is_a_value(key: NodeKey) -> None:
    pub = key.public
    same = PublicKey(bytes(pub))
    assert pub == same and pub is not same
    assert hash(pub) == hash(same)
    assert len({pub, same}) == 1
    assert pub != NodeKey.from_seed(bytes(32)).public
    assert pub != bytes(pub)  # a PublicKey is not equal to raw bytes
    assert pub.hex() == bytes(pub).hex()
    assert pub.short == pub.hex()[:8]
    assert PublicKey(bytearray(bytes(pub))) == pub
    with pytest.raises(AttributeError):
        pub._raw = bytes(32)  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(pub)) == pub


def test_node_key_hides_its_secret(key: NodeKey) -> None:
    text = repr(key) + str(key)
    assert SEED.hex() not in text
    assert SEED.hex()[:8] not in text
    assert key.public.hex() in text
    assert not hasattr(key, "__bytes__")
    with pytest.raises(TypeError):
        bytes(key)  # type: ignore[call-overload]
    assert key.seed_bytes() == SEED
    with pytest.raises(AttributeError):
        key._seed = bytes(32)  # type: ignore[misc]


def test_node_key_equality_and_pickle(key: NodeKey) -> None:
    assert key == NodeKey.from_seed(SEED)
    assert key != NodeKey.from_seed(bytes(32))
    assert hash(key) == hash(NodeKey.from_seed(SEED))
    clone = pickle.loads(pickle.dumps(key))
    assert clone == key and clone.sign(b"m") == key.sign(b"m")


def test_generate_gives_distinct_keys() -> None:
    a, b = NodeKey.generate(), NodeKey.generate()
    assert a != b and a.public != b.public
    assert a.public.verify(b"m", a.sign(b"m")) == b"m"


# ---- key files --------------------------------------------------------------------------


@posix_only
def test_save_writes_0600_and_load_round_trips(tmp_path, key: NodeKey) -> None:
    path = tmp_path / "node.key"
    old = os.umask(0)  # even with a permissive umask the file is 0600
    try:
        key.save(path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes() == SEED
    assert NodeKey.load(path) == key
    assert NodeKey.load(str(path)).public == key.public


def test_save_refuses_existing_file_unless_overwrite(tmp_path, key: NodeKey) -> None:
    path = tmp_path / "node.key"
    NodeKey.from_seed(bytes(32)).save(path)
    with pytest.raises(KeyFileError, match="exists"):
        key.save(path)
    key.save(path, overwrite=True)
    assert NodeKey.load(path) == key


@posix_only
def test_save_refuses_to_overwrite_readable_file(tmp_path, key: NodeKey) -> None:
    path = tmp_path / "node.key"
    path.write_bytes(b"old contents")
    path.chmod(0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        key.save(path, overwrite=True)
    assert path.read_bytes() == b"old contents"  # untouched


@posix_only
def test_save_refuses_symlink(tmp_path, key: NodeKey) -> None:
    target = tmp_path / "elsewhere"
    target.write_bytes(b"")
    target.chmod(0o600)
    link = tmp_path / "node.key"
    link.symlink_to(target)
    with pytest.raises(KeyFileError):
        key.save(link, overwrite=True)
    with pytest.raises(KeyFileError):
        key.save(link)
    assert target.read_bytes() == b""


@pytest.mark.parametrize("size", [0, 31, 33, 64])
def test_load_wrong_size(tmp_path, size: int) -> None:
    path = tmp_path / "node.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, bytes(size))
    os.close(fd)
    with pytest.raises(KeyFileError, match="32 bytes"):
        NodeKey.load(path)


@posix_only
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o700 | 0o004])
def test_load_refuses_group_or_other_access(tmp_path, key: NodeKey, mode: int) -> None:
    path = tmp_path / "node.key"
    key.save(path)
    path.chmod(mode)
    with pytest.raises(KeyFileError, match="chmod 600") as info:
        NodeKey.load(path)
    assert f"{mode:04o}" in str(info.value)
    path.chmod(0o600)
    assert NodeKey.load(path) == key


def test_load_missing_file_and_directory(tmp_path) -> None:
    with pytest.raises(KeyFileError):
        NodeKey.load(tmp_path / "missing.key")
    d = tmp_path / "dir"
    d.mkdir(mode=0o700)
    with pytest.raises(KeyFileError):
        NodeKey.load(d)
    # KeyFileError is also an OSError
    with pytest.raises(OSError):
        NodeKey.load(tmp_path / "missing.key")
