"""Vectorised forms of the protocol's rules, for simulating millions of jobs (numpy only).

Each function here is the array form of one scalar rule elsewhere in the core, and
``tests/sim/test_vectorised.py`` holds them equal (or equal in distribution) to it:

- :func:`sample_mask`: :func:`posp.sampling.decide` (job i sampled iff a uniform value
  in [0, 1) is below its rate);
- :func:`disputes`: :meth:`posp.protocol.Protocol._judge_validation` (any validator whose
  output differs from the asserter's opens a dispute);
- :func:`majority` and :func:`losers`: :meth:`posp.protocol.Protocol._judge_arbitration`
  (the output at least ``(k + 1) // 2`` arbiters agree on wins, ties to the first such
  arbiter; every party or arbiter that disagrees with it is slashed; no majority, no
  slash);
- :func:`paid`: the payments of ``_judge_arbitration`` and ``_finish_unresolved`` (a
  resolved dispute pays everyone not slashed; one without a majority pays only the
  arbiters: the disputed job pays neither party);
- :func:`slash_amounts` and :func:`ejected`: ``Protocol._slash`` (a slash is bounded by
  the stake; a node below the minimum bond is ejected).

Outputs are integer *labels*: equal labels are equal outputs (a digest match), distinct
labels disagree beyond tolerance. No Ray, no torch.
"""

from __future__ import annotations

import numpy as np

__all__ = ["NO_MAJORITY", "disputes", "ejected", "losers", "majority", "paid", "sample_mask",
           "slash_amounts"]

#: the label :func:`majority` returns for a panel without a majority
NO_MAJORITY = -1


def sample_mask(rng: np.random.Generator, rates: np.ndarray | float, size: int | None = None
                ) -> np.ndarray:
    """Which jobs are sampled: ``value < rate`` with ``value`` uniform on [0, 1)."""
    r = np.asarray(rates, dtype=np.float64)
    n = r.size if size is None else size
    return rng.random(n) < r


def disputes(asserter: np.ndarray, validators: np.ndarray) -> np.ndarray:
    """Rows (tasks) whose validators' labels (shape ``(T, n)``) do not all equal the
    asserter's (shape ``(T,)``)."""
    return np.any(validators != np.asarray(asserter)[:, None], axis=1)


def majority(arbiters: np.ndarray) -> np.ndarray:
    """The winning label of each panel (shape ``(D, k)``), or :data:`NO_MAJORITY`."""
    arbs = np.asarray(arbiters)
    if arbs.ndim != 2 or arbs.shape[1] < 1:
        raise ValueError("arbiters must have shape (disputes, k) with k >= 1")
    k = arbs.shape[1]
    need = (k + 1) // 2
    counts = (arbs[:, :, None] == arbs[:, None, :]).sum(axis=2)
    best = counts.argmax(axis=1)  # first arbiter with the highest count, like the scalar rule
    top = counts[np.arange(arbs.shape[0]), best]
    won = arbs[np.arange(arbs.shape[0]), best]
    return np.where(top >= need, won, NO_MAJORITY)


def losers(labels: np.ndarray, winner: np.ndarray) -> np.ndarray:
    """Who is slashed in each dispute: every column of ``labels`` (parties and arbiters,
    shape ``(D, P)``) that differs from the winner; nobody where there is no majority."""
    w = np.asarray(winner)
    return (w != NO_MAJORITY)[:, None] & (np.asarray(labels) != w[:, None])


def paid(winner: np.ndarray, lose: np.ndarray, parties: int) -> np.ndarray:
    """Who is paid in each dispute: ``lose`` as from :func:`losers` (shape ``(D, P)``, the
    first ``parties`` columns the asserter and its validators, the rest arbiters). With a
    majority, everyone not slashed; without one, the arbiters only (they did their work;
    a disputed job that nobody could settle pays neither party)."""
    lose = np.asarray(lose, dtype=bool)
    resolved = (np.asarray(winner) != NO_MAJORITY)[:, None]
    arbiter = (np.arange(lose.shape[1]) >= parties)[None, :]
    return np.where(resolved, ~lose, arbiter)


def slash_amounts(stake: np.ndarray, slash: float, count: np.ndarray | int = 1) -> np.ndarray:
    """What ``count`` slashes take from ``stake``: each at most ``slash``, all at most the
    stake."""
    return np.minimum(np.asarray(count) * slash, np.maximum(np.asarray(stake), 0))


def ejected(stake: np.ndarray, min_bond: float) -> np.ndarray:
    """Nodes whose stake fell below the minimum bond."""
    return np.asarray(stake) < min_bond
