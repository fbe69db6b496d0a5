"""Signing micro-benchmark: raw PyNaCl Ed25519 against posp's per-job cost.

posp signs one Merkle root per batch and gives each job an inclusion proof, so the
coordinator's per-job cost is a proof check, not a signature verification. This measures:

- raw PyNaCl sign / verify per second (32-byte messages),
- ``sign_batch`` over a batch of receipts (one signature + tree + proofs), per job,
- ``verify_receipt`` per job with the batch-signature cache (the coordinator's path),
- ``verify_receipt`` per job without the cache (one Ed25519 verify per job),
- ``verify_batch`` (the root recomputed from the full batch), per job,
- the end-to-end sign_batch + verify_receipt (cached) path in jobs/s.

    .venv/bin/python benchmarks/bench_signing.py [--batch 256] [--seconds 1] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from typing import Any

import nacl.signing  # benchmarks compare against the raw library on purpose

from posp.identity import NodeKey
from posp.receipts import (
    BatchCommitment,
    Receipt,
    capture_profile,
    sign_batch,
    verify_batch,
    verify_receipt,
)


def rate(fn: Callable[[], Any], *, per_call: int = 1, seconds: float = 1.0) -> float:
    """Operations per second: calls of ``fn`` (each ``per_call`` operations), best of 3."""
    fn()  # warm up
    best = 0.0
    for _ in range(3):
        n = 0
        start = time.perf_counter()
        deadline = start + seconds / 3
        while True:
            fn()
            n += 1
            now = time.perf_counter()
            if now >= deadline:
                break
        best = max(best, n * per_call / (now - start))
    return best


def make_receipts(key: NodeKey, n: int, profile_digest: bytes, start: int) -> list[Receipt]:
    node = bytes(key.public)
    return [
        Receipt(
            job_id=(start + i).to_bytes(16, "big"),
            node=node,
            input_digest=(start + i).to_bytes(32, "big"),
            output_digest=(start + i + 1).to_bytes(32, "big"),
            profile_digest=profile_digest,
            seq=start + i,
        )
        for i in range(n)
    ]


def run(batch_size: int, seconds: float) -> dict[str, Any]:
    msg = bytes(range(32))
    sk = nacl.signing.SigningKey(bytes(32))
    vk = sk.verify_key
    sig = sk.sign(msg).signature
    raw_sign = rate(lambda: sk.sign(msg), seconds=seconds)
    raw_verify = rate(lambda: vk.verify(msg, sig), seconds=seconds)

    key = NodeKey.from_seed(bytes(range(32)))
    pd = capture_profile(threads=1, batched=True).digest()
    receipts = make_receipts(key, batch_size, pd, 0)
    posp_sign = rate(lambda: key.sign(msg), seconds=seconds)
    psig = key.sign(msg)
    posp_verify = rate(lambda: key.public.verify(msg, psig), seconds=seconds)

    sign_jobs = rate(lambda: sign_batch(key, receipts, batch_seq=0), per_call=batch_size,
                     seconds=seconds)
    batch, signed = sign_batch(key, receipts, batch_seq=0)

    def verify_all_cached() -> None:
        cache: dict[BatchCommitment, bytes] = {}
        for s in signed:
            verify_receipt(s, expected_profile_digest=pd, verified_batches=cache)

    def verify_all_uncached() -> None:
        for s in signed:
            verify_receipt(s, expected_profile_digest=pd)

    verify_cached = rate(verify_all_cached, per_call=batch_size, seconds=seconds)
    verify_uncached = rate(verify_all_uncached, per_call=batch_size, seconds=seconds)
    verify_full = rate(lambda: verify_batch(batch, receipts, expected_profile_digest=pd),
                       per_call=batch_size, seconds=seconds)

    def end_to_end() -> None:
        _, signed_now = sign_batch(key, receipts, batch_seq=1)
        cache: dict[BatchCommitment, bytes] = {}
        for s in signed_now:
            verify_receipt(s, expected_profile_digest=pd, verified_batches=cache)

    e2e = rate(end_to_end, per_call=batch_size, seconds=seconds)

    return {
        "batch_size": batch_size,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "raw_pynacl_sign_per_s": raw_sign,
        "raw_pynacl_verify_per_s": raw_verify,
        "posp_nodekey_sign_per_s": posp_sign,
        "posp_publickey_verify_per_s": posp_verify,
        "sign_batch_jobs_per_s": sign_jobs,
        "verify_receipt_cached_jobs_per_s": verify_cached,
        "verify_receipt_uncached_jobs_per_s": verify_uncached,
        "verify_batch_jobs_per_s": verify_full,
        "sign_batch_plus_verify_jobs_per_s": e2e,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256, help="receipts per batch")
    parser.add_argument("--seconds", type=float, default=1.0, help="time per measurement")
    parser.add_argument("--json", metavar="OUT", help="also write the figures to OUT")
    args = parser.parse_args(argv)
    result = run(args.batch, args.seconds)
    width = max(len(k) for k in result)
    for k, v in result.items():
        shown = f"{v:>12,.0f}" if isinstance(v, float) else f"{v!s:>12}"
        print(f"{k:<{width}}  {shown}")
    speedup = result["verify_receipt_cached_jobs_per_s"] / result["raw_pynacl_verify_per_s"]
    print(f"per-job verification vs one Ed25519 verify per job: {speedup:.1f}x")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
            fh.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
