"""The exception tree of posp.

Exceptions are for misuse and broken input. A cheater caught is a *result* (a verdict,
a ledger event), never an exception. Every class also inherits the builtin it resembles,
so callers can catch either::

    PospError                                   base of everything posp raises
    ├── MalformedMessage(ValueError)            bytes that fail strict decoding (names the field)
    ├── BadSignature(ValueError)                a signature or inclusion proof that does not verify
    ├── KeyFileError(OSError)                   a key file with the wrong size, format or permissions
    ├── ProfileMismatch(ValueError)             a receipt whose execution profile is not the node's registered one
    ├── UnsupportedProfile(ValueError)          a node profile that the workload cannot serve
    ├── ConfigError(ValueError)                 a bad parameter, flag or scenario key (names it)
    ├── LedgerError(RuntimeError)               the stake ledger refused an operation
    │   ├── LedgerVersionError                  a ledger file of an unknown schema version, or not a ledger
    │   ├── LedgerIntegrityError                verification found a bad event (carries its sequence number)
    │   └── SettlementError(ValueError)         an invalid settlement: double settlement, unknown node, bad amount
    └── ClusterError(RuntimeError)              the runtime cannot do what was asked
        ├── NotEnoughNodes                      fewer live nodes than verification needs (says why)
        └── NodeFailure                         a node actor died or timed out (Ray's error, translated)
"""

from __future__ import annotations

__all__ = [
    "BadSignature",
    "ClusterError",
    "ConfigError",
    "KeyFileError",
    "LedgerError",
    "LedgerIntegrityError",
    "LedgerVersionError",
    "MalformedMessage",
    "NodeFailure",
    "NotEnoughNodes",
    "PospError",
    "ProfileMismatch",
    "SettlementError",
    "UnsupportedProfile",
]


class PospError(Exception):
    """Base class of every exception posp raises on purpose."""


class MalformedMessage(PospError, ValueError):
    """Input bytes failed strict decoding; the message names the offending field."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)


class BadSignature(PospError, ValueError):
    """A signature, batch commitment or Merkle inclusion proof does not verify."""


class KeyFileError(PospError, OSError):
    """A key file has the wrong size, format or permissions."""


class ProfileMismatch(PospError, ValueError):
    """A receipt carries an execution profile other than its node's registered one."""


class UnsupportedProfile(PospError, ValueError):
    """A node declared an execution profile that the workload cannot serve."""


class ConfigError(PospError, ValueError):
    """A parameter, flag or scenario key is invalid; the message names it."""

    def __init__(self, message: str, *, key: str | None = None) -> None:
        self.key = key
        super().__init__(f"{key}: {message}" if key else message)


class LedgerError(PospError, RuntimeError):
    """The stake ledger refused an operation."""


class LedgerVersionError(LedgerError):
    """The file is not a posp ledger, or its schema version is unknown."""


class LedgerIntegrityError(LedgerError):
    """Chain verification failed; ``seq`` is the first bad event's sequence number."""

    def __init__(self, message: str, *, seq: int | None = None) -> None:
        self.seq = seq
        super().__init__(f"event {seq}: {message}" if seq is not None else message)


class SettlementError(LedgerError, ValueError):
    """An invalid settlement: settled twice, unknown or ejected node, bad amount."""


class ClusterError(PospError, RuntimeError):
    """The runtime cannot do what was asked."""


class NotEnoughNodes(ClusterError):
    """Fewer live nodes than verification needs; the message says why."""


class NodeFailure(ClusterError):
    """A node actor died or timed out (translated from Ray's error)."""
