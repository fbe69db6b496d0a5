"""Helpers shared by CLI subcommands: JSON output and path checks."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import ConfigError


def writable_path(value: str, *, key: str = "--json") -> Path:
    """A path whose parent directory exists and is writable, else ConfigError naming the flag."""
    path = Path(value)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise ConfigError(f"directory {str(parent)!r} does not exist", key=key)
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ConfigError(f"{value!r} is not writable", key=key)
    return path


def write_json(path: str | Path, data: Any, *, key: str = "--json") -> None:
    p = writable_path(str(path), key=key)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, p)


def unit_rate(value: str) -> float:
    """argparse type: a float in [0, 1]."""
    import argparse

    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not 0.0 <= x <= 1.0:
        raise argparse.ArgumentTypeError(f"{value} is outside [0, 1]")
    return x
