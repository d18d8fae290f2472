"""Reduce a candidate's per-step PRM scores to one number.

| how    | value                          | reads as                                              |
|--------|--------------------------------|-------------------------------------------------------|
| `last` | score of the last step         | the PRM's view of the whole solution (outcome-like)   |
| `min`  | lowest step score              | "every step is right" (a chain is as good as its weakest step) |
| `mean` | average step score             | fraction of good steps; forgiving of one slip         |
| `prod` | product of step scores         | P(all steps right) if step errors were independent    |

A candidate with no steps (the policy produced nothing) scores 0.0 under every aggregation: it carries no evidence of
being right, and `prod`'s empty product (1.0) would otherwise rank it above every real solution.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

AGGREGATIONS = ("last", "min", "mean", "prod")


def aggregate(step_scores: Sequence[float], how: str) -> float:
    """One score for a solution from its step scores.

    Args:
        step_scores: P(step is correct) per step, in [0, 1].
        how: one of `AGGREGATIONS` ("last", "min", "mean", "prod").

    Returns:
        The aggregated score; 0.0 when `step_scores` is empty.
    """
    if how not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {how!r}; expected one of {AGGREGATIONS}")
    if len(step_scores) == 0:
        return 0.0
    if how == "last":
        return float(step_scores[-1])
    if how == "min":
        return float(min(step_scores))
    if how == "mean":
        return float(sum(step_scores) / len(step_scores))
    return float(math.prod(step_scores))
