"""The full-stack engine on real Ray actors (posp.runtime): not available yet.

It needs the runtime to host simulator behaviours on node actors and to report, per job,
which node ran it and in which position of its batch; until then it refuses clearly.
"""

from __future__ import annotations

from collections.abc import Callable

from posp.errors import ConfigError

from .env import Environment
from .metrics import Observations
from .scenario import Scenario

__all__ = ["run_ray"]


def run_ray(s: Scenario, env: Environment,
            progress: Callable[[int, int], None] | None = None) -> Observations:
    raise ConfigError("the ray engine is not available yet; use montecarlo or event",
                      key="engine")
