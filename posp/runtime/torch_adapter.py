"""Torch at the edge: wrap an ``nn.Module`` factory as a posp workload factory.

Tensors never reach the protocol core: inputs arrive as numpy arrays, are stacked into
one torch batch (or run one by one on a per-job node), and outputs leave as numpy arrays.
bfloat16 outputs take the lossless route: their bits are viewed as ``uint16`` and wrapped
with :func:`posp.encoding.bf16_array`, so digests and comparisons keep their meaning.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..encoding import bf16_array

__all__ = ["TorchModule", "tensor_to_numpy", "torch_module"]


def tensor_to_numpy(t: Any) -> Any:
    """A CPU tensor as numpy; bfloat16 via its raw bits (lossless)."""
    import torch

    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        return bf16_array(t.view(torch.uint16).numpy().copy())
    return t.numpy()


class _ModuleRunner:
    def __init__(self, model: Any) -> None:
        self.model = model

    def __call__(self, inputs: Sequence[np.ndarray]) -> list[Any]:
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(np.stack([np.asarray(i) for i in inputs]))
            y = self.model(x)
        out = tensor_to_numpy(y)
        if isinstance(out, np.ndarray):
            return [row.copy() for row in out]
        return [bf16_array(row) for row in out.array]


class TorchModule:
    """A picklable workload factory: builds the module on the node, once.

    ``module_factory`` must be picklable (a module-level function or class) and build the
    weights itself, from a fixed seed or a file the package ships, so that weights are
    never shipped per job.
    """

    def __init__(self, module_factory: Callable[[], Any]) -> None:
        self.module_factory = module_factory

    def __call__(self) -> Callable[[Sequence[np.ndarray]], list[Any]]:
        model = self.module_factory()
        model.eval()
        return _ModuleRunner(model)

    def __repr__(self) -> str:
        name = getattr(self.module_factory, "__name__", repr(self.module_factory))
        return f"TorchModule({name})"


def torch_module(module_factory: Callable[[], Any]) -> TorchModule:
    """Wrap a factory of a torch ``nn.Module`` for :class:`~posp.runtime.Cluster`."""
    return TorchModule(module_factory)
