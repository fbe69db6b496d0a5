"""The shipped workloads by name."""

from __future__ import annotations

from posp.errors import ConfigError

from .base import Workload
from .cnn import CNNWorkload
from .lm import LMWorkload
from .mlp import MLPWorkload

__all__ = ["WORKLOADS", "get"]

WORKLOADS: dict[str, Workload] = {
    "mlp": MLPWorkload(),
    "cnn": CNNWorkload(),
    "lm": LMWorkload(),
}


def get(name: str) -> Workload:
    """The workload called ``name``; ConfigError naming the choices otherwise."""
    try:
        return WORKLOADS[name]
    except KeyError:
        raise ConfigError(
            f"unknown workload {name!r}; choose one of {sorted(WORKLOADS)}", key="workload"
        ) from None
