"""The workload unit: a picklable description of a model a node can build and run.

A :class:`Workload` is a frozen, module-level value (so it pickles into a Ray actor). It
holds no weights: :meth:`Workload.build` creates the model *on the node*, once, from a
fixed ``torch.Generator`` seed, and returns a :class:`Runner`. Everything else a protocol
needs hangs off the same object:

* ``inputs(seed, n)``      seeded job inputs (numpy arrays; the wire format);
* ``run(runner, inputs)``  outputs, float32 numpy arrays, one per job (batched: one torch
  batch; per-job: one forward each);
* ``comparator``           the numeric comparator with a conservative default tolerance;
* ``verify(runner, input, claimed)`` how a validator checks a claimed output (re-run and
  compare; the language model scores the claim by teacher-forced prefill instead);
* ``cheats``               the cheap substitutes a dishonest node would use
  (:mod:`workloads.cheats`);
* ``profile(threads, batched)`` what decides the float results.

Tensors become numpy at this edge and nowhere else. Outputs are float32. A bfloat16 output
would travel losslessly as its bits: ``posp.encoding.bf16_array(t.view(torch.uint16).numpy())``
(the comparators widen those bits exactly to float32); the shipped workloads compute and
return float32, so they do not need that route.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from posp.compare import Comparator, Verdict

if TYPE_CHECKING:
    from .cheats import Cheat

__all__ = ["Runner", "Workload", "seeded_generator", "to_numpy"]


def seeded_generator(seed: int) -> torch.Generator:
    g = torch.Generator(device="cpu")
    g.manual_seed(int(seed))
    return g


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A float32 (or integer) numpy copy of a tensor, detached, on the CPU."""
    t = t.detach().cpu()
    if t.is_floating_point():
        t = t.to(torch.float32)
    return t.numpy().copy()


@dataclasses.dataclass
class Runner:
    """A built model on a node: the torch module plus the settings it runs with.

    ``dtype`` is the torch dtype the module computes in (float32 for honest nodes; a cheat
    may build a float16 runner). Not picklable on purpose: it lives where it was built.
    """

    module: nn.Module
    threads: int
    batched: bool
    dtype: torch.dtype = torch.float32

    def replace(self, **changes: Any) -> Runner:
        return dataclasses.replace(self, **changes)

    def cloned_module(self) -> nn.Module:
        return copy.deepcopy(self.module)

    def enter(self) -> None:
        """Apply this runner's thread count (torch's setting is per process)."""
        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)


class Workload:
    """Base of the shipped workloads. Subclasses are frozen dataclasses.

    Subclasses implement ``name``, ``seed``, ``_make_module``, ``inputs``, ``_forward``
    (a batch tensor in, a batch tensor out), ``output_shape`` and ``comparator``; the LM
    overrides ``run`` and ``verify``.
    """

    name: str
    seed: int
    tolerance_floor: float = 0.0

    # ---- building ---------------------------------------------------------------------

    def _make_module(self) -> nn.Module:
        raise NotImplementedError

    def build(self, threads: int = 1, *, batched: bool = True) -> Runner:
        """Build the model (deterministically from ``self.seed``) and set the thread count.

        The node calls this once; weights never travel with jobs.
        """
        if threads < 1:
            from posp.errors import ConfigError

            raise ConfigError(f"must be >= 1, got {threads}", key="threads")
        torch.set_num_threads(threads)
        with torch.no_grad():
            module = self._make_module().eval()
        for p in module.parameters():
            p.requires_grad_(False)
        return Runner(module=module, threads=threads, batched=batched)

    # ---- inputs and outputs -----------------------------------------------------------

    def inputs(self, seed: int, n: int) -> list[np.ndarray]:
        raise NotImplementedError

    def output_shape(self, x: np.ndarray) -> tuple[int, ...]:
        """Shape of the output for input ``x`` (cheats that skip compute need it)."""
        raise NotImplementedError

    def _forward(self, runner: Runner, batch: torch.Tensor) -> torch.Tensor:
        return runner.module(batch)

    def _to_batch(self, xs: Sequence[np.ndarray], dtype: torch.dtype) -> torch.Tensor:
        return torch.from_numpy(np.stack([np.asarray(x) for x in xs])).to(dtype)

    def run(self, runner: Runner, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Outputs for ``inputs``: one torch batch if ``runner.batched``, else one forward each."""
        if not inputs:
            return []
        runner.enter()
        groups = [list(inputs)] if runner.batched else [[x] for x in inputs]
        out: list[np.ndarray] = []
        with torch.inference_mode():
            for group in groups:
                y = self._forward(runner, self._to_batch(group, runner.dtype))
                arr = to_numpy(y)
                out.extend(arr[i] for i in range(len(group)))
        return out

    # ---- judging ----------------------------------------------------------------------

    @property
    def comparator(self) -> Comparator:
        raise NotImplementedError

    def verify(self, runner: Runner, x: np.ndarray, claimed: Any) -> Verdict:
        """A validator's check of one claimed output: re-run and compare."""
        (mine,) = self.run(runner, [x])
        return self.comparator.compare(claimed, mine)

    @property
    def judge_metric(self) -> str:
        """The metric :meth:`judge` measures in (calibration files record it)."""
        return self.comparator.metric

    def judge(self, runner: Runner, x: np.ndarray, claimed: Any, reference: Any) -> Verdict:
        """The dispute check of ``claimed`` against an honest ``reference`` computed by
        ``runner``'s profile for the same input ``x``: the workload's comparator here; the
        LM scores the claim by prefill (``reference`` unused). Calibration and soundness
        measure honest drift and cheat distance with this one metric."""
        return self.comparator.compare(claimed, reference)

    # ---- cheats -----------------------------------------------------------------------

    @property
    def cheats(self) -> dict[str, Cheat]:
        from .cheats import catalogue

        return catalogue(self)

    def skip_layer(self, module: nn.Module) -> nn.Module:
        """A copy of ``module`` with one layer skipped (see the subclass for which)."""
        raise NotImplementedError

    def smaller(self, module: nn.Module) -> nn.Module:
        """A cheaper stand-in for ``module`` (see the subclass for what is cut)."""
        raise NotImplementedError

    #: compute saved by the workload-specific cheats, for the catalogue
    skip_layer_saves: str = ""
    smaller_saves: str = ""
    int8_saves: str = ""

    # ---- profile ----------------------------------------------------------------------

    def profile(self, threads: int, batched: bool, *, dtype: str = "float32") -> dict[str, Any]:
        """What decides this workload's float results on this process."""
        return {
            "workload": self.name,
            "torch": torch.__version__,
            "threads": int(threads),
            "dtype": dtype,
            "device": "cpu",
            "batched": bool(batched),
            "deterministic": bool(torch.are_deterministic_algorithms_enabled()),
        }

    def execution_profile(self, threads: int, batched: bool) -> Any:
        """The signed-receipt form of :meth:`profile` (``posp.receipts.ExecutionProfile``)."""
        from posp.receipts import capture_profile

        return capture_profile(
            threads=threads,
            batched=batched,
            device="cpu",
            dtype="float32",
            deterministic=bool(torch.are_deterministic_algorithms_enabled()),
        )


def kaiming_linear(lin: nn.Linear, g: torch.Generator, *, gain: float = 2.0) -> None:
    """Seeded init: weights N(0, gain / fan_in), biases N(0, 0.01)."""
    fan_in = lin.weight.shape[1]
    lin.weight.copy_(torch.randn(lin.weight.shape, generator=g) * (gain / fan_in) ** 0.5)
    if lin.bias is not None:
        lin.bias.copy_(torch.randn(lin.bias.shape, generator=g) * 0.01)


def kaiming_conv(conv: nn.Conv2d, g: torch.Generator, *, gain: float = 2.0) -> None:
    w = conv.weight
    fan_in = w.shape[1] * w.shape[2] * w.shape[3]
    w.copy_(torch.randn(w.shape, generator=g) * (gain / fan_in) ** 0.5)
    if conv.bias is not None:
        conv.bias.copy_(torch.randn(conv.bias.shape, generator=g) * 0.01)
