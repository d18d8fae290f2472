"""The testbed's two reference scorers: the gold oracle (what a perfect PRM would score) and the random control.

Both implement `trl_vlprm.types.StepScorer`, so every strategy, the TTS runner and the evaluation sweep take them
where they take a trained PRM.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from ..types import Candidate, Question


class RandomScorer:
    """A scorer with no information: independent uniform scores per step. The control for any PRM."""

    def __init__(self, seed: int = 0):
        self.rng = random.Random(seed)

    def score(self, question: Question, candidates: Sequence[Candidate]) -> list[list[float]]:
        return [[self.rng.random() for _ in candidate.steps] for candidate in candidates]


class GoldOracleScorer:
    """`StepScorer` that knows the truth: each step scores 1.0 if its gold correctness is True, else 0.0.

    The upper bound a perfect PRM reaches on the testbed; needs candidates from a policy that reports `gold_correct`.
    """

    def score(self, question: Question, candidates: Sequence[Candidate]) -> list[list[float]]:
        scores = []
        for i, candidate in enumerate(candidates):
            if candidate.gold_correct is None or len(candidate.gold_correct) != len(candidate.steps):
                raise ValueError(
                    f"question {question.get('id', '?')}: candidate {i} has no gold_correct for each of its "
                    f"{len(candidate.steps)} step(s); GoldOracleScorer needs a testbed policy"
                )
            scores.append([1.0 if g else 0.0 for g in candidate.gold_correct])
        return scores
