"""posp: proof of sampling for untrusted inference compute.

The public surface, in one place::

    from posp import Cluster, verified, torch_module      # the Ray runtime (lazy import)
    from posp import Protocol, ProtocolParams, State      # the coordinator's rules
    from posp import Ledger, verify_ledger, audit         # the stake ledger
    from posp import UniformPolicy, ImportancePolicy, AdaptivePolicy, nash_threshold
    from posp import Honest, CheatRate                    # node behaviours (the seam)
    from posp import PospError                            # base of every posp error

The protocol core imports neither Ray nor torch; the runtime names are loaded on first
use, so ``import posp`` stays light.
"""

from __future__ import annotations

from typing import Any

from .audit import audit
from .economics import nash_threshold
from .errors import PospError
from .ledger import Ledger
from .ledger import verify as verify_ledger
from .node import CheatRate, Honest, NodeCore
from .protocol import Protocol, ProtocolParams, State
from .sampling import AdaptivePolicy, ImportancePolicy, UniformPolicy

__version__ = "0.1.0"

__all__ = [
    "AdaptivePolicy",
    "CheatRate",
    "Cluster",
    "Honest",
    "ImportancePolicy",
    "Ledger",
    "NodeCore",
    "NodeSpec",
    "PospError",
    "Protocol",
    "ProtocolParams",
    "State",
    "UniformPolicy",
    "audit",
    "nash_threshold",
    "torch_module",
    "verified",
    "verify_ledger",
]

_RUNTIME = {"Cluster", "NodeSpec", "verified", "torch_module"}


def __getattr__(name: str) -> Any:
    if name in _RUNTIME:  # imports Ray: only when asked for
        from . import runtime

        return getattr(runtime, name)
    raise AttributeError(f"module 'posp' has no attribute {name!r}")
