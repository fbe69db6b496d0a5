"""The node as a Ray actor: a few lines around the plain :class:`~posp.node.NodeCore`.

The workload is built on the node, once, from a picklable factory (weights are built or
loaded there, never shipped per job), torch's thread count is set explicitly, and the
execution profile is captured by code on the node. The actor's only work method is
``run_batch``: every job, whatever its role, takes the same call path.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import ray

from ..identity import NodeKey
from ..node import BatchResult, Behaviour, Job, NodeCore, Runner, unpack_values
from ..receipts import capture_profile

__all__ = ["NodeActor", "NodeSpec", "set_threads"]


def set_threads(threads: int) -> bool:
    """Set torch's intra-op threads when torch is importable; report determinism flag."""
    import sys

    torch = sys.modules.get("torch")
    if torch is None:  # a numpy-only workload: never pay torch's import (seconds)
        return False
    torch.set_num_threads(threads)
    return bool(torch.are_deterministic_algorithms_enabled())


def _per_job(runner: Runner) -> Runner:
    def run(inputs: Sequence[Any]) -> list[Any]:
        return [runner([x])[0] for x in inputs]

    return run


class NodeSpec:
    """How to build one node: factory, threads, batched or per-job, behaviour, key seed."""

    def __init__(
        self,
        factory: Callable[[], Runner],
        *,
        threads: int = 1,
        batched: bool = True,
        behaviour: Behaviour | None = None,
        key_seed: bytes | None = None,
        role: str = "honest",
    ) -> None:
        if threads < 1:
            raise ValueError("threads must be >= 1")
        self.factory = factory
        self.threads = threads
        self.batched = batched
        self.behaviour = behaviour
        self.key_seed = key_seed
        self.role = role


class _NodeServer:
    """The plain class that the actor wraps (testable without Ray)."""

    def __init__(self, spec: NodeSpec) -> None:
        runner = spec.factory()  # builds the model once; may import torch
        deterministic = set_threads(spec.threads)
        if not spec.batched:
            runner = _per_job(runner)
        key = NodeKey.from_seed(spec.key_seed) if spec.key_seed else NodeKey.generate()
        profile = capture_profile(
            threads=spec.threads, batched=spec.batched, deterministic=deterministic
        )
        self.core = NodeCore(key, profile, runner, spec.behaviour)

    def identity(self) -> tuple[bytes, bytes, Any]:
        return self.core.public, self.core.profile_digest, self.core.profile

    def run_batch(self, jobs: Sequence[Job]) -> BatchResult:
        return self.core.run_batch(jobs)

    def run_jobs(self, job_ids: Sequence[bytes], inputs: Any) -> BatchResult:
        """``run_batch`` with the jobs' two fields sent apart: the ids as a list, the
        inputs packed by :func:`posp.node.pack_values` (or as a plain list)."""
        if (type(inputs) is tuple and len(inputs) == 2 and type(inputs[0]) is str
                and inputs[0] in ("stacked", "list")):
            inputs = unpack_values(inputs)
        return self.core.run_batch([Job(i, x) for i, x in zip(job_ids, inputs, strict=True)])

    def ping(self) -> bool:
        return True

    def cpu_seconds(self) -> float:
        """CPU seconds this node's process has used (benchmarks read it before and after)."""
        return time.process_time()

    def where(self) -> str:
        """The Ray node this actor runs on."""
        return str(ray.get_runtime_context().get_node_id())


NodeActor: Any = ray.remote(_NodeServer)
