"""Workload 3: a tiny decoder-only transformer language model with greedy generation.

Four pre-LayerNorm blocks of width 128 (4 heads, MLP 512), learned positions, a byte
vocabulary of 256, seeded weights. A job is a prompt (uint8 bytes, fixed length); its
output is ``n_new`` greedily generated tokens *and* the logits each was chosen from,
packed as one float32 array of shape ``(n_new, 1 + 256)``: column 0 the token id (exact in
float32), columns 1.. the logits (:func:`pack_output` / :func:`unpack_output`).

Verification is by teacher-forced prefill (:func:`verify_by_prefill`): one forward pass
over prompt + claimed tokens gives the model's logits at every claimed position. The claim
is accepted when each claimed token is the argmax *within a logit-gap tolerance* (a near
tie between two tokens is not a cheat) and the claimed logits agree with the re-computed
ones. Both measurements are in logit units, so the verdict's distance is
``max(largest argmax gap, largest |logit difference|)``. Generating costs ``n_new``
sequential steps; verifying costs one batched pass (see ``benchmarks/bench_prefill.py``).

:class:`LMComparator` compares two *generated* outputs (what blind re-execution gives):
tokens must agree, logits within tolerance; when the two diverge at a near tie, the rest
cannot be compared without the model, so the verdict is DRIFT and a dispute should settle
each claim with :func:`verify_by_prefill`.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from posp.compare import Verdict, VerdictKind, as_numeric, bitwise_equal

from .base import Runner, Workload, kaiming_linear, seeded_generator, to_numpy

__all__ = [
    "LMComparator",
    "LMWorkload",
    "TinyLM",
    "pack_output",
    "unpack_output",
    "verify_by_prefill",
]

VOCAB = 256
INF = math.inf

Cache = list[tuple[torch.Tensor, torch.Tensor]]


class Block(nn.Module):
    def __init__(self, d: int, heads: int, d_ff: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.fc = nn.Linear(d, d_ff)
        self.out = nn.Linear(d_ff, d)

    def forward(
        self, x: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        b, t, d = x.shape
        h = self.heads
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        q = q.view(b, t, h, d // h).transpose(1, 2)
        k = k.view(b, t, h, d // h).transpose(1, 2)
        v = v.view(b, t, h, d // h).transpose(1, 2)
        if past is not None:
            k = torch.cat([past[0], k], dim=2)
            v = torch.cat([past[1], v], dim=2)
        if past is None:
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        elif t == 1:
            a = F.scaled_dot_product_attention(q, k, v)
        else:  # a chunk after a cache: causal within the chunk, full view of the past
            s = k.shape[2]
            mask = torch.ones(t, s, dtype=torch.bool).tril(diagonal=s - t)
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, d))
        x = x + self.out(F.gelu(self.fc(self.ln2(x))))
        return x, (k, v)


class SkippedBlock(nn.Module):
    """A block that is not computed (the residual passes through; no cache is kept)."""

    def forward(
        self, x: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        empty = x.new_zeros(0)
        return x, (empty, empty)


class TinyLM(nn.Module):
    def __init__(self, *, d: int = 128, layers: int = 4, heads: int = 4, d_ff: int = 512,
                 max_len: int = 512) -> None:
        super().__init__()
        self.max_len = max_len
        self.tok = nn.Embedding(VOCAB, d)
        self.pos = nn.Embedding(max_len, d)
        self.blocks = nn.ModuleList(Block(d, heads, d_ff) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, VOCAB, bias=False)

    def forward(
        self, tokens: torch.Tensor, cache: Cache | None = None, start: int = 0
    ) -> tuple[torch.Tensor, Cache]:
        t = tokens.shape[1]
        pos = torch.arange(start, start + t)
        x = self.tok(tokens) + self.pos(pos)[None]
        new: Cache = []
        for i, block in enumerate(self.blocks):
            x, kv = block(x, cache[i] if cache is not None else None)
            new.append(kv)
        return self.head(self.ln_f(x)), new


def pack_output(tokens: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """``(n,)`` token ids and ``(n, V)`` logits -> one float32 ``(n, 1 + V)`` array."""
    out = np.empty((tokens.shape[0], 1 + logits.shape[-1]), dtype=np.float32)
    out[:, 0] = tokens
    out[:, 1:] = logits
    return out


def unpack_output(output: Any, *, n_new: int | None = None) -> tuple[np.ndarray, np.ndarray] | None:
    """``(tokens int64, logits float32)`` of a packed output, or None if it is malformed
    (wrong shape or dtype, a token that is not an integer in ``[0, 256)``)."""
    arr = as_numeric(output)
    if arr is None or arr.dtype != np.float32 or arr.ndim != 2 or arr.shape[1] != 1 + VOCAB:
        return None
    if n_new is not None and arr.shape[0] != n_new:
        return None
    col = arr[:, 0]
    if not np.all(np.isfinite(col)) or np.any(col != np.round(col)):
        return None
    if np.any(col < 0) or np.any(col >= VOCAB):
        return None
    return col.astype(np.int64), arr[:, 1:]


# ---- generation and verification ----------------------------------------------------


def _sample_or_argmax(logits: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
    if gen is None:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float(), dim=-1)
    return torch.multinomial(probs, 1, generator=gen)[:, 0]


@torch.inference_mode()
def generate_batch(
    module: nn.Module,
    prompts: torch.Tensor,
    n_new: int,
    *,
    sampler: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy (or, with ``sampler``, sampled) generation with a KV cache.

    Returns ``tokens (B, n_new)`` and float32 ``logits (B, n_new, V)``: the logits row i is
    the distribution token i was chosen from.
    """
    b, p = prompts.shape
    logits, cache = module(prompts)
    last = logits[:, -1]
    toks, rows = [], []
    for i in range(n_new):
        tok = _sample_or_argmax(last, sampler)
        toks.append(tok)
        rows.append(last.float())
        if i < n_new - 1:
            logits, cache = module(tok[:, None], cache, start=p + i)
            last = logits[:, -1]
    return torch.stack(toks, dim=1), torch.stack(rows, dim=1)


@torch.inference_mode()
def prefill_logits(module: nn.Module, prompt: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """Teacher-forced logits at each claimed position: one forward over prompt + tokens."""
    seq = np.concatenate([np.asarray(prompt, dtype=np.int64), np.asarray(tokens, np.int64)])
    x = torch.from_numpy(seq[:-1])[None]
    logits, _ = module(x)
    p = len(prompt)
    return to_numpy(logits[0, p - 1 :])


def verify_by_prefill(
    runner: Runner,
    prompt: np.ndarray,
    claimed_tokens: Any,
    claimed_logits: Any = None,
    *,
    tolerance: float,
    n_new: int | None = None,
) -> Verdict:
    """Score a claimed generation in one forward pass.

    Distance (logit units) = max over positions of the reference argmax gap of the claimed
    token (``max_j ref[j] - ref[token]``; 0 for the argmax, small for a near tie) and, if
    ``claimed_logits`` is given, of ``|claimed - ref|``. DRIFT within ``tolerance``.
    A malformed claim (wrong length, token out of range, non-finite logit) is MISMATCH, inf.
    """
    metric = "lm_prefill"

    def verdict(kind: VerdictKind, d: float) -> Verdict:
        return Verdict(kind, d, metric, tolerance)

    toks = np.asarray(claimed_tokens) if isinstance(claimed_tokens, np.ndarray) else None
    if toks is None or toks.ndim != 1 or toks.dtype.kind not in "iu" or toks.size == 0:
        return verdict(VerdictKind.MISMATCH, INF)
    if (n_new is not None and toks.shape[0] != n_new) or toks.min() < 0 or toks.max() >= VOCAB:
        return verdict(VerdictKind.MISMATCH, INF)
    if len(prompt) + len(toks) - 1 > runner.module.max_len:  # type: ignore[operator]
        return verdict(VerdictKind.MISMATCH, INF)
    runner.enter()
    ref = prefill_logits(runner.module, prompt, toks).astype(np.float64)
    gap = float(np.max(ref.max(axis=-1) - ref[np.arange(len(toks)), toks]))
    dev = 0.0
    if claimed_logits is not None:
        cl = as_numeric(claimed_logits)
        if cl is None or cl.shape != ref.shape or not np.all(np.isfinite(cl)):
            return verdict(VerdictKind.MISMATCH, INF)
        dev = float(np.max(np.abs(cl.astype(np.float64) - ref)))
    d = max(gap, dev)
    if math.isnan(d):
        return verdict(VerdictKind.MISMATCH, INF)
    return verdict(VerdictKind.DRIFT if d <= tolerance else VerdictKind.MISMATCH, d)


@dataclasses.dataclass(frozen=True, slots=True)
class LMComparator:
    """Two generated outputs: token agreement plus max |logit difference| (logit units).

    Up to the first token where the two diverge, distance = max |logit difference|. At a
    divergence, the gap between the two tokens in each side's own logits is measured: a
    near tie (gap <= tolerance) is DRIFT (the rest is conditioned on different tokens and
    is not compared: settle with :func:`verify_by_prefill`); a real gap is MISMATCH.
    """

    tol: float = 1e-3
    n_new: int | None = None

    @property
    def metric(self) -> str:
        return "lm_logit"

    @property
    def tolerance(self) -> float:
        return self.tol

    def with_tolerance(self, tolerance: float) -> LMComparator:
        return dataclasses.replace(self, tol=float(tolerance))

    def compare(self, a: Any, b: Any) -> Verdict:
        ua, ub = unpack_output(a, n_new=self.n_new), unpack_output(b, n_new=self.n_new)
        if ua is None or ub is None or ua[1].shape != ub[1].shape:
            return Verdict(VerdictKind.MISMATCH, INF, self.metric, self.tol)
        (ta, la), (tb, lb) = ua, ub
        if bitwise_equal(np.asarray(a), np.asarray(b)):
            return Verdict(VerdictKind.MATCH, 0.0, self.metric, self.tol)
        diverge = np.nonzero(ta != tb)[0]
        end = int(diverge[0]) + 1 if diverge.size else len(ta)
        la64, lb64 = la[:end].astype(np.float64), lb[:end].astype(np.float64)
        if not (np.all(np.isfinite(la64)) and np.all(np.isfinite(lb64))):
            return Verdict(VerdictKind.MISMATCH, INF, self.metric, self.tol)
        d = float(np.max(np.abs(la64 - lb64)))
        if diverge.size:
            i = int(diverge[0])
            gap_a = abs(la64[i, ta[i]] - la64[i, tb[i]])
            gap_b = abs(lb64[i, ta[i]] - lb64[i, tb[i]])
            # each side must have picked its own argmax: otherwise the gap is the argmax gap
            gap_a = max(gap_a, la64[i].max() - la64[i, ta[i]])
            gap_b = max(gap_b, lb64[i].max() - lb64[i, tb[i]])
            d = max(d, float(gap_a), float(gap_b))
        kind = VerdictKind.DRIFT if d <= self.tol else VerdictKind.MISMATCH
        return Verdict(kind, d, self.metric, self.tol)


@dataclasses.dataclass(frozen=True)
class LMWorkload(Workload):
    name: str = "lm"
    seed: int = 3
    prompt_len: int = 16
    n_new: int = 64
    layers: int = 4
    width: int = 128
    logit_scale: float = 3.0
    tolerance: float = 1e-3
    tolerance_floor: float = 1e-5

    def _make_module(self) -> nn.Module:
        g = seeded_generator(self.seed)
        m = TinyLM(d=self.width, layers=self.layers, heads=4, d_ff=4 * self.width,
                   max_len=max(512, self.prompt_len + self.n_new))
        with torch.no_grad():
            m.tok.weight.copy_(torch.randn(m.tok.weight.shape, generator=g))
            m.pos.weight.copy_(torch.randn(m.pos.weight.shape, generator=g) * 0.3)
            resid = 1.0 / (2 * self.layers)
            for blk in m.blocks:
                assert isinstance(blk, Block)
                kaiming_linear(blk.qkv, g, gain=1.0)
                kaiming_linear(blk.proj, g, gain=resid)
                kaiming_linear(blk.fc, g, gain=2.0)
                kaiming_linear(blk.out, g, gain=resid)
            # logits of std ~logit_scale: clear winners, few near ties
            m.head.weight.copy_(
                torch.randn(m.head.weight.shape, generator=g) * self.logit_scale / self.width**0.5
            )
        return m

    def inputs(self, seed: int, n: int) -> list[np.ndarray]:
        rng = np.random.default_rng([seed, 0x6C6D])
        x = rng.integers(32, 127, size=(n, self.prompt_len), dtype=np.uint8)  # printable
        return [x[i] for i in range(n)]

    def output_shape(self, x: np.ndarray) -> tuple[int, ...]:
        return (self.n_new, 1 + VOCAB)

    @property
    def comparator(self) -> LMComparator:
        return LMComparator(self.tolerance, self.n_new)

    def generate(self, runner: Runner, prompt: bytes | np.ndarray, n_new: int | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
        """Greedy generation for one prompt: ``(tokens (n,), logits (n, 256))``."""
        p = np.frombuffer(prompt, dtype=np.uint8) if isinstance(prompt, bytes) else prompt
        out = self._generate(runner, [np.asarray(p)], n_new or self.n_new)[0]
        unpacked = unpack_output(out)
        assert unpacked is not None
        return unpacked

    def _generate(self, runner: Runner, prompts: Sequence[np.ndarray], n_new: int, *,
                  sampler: torch.Generator | None = None) -> list[np.ndarray]:
        runner.enter()
        # a torch batch needs equal prompt lengths: group by length, keep job order
        if runner.batched:
            groups: dict[int, list[int]] = {}
            for i, p in enumerate(prompts):
                groups.setdefault(len(p), []).append(i)
            order = list(groups.values())
        else:
            order = [[i] for i in range(len(prompts))]
        out: list[np.ndarray | None] = [None] * len(prompts)
        for idx in order:
            x = torch.from_numpy(np.stack([np.asarray(prompts[i], np.int64) for i in idx]))
            toks, logits = generate_batch(runner.module, x, n_new, sampler=sampler)
            t, lg = toks.numpy(), to_numpy(logits)
            for j, i in enumerate(idx):
                out[i] = pack_output(t[j], lg[j])
        return [o for o in out if o is not None]

    def run(self, runner: Runner, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        if not inputs:
            return []
        return self._generate(runner, inputs, self.n_new)

    def verify(self, runner: Runner, x: np.ndarray, claimed: Any) -> Verdict:
        """Teacher-forced prefill verification of a claimed output (one forward pass)."""
        u = unpack_output(claimed, n_new=self.n_new)
        if u is None:
            return Verdict(VerdictKind.MISMATCH, INF, "lm_prefill", self.tolerance)
        return verify_by_prefill(runner, x, u[0], u[1], tolerance=self.tolerance,
                                 n_new=self.n_new)

    @property
    def judge_metric(self) -> str:
        return "lm_prefill"

    def judge(self, runner: Runner, x: np.ndarray, claimed: Any, reference: Any) -> Verdict:
        return self.verify(runner, x, claimed)

    # cheats ---------------------------------------------------------------------------
    # per token and layer: attention projections 4d^2, MLP 8d^2; head 2d*V (= 4d^2 here)

    skip_layer_saves: str = "~19% (one of four blocks skipped; the output head remains)"
    smaller_saves: str = "~32% (each block's MLP pruned to half its hidden units)"
    int8_saves: str = "~50-75% of matmul cost (int8 Linear layers; attention core stays fp32)"

    def skip_layer(self, module: nn.Module) -> nn.Module:
        m = copy.deepcopy(module)
        assert isinstance(m, TinyLM)
        m.blocks[len(m.blocks) // 2] = SkippedBlock()
        return m

    def smaller(self, module: nn.Module) -> nn.Module:
        m = copy.deepcopy(module)
        assert isinstance(m, TinyLM)
        with torch.no_grad():
            for blk in m.blocks:
                assert isinstance(blk, Block)
                norms = blk.fc.weight.norm(dim=1)
                drop = torch.argsort(norms)[: blk.fc.out_features // 2]
                blk.fc.weight[drop] = 0.0
                blk.fc.bias[drop] = 0.0
                blk.out.weight[:, drop] = 0.0
        return m
