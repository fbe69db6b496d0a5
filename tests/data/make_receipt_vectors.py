"""Regenerate tests/data/receipt_vectors.json (known-answer vectors for posp.receipts).

    .venv/bin/python tests/data/make_receipt_vectors.py            # rewrite the file
    .venv/bin/python tests/data/make_receipt_vectors.py --check    # exit 1 if it differs

Ed25519 signing is deterministic, so a fixed seed and fixed receipts give fixed bytes.
A change in these vectors is a change to the wire format or to what nodes sign: bump the
record VERSION, do not just regenerate.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from posp.receipts import ExecutionProfile, Receipt, sign_batch

HERE = Path(__file__).resolve().parent
OUT = HERE / "receipt_vectors.json"

SEED = bytes(range(32))
BATCH_SEQ = 7
COUNT = 5  # not a power of two: exercises the tree's odd levels


def fixed_profile() -> ExecutionProfile:
    return ExecutionProfile(
        libraries=(("numpy", "2.0.0"), ("torch", "2.4.0")),
        device="cpu",
        dtype="float32",
        threads=2,
        batched=True,
        deterministic=False,
        platform="Linux-x86_64-py3.11",
    )


def fixed_receipts(node: bytes, profile_digest: bytes) -> list[Receipt]:
    return [
        Receipt(
            job_id=bytes([i]) * 16,
            node=node,
            input_digest=bytes([0x10 + i]) * 32,
            output_digest=bytes([0x20 + i]) * 32,
            profile_digest=profile_digest,
            seq=100 + i,
        )
        for i in range(COUNT)
    ]


def build_vectors() -> dict[str, Any]:
    from posp.identity import NodeKey

    key = NodeKey.from_seed(SEED)
    node = bytes(key.public)
    profile = fixed_profile()
    receipts = fixed_receipts(node, profile.digest())
    batch, signed = sign_batch(key, receipts, batch_seq=BATCH_SEQ)
    return {
        "comment": "posp.receipts known-answer vectors; regenerate with make_receipt_vectors.py",
        "seed": SEED.hex(),
        "public_key": node.hex(),
        "profile": {
            "encoded": profile.encode().hex(),
            "digest": profile.digest().hex(),
            "label": profile.label,
        },
        "receipts": [
            {"encoded": r.encode().hex(), "leaf": r.digest().hex()} for r in receipts
        ],
        "batch": {
            "batch_seq": BATCH_SEQ,
            "count": COUNT,
            "root": batch.root.hex(),
            "commitment": batch.commitment.hex(),
            "signature": batch.signature.hex(),
            "encoded": batch.encode().hex(),
        },
        "signed_receipts": [
            {"index": s.index, "proof": [p.hex() for p in s.proof], "encoded": s.encode().hex()}
            for s in signed
        ],
    }


def render() -> str:
    return json.dumps(build_vectors(), indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        same = OUT.exists() and OUT.read_text() == text
        print("up to date" if same else f"{OUT} differs from the generated vectors")
        return 0 if same else 1
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
