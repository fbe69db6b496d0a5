"""Generation vs teacher-forced prefill verification of the tiny LM (CPU).

Greedy generation of N tokens takes N sequential steps (KV cache); verifying the same N
tokens takes one forward pass over prompt + tokens. Target: verify <= 1/10 of generate.

    python benchmarks/bench_prefill.py [--tokens 64] [--repeats 5] [--threads 1] [--json OUT]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time

import torch

from workloads.lm import LMWorkload, unpack_output, verify_by_prefill


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--json")
    args = ap.parse_args(argv)

    w = dataclasses.replace(LMWorkload(), n_new=args.tokens)
    runner = w.build(args.threads, batched=False)
    prompt = w.inputs(args.seed, 1)[0]
    gen_s, ver_s = [], []
    verdict = None
    for _ in range(args.repeats + 1):  # the first round warms up
        t0 = time.perf_counter()
        (out,) = w.run(runner, [prompt])
        t1 = time.perf_counter()
        u = unpack_output(out)
        assert u is not None
        verdict = verify_by_prefill(runner, prompt, u[0], u[1], tolerance=w.tolerance)
        t2 = time.perf_counter()
        gen_s.append(t1 - t0)
        ver_s.append(t2 - t1)
    gen, ver = statistics.median(gen_s[1:]), statistics.median(ver_s[1:])
    result = {
        "tokens": args.tokens,
        "prompt_len": w.prompt_len,
        "threads": args.threads,
        "torch": torch.__version__,
        "generate_ms": gen * 1e3,
        "verify_ms": ver * 1e3,
        "ratio_verify_over_generate": ver / gen,
        "target": 0.1,
        "meets_target": ver / gen <= 0.1,
        "verdict": verdict.to_dict() if verdict else None,
    }
    print(f"generate {args.tokens} tokens: {gen * 1e3:.2f} ms   verify by prefill: "
          f"{ver * 1e3:.2f} ms   ratio {ver / gen:.3f} (target <= 0.1)   verdict "
          f"{verdict.kind.value if verdict else '-'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
