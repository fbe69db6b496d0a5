"""Run a scenario on an engine and report every metric beside its theory."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from posp.errors import ConfigError

from .env import Environment
from .metrics import Metric, Observations, compute_metrics, metrics_json
from .scenario import Scenario
from .strategies import scenario_strategies
from .theory import Theory, as_dict, theory

__all__ = ["Report", "scenario_theory", "simulate"]


@dataclass
class Report:
    scenario: Scenario
    metrics: dict[str, Metric]
    theory: Theory | None
    observations: Observations
    seconds: float

    @property
    def job_events(self) -> int:
        return int(self.observations.extra.get("job_events", self.observations.jobs.sum()))

    def to_json(self) -> dict[str, Any]:
        """``{"seed", "params", "metrics": {name: {measured, theory, stderr, agrees}}}``
        plus ``theory`` (intermediate quantities), ``series`` and ``run`` details."""
        return {
            "seed": self.scenario.seed,
            "params": self.scenario.to_dict(),
            "metrics": metrics_json(self.metrics),
            "theory": as_dict(self.theory) if self.theory else None,
            "series": self.observations.series,
            "run": {"engine": self.scenario.engine, "seconds": self.seconds,
                    "job_events": self.job_events,
                    "job_events_per_s": self.job_events / self.seconds if self.seconds else None,
                    "reentries": self.observations.reentries,
                    "disputes": self.observations.disputes},
        }


def scenario_theory(s: Scenario) -> Theory | None:
    """The closed-form theory of ``s``, or None when its strategy has none."""
    cheat, honest = scenario_strategies(s)
    q = cheat.theory_skip_rate(s) if s.cheaters else 0.0
    if q is None:
        return None
    return theory(s, q, guess_accuracy=cheat.guess_accuracy, crash_cheater=cheat.crash_rate,
                  crash_honest=honest.crash_rate)


def simulate(s: Scenario, *, progress: Callable[[int, int], None] | None = None,
             theory_override: Theory | None = None) -> Report:
    """Run ``s`` on ``s.engine`` with a fresh environment seeded by ``s.seed``."""
    env = Environment(s.seed)
    t0 = time.perf_counter()
    if s.engine == "montecarlo":
        from .montecarlo import run_montecarlo
        obs = run_montecarlo(s, env, progress)
    elif s.engine == "event":
        from .event import run_event
        obs = run_event(s, env, progress)
    elif s.engine == "ray":
        from .rayengine import run_ray
        obs = run_ray(s, env, progress)
    else:  # pragma: no cover - Scenario checks the name
        raise ConfigError(f"unknown engine {s.engine!r}", key="engine")
    secs = time.perf_counter() - t0
    th = theory_override if theory_override is not None else scenario_theory(s)
    return Report(s, compute_metrics(obs, s, th), th, obs, secs)
