"""The cheat catalogue: what a dishonest node returns instead of the honest output.

Every cheat is a frozen value with a ``name``, a ``saves`` string (the compute it saves
against honest execution) and two entry points:

* ``bind(workload, runner, *, seed=0) -> Behaviour``: what a node does once at start (build
  the cheap model, seed its randomness); the behaviour is then called per batch,
  ``behaviour(inputs) -> outputs``, and may keep state (the replay cheat does);
* ``output(workload, runner, inputs, *, seed=0)``: ``bind`` plus one call, for tests.

Output-level cheats (no model needed)
    zeros       all-zero output of the right shape                  saves all compute
    constant    a constant output of the right shape                saves all compute
    random      standard-normal values of the right shape           saves all compute
    replay      the previous job's output, re-sent (the very first  saves all compute but
                job is computed honestly)                           the first job
    wrong_input honest outputs for other inputs, computed once      saves all compute after
                and served in turn (a cache keyed on the wrong        the first batch
                thing)
Model-level cheats (a cheaper model, built once on the node)
    smaller_model  a cut-down model (workload-specific: low rank, pruned channels or units)
    fp16, bf16     the model and inputs cast down; outputs widened back to float32
    int8           torch.ao.quantization.quantize_dynamic on every nn.Linear (the CNN's
                   convolutions stay fp32, so its saving is small)
    skip_layer     one layer not computed (workload-specific: which layer)
    noise_1e-2, noise_1e-3  every float weight multiplied by (1 + rel * N(0, 1)): stands
                   for lossy weight compression or a corrupted copy; saves nothing by
                   itself and is the subtlest drift a node could show
Language model only
    truncated   generates half the tokens, repeats the last one     saves ~50%
                (with its logits) to fill the expected length
    sampling    samples from softmax(logits) instead of greedy      saves nothing (wrong
                argmax; logits are honest for the sampled path       decoding rule)
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn

from .base import Runner, Workload, seeded_generator

if TYPE_CHECKING:
    from .lm import LMWorkload

__all__ = [
    "BF16",
    "FP16",
    "Behaviour",
    "Cheat",
    "Constant",
    "Int8Dynamic",
    "Noise",
    "RandomOutput",
    "Replay",
    "Sampling",
    "SkipLayer",
    "SmallerModel",
    "Truncated",
    "WrongInput",
    "Zeros",
    "catalogue",
]

Outputs = list[np.ndarray]


class Behaviour:
    """A node's output rule for a batch of jobs: ``behaviour(inputs) -> outputs``."""

    def __init__(self, fn: Callable[[Sequence[np.ndarray]], Outputs], name: str) -> None:
        self._fn = fn
        self.name = name

    def __call__(self, inputs: Sequence[np.ndarray]) -> Outputs:
        return self._fn(inputs)

    def __repr__(self) -> str:
        return f"Behaviour({self.name!r})"


@dataclasses.dataclass(frozen=True)
class Cheat:
    """Base of the catalogue entries."""

    name: ClassVar[str] = ""
    saves: str = "all compute"

    def bind(self, workload: Workload, runner: Runner, *, seed: int = 0) -> Behaviour:
        raise NotImplementedError

    def output(self, workload: Workload, runner: Runner, inputs: Sequence[np.ndarray],
               *, seed: int = 0) -> Outputs:
        return self.bind(workload, runner, seed=seed)(inputs)

    def describe(self) -> dict[str, str]:
        return {"name": self.name, "saves": self.saves}


# ---- output-level cheats --------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Zeros(Cheat):
    name: ClassVar[str] = "zeros"

    def bind(self, workload: Workload, runner: Runner, *, seed: int = 0) -> Behaviour:
        def fn(xs: Sequence[np.ndarray]) -> Outputs:
            return [np.zeros(workload.output_shape(x), np.float32) for x in xs]

        return Behaviour(fn, self.name)


@dataclasses.dataclass(frozen=True)
class Constant(Cheat):
    name: ClassVar[str] = "constant"
    value: float = 0.5

    def bind(self, workload: Workload, runner: Runner, *, seed: int = 0) -> Behaviour:
        def fn(xs: Sequence[np.ndarray]) -> Outputs:
            out = [np.full(workload.output_shape(x), self.value, np.float32) for x in xs]
            if _is_lm(workload):
                for o in out:
                    o[:, 0] = ord("e")  # a valid token id, so only the values are wrong
            return out

        return Behaviour(fn, self.name)


@dataclasses.dataclass(frozen=True)
class RandomOutput(Cheat):
    name: ClassVar[str] = "random"

    def bind(self, workload: Workload, runner: Runner, *, seed: int = 0) -> Behaviour:
        rng = np.random.default_rng([seed, 0x72616E64])

        def fn(xs: Sequence[np.ndarray]) -> Outputs:
            out = [rng.standard_normal(workload.output_shape(x)).astype(np.float32) for x in xs]
            if _is_lm(workload):
                for o in out:
                    o[:, 0] = rng.integers(0, 256, size=o.shape[0])
                    o[:, 1:] *= workload.logit_scale  # type: ignore[attr-defined]
            return out

        return Behaviour(fn, self.name)


@dataclasses.dataclass(frozen=True)
class Replay(Cheat):
    name: ClassVar[str] = "replay"
    saves: str = "all compute but the first job"

    def bind(self, workload: Workload, runner: Runner, *, seed: int = 0) -> Behaviour:
        last: list[np.ndarray] = []

        def fn(xs: Sequence[np.ndarray]) -> Outputs:
            out = []
            for x in xs:
                if not last:
                    last.append(workload.run(runner, [x])[0])
                out.append(last[0].copy())
            return out

        return Behaviour(fn, self.name)


@dataclasses.dataclass(frozen=True)
class WrongInput(Cheat):
    name: ClassVar[str] = "wrong_input"
    saves: str = "all compute after the first batch"
    pool: int = 8

    def bind(self, workload: Workload, runner: Runner, *, seed: int = 0) -> Behaviour:
        cache: list[np.ndarray] = []
        counter = [0]

        def fn(xs: Sequence[np.ndarray]) -> Outputs:
            if not cache:
                cache.extend(workload.run(runner, workload.inputs(seed + 0x5EED, self.pool)))
            out = []
            for _ in xs:
                out.append(cache[counter[0] % len(cache)].copy())
                counter[0] += 1
            return out

        return Behaviour(fn, self.name)


# ---- model-level cheats ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _ModelCheat(Cheat):
    """A cheaper runner, built once at bind time, run like the honest one."""

    def cheap_runner(self, workload: Workload, runner: Runner, seed: int) -> Runner:
        raise NotImplementedError

    def bind(self, workload: Workload, runner: Runner, *, seed: int = 0) -> Behaviour:
        cheap = self.cheap_runner(workload, runner, seed)

        def fn(xs: Sequence[np.ndarray]) -> Outputs:
            return [np.asarray(o, np.float32) for o in workload.run(cheap, xs)]

        return Behaviour(fn, self.name)


@dataclasses.dataclass(frozen=True)
class SmallerModel(_ModelCheat):
    name: ClassVar[str] = "smaller_model"

    def cheap_runner(self, workload: Workload, runner: Runner, seed: int) -> Runner:
        return runner.replace(module=workload.smaller(runner.module).eval())


@dataclasses.dataclass(frozen=True)
class SkipLayer(_ModelCheat):
    name: ClassVar[str] = "skip_layer"

    def cheap_runner(self, workload: Workload, runner: Runner, seed: int) -> Runner:
        return runner.replace(module=workload.skip_layer(runner.module).eval())


@dataclasses.dataclass(frozen=True)
class FP16(_ModelCheat):
    name: ClassVar[str] = "fp16"
    saves: str = "~50% (half-precision weights and arithmetic; more on fp16 hardware)"

    def cheap_runner(self, workload: Workload, runner: Runner, seed: int) -> Runner:
        return runner.replace(module=runner.cloned_module().half(), dtype=torch.float16)


@dataclasses.dataclass(frozen=True)
class BF16(_ModelCheat):
    name: ClassVar[str] = "bf16"
    saves: str = "~50% (bfloat16 weights and arithmetic; more on bf16 hardware)"

    def cheap_runner(self, workload: Workload, runner: Runner, seed: int) -> Runner:
        return runner.replace(module=runner.cloned_module().bfloat16(), dtype=torch.bfloat16)


@dataclasses.dataclass(frozen=True)
class Int8Dynamic(_ModelCheat):
    name: ClassVar[str] = "int8"

    def cheap_runner(self, workload: Workload, runner: Runner, seed: int) -> Runner:
        from torch.ao.quantization import quantize_dynamic

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao.quantization is deprecated in 2.13
            q = quantize_dynamic(runner.cloned_module(), {nn.Linear}, dtype=torch.qint8)
        return runner.replace(module=q.eval())


@dataclasses.dataclass(frozen=True)
class Noise(_ModelCheat):
    """Every float weight multiplied by ``1 + rel * N(0, 1)`` (seeded)."""

    rel: float = 1e-3
    saves: str = "nothing by itself (stands for lossy weight compression)"

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"noise_{self.rel:.0e}".replace("e-0", "e-")

    def cheap_runner(self, workload: Workload, runner: Runner, seed: int) -> Runner:
        m = runner.cloned_module()
        g = seeded_generator(seed + 0x401 + int(round(-np.log10(self.rel))))
        with torch.no_grad():
            for p in m.parameters():
                if p.is_floating_point():
                    p.mul_(1.0 + self.rel * torch.randn(p.shape, generator=g, dtype=p.dtype))
        return runner.replace(module=m)


# ---- language-model cheats ------------------------------------------------------------


def _is_lm(workload: Workload) -> bool:
    from .lm import LMWorkload

    return isinstance(workload, LMWorkload)


@dataclasses.dataclass(frozen=True)
class Truncated(Cheat):
    name: ClassVar[str] = "truncated"
    saves: str = "~50% (half the tokens generated)"
    keep: float = 0.5

    def bind(self, workload: Workload, runner: Runner, *, seed: int = 0) -> Behaviour:
        lm: LMWorkload = workload  # type: ignore[assignment]
        k = max(1, int(lm.n_new * self.keep))

        def fn(xs: Sequence[np.ndarray]) -> Outputs:
            out = []
            for part in lm._generate(runner, xs, k):
                pad = np.repeat(part[-1:], lm.n_new - k, axis=0)
                out.append(np.concatenate([part, pad]))
            return out

        return Behaviour(fn, self.name)


@dataclasses.dataclass(frozen=True)
class Sampling(Cheat):
    name: ClassVar[str] = "sampling"
    saves: str = "nothing (wrong decoding rule: sampled, not greedy)"

    def bind(self, workload: Workload, runner: Runner, *, seed: int = 0) -> Behaviour:
        lm: LMWorkload = workload  # type: ignore[assignment]
        gen = seeded_generator(seed + 0x5A)

        def fn(xs: Sequence[np.ndarray]) -> Outputs:
            return lm._generate(runner, xs, lm.n_new, sampler=gen)

        return Behaviour(fn, self.name)


def catalogue(workload: Workload) -> dict[str, Cheat]:
    """Every cheat that applies to ``workload``, by name."""
    cheats: list[Any] = [
        Zeros(),
        Constant(),
        RandomOutput(),
        Replay(),
        WrongInput(),
        SmallerModel(saves=workload.smaller_saves),
        FP16(),
        BF16(),
        Int8Dynamic(saves=workload.int8_saves),
        SkipLayer(saves=workload.skip_layer_saves),
        Noise(rel=1e-2),
        Noise(rel=1e-3),
    ]
    if _is_lm(workload):
        cheats += [Truncated(), Sampling()]
    return {c.name: c for c in cheats}


