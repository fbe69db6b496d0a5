"""The protocol core imports neither Ray nor torch; msgpack and nacl each have one owner."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

CORE = ["errors", "encoding", "digest", "merkle", "identity", "receipts", "ledger", "audit",
        "sampling", "economics", "compare", "vectorised", "node", "protocol", "scheduler"]
ROOT = Path(__file__).resolve().parents[2]


def test_core_imports_neither_ray_nor_torch():
    code = ("import sys\n"
            + "".join(f"import posp.{m}\n" for m in CORE)
            + "bad = [m for m in ('ray', 'torch') if m in sys.modules]\n"
            + "print(','.join(bad))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "", f"the core pulled in {out}"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_one_module_owns_msgpack_and_one_owns_nacl():
    owners: dict[str, list[str]] = {"msgpack": [], "nacl": []}
    for path in sorted((ROOT / "posp").rglob("*.py")):
        for lib in owners:
            if lib in _imports(path):
                owners[lib].append(path.relative_to(ROOT).as_posix())
    assert owners == {"msgpack": ["posp/encoding.py"], "nacl": ["posp/identity.py"]}


def test_import_posp_is_light_and_the_runtime_loads_on_demand():
    code = ("import sys, posp\n"
            "assert 'ray' not in sys.modules and 'torch' not in sys.modules\n"
            "assert set(posp.__all__) >= {'Cluster', 'verified', 'Protocol', 'Ledger'}\n"
            "posp.Cluster\n"
            "print('ray' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "True"
