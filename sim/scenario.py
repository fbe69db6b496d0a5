"""A simulation scenario: every parameter, its default, its check, and TOML loading.

One :class:`Scenario` runs on every engine. Bad values raise
:class:`~posp.errors.ConfigError` naming the key (the CLI turns that into exit code 2).
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from posp.errors import ConfigError

__all__ = ["ENGINES", "Scenario", "load_scenario"]

ENGINES = ("montecarlo", "event", "ray")


@dataclass(frozen=True)
class Scenario:
    """Every parameter of a simulation (amounts in stake units, rates in [0, 1])."""

    engine: str = "montecarlo"
    nodes: int = 1000
    cheaters: int = 100
    strategy: str = "cheater"  # strategy of the cheaters (a name or "module:Class")
    cheat_rate: float = 0.5  # q
    options: dict[str, Any] = field(default_factory=dict)  # extra strategy arguments
    honest_strategy: str = "honest"  # strategy of everyone else
    crash_rate: float = 0.0  # per job, for the crash-prone honest strategy
    sample_rate: float = 0.05  # p
    collusion: float = 0.0  # r: share of all nodes in the ring (0 = no ring)
    validators: int = 1  # n
    arbiters: int = 3  # k
    tasks_per_node: int = 200  # N: jobs each node receives
    runs: int = 20
    reward: int = 10  # R, paid per job (asserted, validated or arbitrated)
    slash: int = 1000
    bond: int = 50_000  # large against the slash: no ejection within N by default
    min_bond: int = 1000
    cost: int = 5  # C, the cost of computing one job honestly
    challenger_share: float = 0.0  # ledger: share of a slash paid to honest challengers
    seed: int = 0
    batch_size: int = 8  # event and ray engines: first executions per node per round
    sweep: dict[str, Any] = field(default_factory=dict)  # p sweep: p_min, p_max, points

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ConfigError(f"must be one of {', '.join(ENGINES)}, got {self.engine!r}",
                              key="engine")
        for name, lo in (("nodes", 2), ("cheaters", 0), ("validators", 1), ("arbiters", 1),
                         ("tasks_per_node", 1), ("runs", 1), ("batch_size", 1)):
            check_int(getattr(self, name), name, lo)
        for name in ("reward", "slash", "bond", "min_bond", "cost", "seed"):
            check_int(getattr(self, name), name, 0)
        for name in ("cheat_rate", "sample_rate", "collusion", "crash_rate", "challenger_share"):
            check_unit(getattr(self, name), name)
        if self.arbiters % 2 == 0:
            raise ConfigError(f"must be odd, got {self.arbiters}", key="arbiters")
        if self.cheaters > self.nodes:
            raise ConfigError(
                f"{self.cheaters} cheaters but only {self.nodes} nodes", key="cheaters")
        if self.min_bond < 1 or self.bond < self.min_bond:
            raise ConfigError(f"bond {self.bond} must be >= min_bond {self.min_bond} >= 1",
                              key="bond")
        if 0 < self.collusion < self.cheaters / self.nodes:
            raise ConfigError(
                f"a ring holds every cheater, so a share {self.collusion} below "
                f"cheaters/nodes = {self.cheaters / self.nodes:.4g} is impossible (use 0 for "
                "no ring)", key="collusion")
        if self.collusion > 0 and self.ring_size < 1:
            raise ConfigError("too small for one node", key="collusion")
        if not isinstance(self.options, dict):
            raise ConfigError("must be a table", key="options")
        if not isinstance(self.sweep, dict):
            raise ConfigError("must be a table", key="sweep")
        unknown = set(self.sweep) - {"p_min", "p_max", "points"}
        if unknown:
            raise ConfigError("unknown key", key=f"sweep.{sorted(unknown)[0]}")

    @property
    def ring_size(self) -> int:
        """Ring members: every cheater plus honest-computing nodes up to a share r."""
        if self.collusion == 0:
            return 0
        return max(self.cheaters, round(self.collusion * self.nodes))

    @property
    def effective_slash(self) -> int:
        """S = min(slash, bond): what a caught node is sure to lose."""
        return min(self.slash, self.bond)

    def replace(self, **changes: Any) -> Scenario:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["ring_size"] = self.ring_size
        d["effective_slash"] = self.effective_slash
        return d


def check_int(v: Any, key: str, lo: int) -> int:
    """``v`` if it is an integer >= ``lo``, else ConfigError naming ``key``."""
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ConfigError(f"must be an integer >= {lo}, got {v!r}", key=key)
    return v


def check_unit(v: Any, key: str) -> float:
    """``v`` as a float if it is a number in [0, 1], else ConfigError naming ``key``."""
    if isinstance(v, bool) or not isinstance(v, int | float) or not 0.0 <= float(v) <= 1.0 \
            or math.isnan(float(v)):
        raise ConfigError(f"must be a number in [0, 1], got {v!r}", key=key)
    return float(v)


_FIELDS = {f.name: f for f in dataclasses.fields(Scenario)}


def scenario_from_dict(data: dict[str, Any], *, base: Scenario | None = None) -> Scenario:
    """A scenario from plain values, rejecting unknown keys by name."""
    for key in data:
        if key not in _FIELDS:
            raise ConfigError(f"unknown key (known: {', '.join(sorted(_FIELDS))})", key=key)
    vals = {k: (float(v) if _FIELDS[k].type == "float" and isinstance(v, int)
                and not isinstance(v, bool) else v) for k, v in data.items()}
    return dataclasses.replace(base or Scenario(), **vals)


def load_scenario(path: str | Path, **overrides: Any) -> Scenario:
    """Read a scenario TOML file (flat keys, plus ``[options]`` and ``[sweep]`` tables);
    ``overrides`` (e.g. from flags) win over the file."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"no such file {str(p)!r}", key="--scenario") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {str(p)!r}: {exc}", key="--scenario") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}", key="--scenario") from None
    data.update({k: v for k, v in overrides.items() if v is not None})
    return scenario_from_dict(data)
