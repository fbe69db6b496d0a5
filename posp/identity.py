"""Node identities: Ed25519 keys. The one module that imports ``nacl``.

A :class:`NodeKey` is a node's secret signing key; a :class:`PublicKey` is the 32-byte
value everyone else knows it by. ``PublicKey.verify`` returns the verified message or
raises :class:`~posp.errors.BadSignature`; it never returns a bool. PyNaCl's exceptions are
translated here, once, and never escape this module.

Every message that posp signs is a 32-byte domain-separated digest
(:func:`posp.digest.digest`), so a signature made for one purpose (a batch of receipts, a
ledger head) can never be replayed as a signature for another.

Ed25519 here is libsodium's: signing is deterministic (the same key and message always
give the same 64 bytes, which the known-answer vectors rely on), and verification rejects
non-canonical signatures and small-order public keys, so a signature is not malleable.
"""

from __future__ import annotations

import hmac
import os
import stat
from typing import Any

import nacl.bindings
import nacl.exceptions

from .errors import BadSignature, KeyFileError, MalformedMessage

__all__ = [
    "PUBLIC_KEY_BYTES",
    "SEED_BYTES",
    "SIGNATURE_BYTES",
    "NodeKey",
    "PublicKey",
    "verify_signature",
]

PUBLIC_KEY_BYTES = 32
SEED_BYTES = 32
SIGNATURE_BYTES = 64

_NACL_ERRORS = (nacl.exceptions.CryptoError, ValueError, TypeError)


def _as_bytes(value: Any, name: str) -> bytes:
    if type(value) is bytes:
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise MalformedMessage(f"expected bytes, got {type(value).__name__}", field=name)


class PublicKey:
    """A node's Ed25519 public key: an immutable 32-byte value.

    Compares in constant time, hashes by value, and is its own ``bytes(...)``. The bytes
    are not checked to be a valid curve point (that costs as much as a verification);
    an invalid key simply never verifies anything.
    """

    __slots__ = ("_raw",)
    _raw: bytes

    def __init__(self, raw: bytes) -> None:
        raw = _as_bytes(raw, "public_key")
        if len(raw) != PUBLIC_KEY_BYTES:
            raise MalformedMessage(
                f"expected {PUBLIC_KEY_BYTES} bytes, got {len(raw)}", field="public_key"
            )
        object.__setattr__(self, "_raw", raw)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("PublicKey is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("PublicKey is immutable")

    def __reduce__(self) -> tuple[Any, ...]:
        return (PublicKey, (self._raw,))

    def __bytes__(self) -> bytes:
        return self._raw

    def hex(self) -> str:
        return self._raw.hex()

    @property
    def short(self) -> str:
        """The first 8 hex characters, for logs and tables (not for identification)."""
        return self._raw[:4].hex()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PublicKey):
            return NotImplemented
        return hmac.compare_digest(self._raw, other._raw)

    def __hash__(self) -> int:
        return hash((PublicKey, self._raw))

    def __repr__(self) -> str:
        return f"PublicKey({self._raw.hex()!r})"

    def verify(self, message: bytes, signature: bytes) -> bytes:
        """Return ``message`` if ``signature`` is this key's signature of it; else raise.

        Raises :class:`~posp.errors.BadSignature` for a wrong, truncated or malformed
        signature.
        """
        message = _as_bytes(message, "message")
        if type(signature) is not bytes or len(signature) != SIGNATURE_BYTES:
            raise BadSignature(
                f"signature must be {SIGNATURE_BYTES} bytes "
                f"(key {self.short})"
            )
        try:
            return nacl.bindings.crypto_sign_open(signature + message, self._raw)
        except _NACL_ERRORS as exc:
            raise BadSignature(f"signature does not verify under key {self.short}") from exc


def verify_signature(public: bytes, message: bytes, signature: bytes) -> bytes:
    """``PublicKey(public).verify(message, signature)``: the message, or raise BadSignature.

    A ``public`` that is not 32 bytes raises :class:`~posp.errors.MalformedMessage`.
    """
    return PublicKey(public).verify(message, signature)


class NodeKey:
    """A node's Ed25519 signing key.

    ``repr`` shows only the public key. The secret is reachable only through the
    explicitly named :meth:`seed_bytes` and :meth:`save`; there is no ``__bytes__``.
    Pickling (to hand a key to a Ray actor) carries the seed, like the key itself would.
    """

    __slots__ = ("_public", "_secret", "_seed")
    _seed: bytes
    _secret: bytes
    _public: PublicKey

    def __init__(self, seed: bytes) -> None:
        seed = _as_bytes(seed, "seed")
        if len(seed) != SEED_BYTES:
            raise MalformedMessage(f"expected {SEED_BYTES} bytes, got {len(seed)}", field="seed")
        public, secret = nacl.bindings.crypto_sign_seed_keypair(seed)
        object.__setattr__(self, "_seed", seed)
        object.__setattr__(self, "_secret", secret)
        object.__setattr__(self, "_public", PublicKey(public))

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("NodeKey is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("NodeKey is immutable")

    def __reduce__(self) -> tuple[Any, ...]:
        return (NodeKey, (self._seed,))

    @classmethod
    def generate(cls) -> NodeKey:
        """A fresh key from the operating system's randomness."""
        return cls(os.urandom(SEED_BYTES))

    @classmethod
    def from_seed(cls, seed: bytes) -> NodeKey:
        """The key derived from a 32-byte seed (tests and simulation; deterministic)."""
        return cls(seed)

    @property
    def public(self) -> PublicKey:
        return self._public

    def seed_bytes(self) -> bytes:
        """The 32-byte secret seed. Whoever holds it can sign as this node."""
        return self._seed

    def sign(self, message: bytes) -> bytes:
        """The 64-byte detached Ed25519 signature of ``message`` (deterministic)."""
        message = _as_bytes(message, "message")
        return nacl.bindings.crypto_sign(message, self._secret)[:SIGNATURE_BYTES]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, NodeKey):
            return NotImplemented
        return hmac.compare_digest(self._seed, other._seed)

    def __hash__(self) -> int:
        return hash((NodeKey, self._public))

    def __repr__(self) -> str:
        return f"NodeKey(public={self._public.hex()!r})"

    # ---- key files -------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> None:
        """Write the 32-byte seed to ``path``, readable by its owner only (mode 0600).

        The file is created with mode 0600 from the start (no window in which it is
        readable by others). ``overwrite=False`` refuses an existing file; with
        ``overwrite=True`` an existing file is replaced only if it is a regular file, not
        a symbolic link, and not accessible to group or others, so the secret is never
        written into a file someone else can read. Raises
        :class:`~posp.errors.KeyFileError`.
        """
        # No O_TRUNC: an existing file is checked before anything in it is touched.
        flags = os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
        if not overwrite:
            flags |= os.O_EXCL
        try:
            fd = os.open(path, flags, 0o600)
        except FileExistsError as exc:
            raise KeyFileError(
                f"{os.fspath(path)}: key file exists; pass overwrite=True to replace it"
            ) from exc
        except OSError as exc:
            raise KeyFileError(f"{os.fspath(path)}: cannot create key file: {exc}") from exc
        try:
            _check_key_fd(fd, path, check_size=False)
            os.ftruncate(fd, 0)
            with os.fdopen(fd, "wb", closefd=False) as fh:
                fh.write(self._seed)
                fh.flush()
                os.fsync(fh.fileno())
        finally:
            os.close(fd)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> NodeKey:
        """Read a key written by :meth:`save`.

        Raises :class:`~posp.errors.KeyFileError` if the file is missing, not a regular
        file, not exactly 32 bytes, or accessible to group or others (on POSIX).
        """
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            raise KeyFileError(f"{os.fspath(path)}: cannot open key file: {exc}") from exc
        try:
            _check_key_fd(fd, path, check_size=True)
            with os.fdopen(fd, "rb", closefd=False) as fh:
                seed = fh.read(SEED_BYTES + 1)
        finally:
            os.close(fd)
        if len(seed) != SEED_BYTES:
            raise KeyFileError(
                f"{os.fspath(path)}: key file must hold exactly {SEED_BYTES} bytes, "
                f"read {len(seed)}"
            )
        return cls(seed)


def _check_key_fd(fd: int, path: str | os.PathLike[str], *, check_size: bool) -> None:
    """Check the opened file itself (fstat, so no race with a rename of the path)."""
    where = os.fspath(path)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise KeyFileError(f"{where}: key file is not a regular file")
    if os.name == "posix" and st.st_mode & 0o077:
        raise KeyFileError(
            f"{where}: key file mode is {stat.S_IMODE(st.st_mode):04o}, accessible to "
            f"group or others; run `chmod 600 {where}` (and consider the key compromised "
            f"if others could read it)"
        )
    if check_size and st.st_size != SEED_BYTES:
        raise KeyFileError(
            f"{where}: key file must hold exactly {SEED_BYTES} bytes (a raw Ed25519 seed), "
            f"it holds {st.st_size}"
        )
