"""The Ray runtime: node actors, the verified cluster, and the one-call wrapper."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .actor import NodeSpec
from .cluster import Cluster, MapStats, NodeInfo, Result
from .torch_adapter import TorchModule, torch_module

__all__ = ["Cluster", "MapStats", "NodeInfo", "NodeSpec", "Result", "TorchModule",
           "VerifiedFunction", "torch_module", "verified"]


class VerifiedFunction:
    """A callable whose every call is a verified cluster call; a thin wrapper over
    :class:`Cluster` that holds no logic of its own."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    def __call__(self, value: Any, *, importance: float = 1.0) -> Result:
        return self.cluster.submit(value, importance=importance)

    def map(self, values: Sequence[Any], **kwargs: Any) -> list[Result]:
        return self.cluster.map(values, **kwargs)

    def close(self) -> None:
        self.cluster.close()

    def __enter__(self) -> VerifiedFunction:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def verified(workload: Callable[[], Any], **cluster_options: Any) -> VerifiedFunction:
    """Turn a workload factory (or ``torch_module(nn_module_factory)``) into a verified
    callable backed by a :class:`Cluster` started with ``cluster_options``."""
    return VerifiedFunction(Cluster(workload, **cluster_options))
