"""Workload 2: a small convolutional classifier on 3x32x32 images.

conv3x3(3->32) relu, conv3x3(32->32) relu, maxpool, conv3x3(32->64) relu, maxpool,
linear(4096->256) relu, linear(256->10). Output per job: the 10 logits (float32), compared
by relative L2 like the MLP.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from posp.compare import Comparator, RelativeL2

from .base import Workload, kaiming_conv, kaiming_linear, seeded_generator

__all__ = ["CNN", "CNNWorkload"]


class CNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, padding=1)
        self.conv2: nn.Module = nn.Conv2d(32, 32, 3, padding=1)
        self.conv3 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc1 = nn.Linear(64 * 8 * 8, 256)
        self.fc2 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.max_pool2d(x, 2)
        x = F.relu(self.conv3(x))
        x = F.max_pool2d(x, 2)
        x = F.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)


class _Identity(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


@dataclasses.dataclass(frozen=True)
class CNNWorkload(Workload):
    name: str = "cnn"
    seed: int = 2
    tolerance: float = 1e-4
    tolerance_floor: float = 1e-6

    def _make_module(self) -> nn.Module:
        g = seeded_generator(self.seed)
        m = CNN()
        with torch.no_grad():
            for conv in (m.conv1, m.conv2, m.conv3):
                assert isinstance(conv, nn.Conv2d)
                kaiming_conv(conv, g)
            for lin in (m.fc1, m.fc2):
                kaiming_linear(lin, g)
        return m

    def inputs(self, seed: int, n: int) -> list[np.ndarray]:
        rng = np.random.default_rng([seed, 0x636E6E])
        x = rng.standard_normal((n, 3, 32, 32), dtype=np.float32)
        return [x[i] for i in range(n)]

    def output_shape(self, x: np.ndarray) -> tuple[int, ...]:
        return (10,)

    @property
    def comparator(self) -> Comparator:
        return RelativeL2(self.tolerance)

    # cheats ---------------------------------------------------------------------------
    # per image: conv1 0.9M, conv2 9.4M, conv3 4.7M, fc1 1.0M, fc2 <0.01M MACs (16.1M)

    skip_layer_saves: str = "~58% (conv2, the 32->32 conv at full resolution, is skipped)"
    smaller_saves: str = "~44% (conv2 pruned to half its output channels: conv2 and conv3 do half the MACs)"
    int8_saves: str = "~6% (only the Linear layers are quantised; the convolutions stay fp32)"

    def skip_layer(self, module: nn.Module) -> nn.Module:
        m = copy.deepcopy(module)
        assert isinstance(m, CNN)
        m.conv2 = _Identity()
        return m

    def smaller(self, module: nn.Module) -> nn.Module:
        """Channel pruning: conv2 keeps its 16 output channels of largest weight norm."""
        m = copy.deepcopy(module)
        assert isinstance(m, CNN)
        with torch.no_grad():
            conv2 = m.conv2
            assert isinstance(conv2, nn.Conv2d)
            norms = conv2.weight.flatten(1).norm(dim=1)
            drop = torch.argsort(norms)[:16]
            conv2.weight[drop] = 0.0
            assert conv2.bias is not None
            conv2.bias[drop] = 0.0
            m.conv3.weight[:, drop] = 0.0
        return m
