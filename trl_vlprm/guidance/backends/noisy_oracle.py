"""The `noisy_oracle` scorer: a testbed PRM of known step accuracy.

It reads each step's gold correctness and reports it wrong with probability `flip_rate`, independently per step, so
its step accuracy is 1 - `flip_rate` by construction. Sweeping `flip_rate` between the `oracle` (0) and a scorer
that is always wrong (1) charts how good a PRM must be for a strategy to pay off, e.g. where best-of-N stops beating
majority voting ("noisy_oracle:flip_rate=0.3" in an evaluation config's `scorers`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from trl_vlprm.guidance.backends import scorer_backend
from trl_vlprm.testbed import GoldOracleScorer
from trl_vlprm.types import Candidate, Question


class NoisyOracleScorer:
    """Gold step correctness (1.0 / 0.0) flipped with probability `flip_rate` per step (testbed policies only)."""

    def __init__(self, flip_rate: float = 0.2, seed: int = 0):
        if not 0.0 <= flip_rate <= 1.0:
            raise ValueError(f"NoisyOracleScorer: flip_rate must be in [0, 1], got {flip_rate}")
        self.flip_rate = flip_rate
        self.rng = random.Random(seed)
        self.oracle = GoldOracleScorer()

    def score(self, question: Question, candidates: Sequence[Candidate]) -> list[list[float]]:
        gold = self.oracle.score(question, candidates)
        return [[1.0 - g if self.rng.random() < self.flip_rate else g for g in steps] for steps in gold]


@scorer_backend("noisy_oracle")
def noisy_oracle_scorer(args: list[str], kwargs: dict[str, Any], seed: int | None):
    """ "noisy_oracle:flip_rate=0.2": `NoisyOracleScorer` seeded by the run (a spec's `seed` wins)."""
    if args:
        raise ValueError(f"a noisy_oracle scorer takes keywords only (noisy_oracle:flip_rate=0.2), got {args}")
    return NoisyOracleScorer(**{"seed": seed if seed is not None else 0, **kwargs})
