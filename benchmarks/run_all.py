"""`make bench`: every benchmark, one after the other, figures to out/bench/*.json.

Run by hand (the machine is shared and noisy; benchmarks are never unit tests):

    .venv/bin/python benchmarks/run_all.py [--only digest,ledger,...] [--quick]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "out" / "bench"

BENCHES: dict[str, tuple[list[str], list[str]]] = {
    # name: (full args, quick args); --json is appended
    "digest": (["bench_digest.py"], ["bench_digest.py", "--repeat", "3"]),
    "signing": (["bench_signing.py"], ["bench_signing.py", "--seconds", "0.3"]),
    "ledger": (["bench_ledger.py"], ["bench_ledger.py", "--settlements", "10000"]),
    "prefill": (["bench_prefill.py"], ["bench_prefill.py", "--repeats", "2"]),
    "sim": (["bench_sim.py", "--repeat", "3"], ["bench_sim.py"]),
    "coordinator": (["bench_coordinator.py"], ["bench_coordinator.py", "--jobs", "1280"]),
    "cluster": (["bench_cluster.py", "--plot", str(HERE.parent / "docs" / "bench_cluster.png")],
                ["bench_cluster.py", "--batches", "20", "--repeats", "1"]),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=",".join(BENCHES), help="comma-separated subset")
    ap.add_argument("--quick", action="store_true", help="smaller runs (a smoke check)")
    args = ap.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    failed = []
    for name in args.only.split(","):
        if name not in BENCHES:
            print(f"unknown benchmark {name!r}; choose from {', '.join(BENCHES)}", file=sys.stderr)
            return 2
        full, quick = BENCHES[name]
        cmd = [sys.executable, str(HERE / (quick if args.quick else full)[0]),
               *(quick if args.quick else full)[1:]]
        cmd += ["--json", str(OUT / f"{name}.json")]
        print(f"\n=== {name}: {' '.join(cmd[1:])}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call(cmd)
        print(f"=== {name}: exit {rc} in {time.perf_counter() - t0:.0f} s", flush=True)
        if rc:
            failed.append(name)
    print(f"\nfigures in {OUT}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
