"""Workload 1: an MLP classifier 512-2048-2048-10 on feature vectors (the benchmark model).

Output per job: the 10 logits (float32). The comparator measures the relative L2 distance
of the whole logit vector, not the argmax: argmax agreement misses every low-precision
cheat that keeps the top class (fp16, bf16, 1e-3 weight noise).
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import torch
from torch import nn

from posp.compare import Comparator, RelativeL2

from .base import Workload, kaiming_linear, seeded_generator

__all__ = ["MLP", "MLPWorkload"]


class MLP(nn.Module):
    def __init__(self, sizes: tuple[int, ...]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes, sizes[1:], strict=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = torch.relu(x)
        return x


class _LowRank(nn.Module):
    """``W ~ U @ V`` with rank r: two thin matmuls instead of one square one."""

    def __init__(self, lin: nn.Linear, rank: int) -> None:
        super().__init__()
        # randomised SVD (seeded): the cheat must be cheap to set up, too
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            u, s, v = torch.svd_lowrank(lin.weight.detach(), q=rank + 16, niter=2)
        vh = v.T
        self.v = nn.Linear(lin.in_features, rank, bias=False)
        self.u = nn.Linear(rank, lin.out_features)
        with torch.no_grad():
            self.v.weight.copy_(vh[:rank] * s[:rank, None])
            self.u.weight.copy_(u[:, :rank])
            self.u.bias.copy_(lin.bias.detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.u(self.v(x))


@dataclasses.dataclass(frozen=True)
class MLPWorkload(Workload):
    name: str = "mlp"
    seed: int = 1
    sizes: tuple[int, ...] = (512, 2048, 2048, 10)
    tolerance: float = 1e-4
    tolerance_floor: float = 1e-6

    def _make_module(self) -> nn.Module:
        g = seeded_generator(self.seed)
        m = MLP(self.sizes)
        with torch.no_grad():
            for layer in m.layers:
                assert isinstance(layer, nn.Linear)
                kaiming_linear(layer, g)
        return m

    def inputs(self, seed: int, n: int) -> list[np.ndarray]:
        rng = np.random.default_rng([seed, 0x6D6C70])
        x = rng.standard_normal((n, self.sizes[0]), dtype=np.float32)
        return [x[i] for i in range(n)]

    def output_shape(self, x: np.ndarray) -> tuple[int, ...]:
        return (self.sizes[-1],)

    @property
    def comparator(self) -> Comparator:
        return RelativeL2(self.tolerance)

    # cheats ---------------------------------------------------------------------------

    skip_layer_saves: str = "~80% (the 2048x2048 hidden layer is skipped)"
    smaller_saves: str = "~60% (hidden layer replaced by a rank-256 factorisation)"
    int8_saves: str = "~50-75% of matmul cost (int8 weights, dynamic int8 activations)"

    def skip_layer(self, module: nn.Module) -> nn.Module:
        m = copy.deepcopy(module)
        assert isinstance(m, MLP)
        # the square hidden layer: identity in its place (shapes allow it)
        m.layers[1] = _Identity()
        return m

    def smaller(self, module: nn.Module) -> nn.Module:
        m = copy.deepcopy(module)
        assert isinstance(m, MLP)
        hidden = m.layers[1]
        assert isinstance(hidden, nn.Linear)
        m.layers[1] = _LowRank(hidden, rank=256)
        return m


class _Identity(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x
