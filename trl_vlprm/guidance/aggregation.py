"""Reduce a candidate's per-step PRM scores to one number.

| how     | value                          | reads as                                              |
|---------|--------------------------------|-------------------------------------------------------|
| `last`  | score of the last step         | the PRM's view of the whole solution (outcome-like)   |
| `min`   | lowest step score              | "every step is right" (a chain is as good as its weakest step) |
| `mean`  | average step score             | fraction of good steps; forgiving of one slip         |
| `prod`  | product of step scores         | P(all steps right) if step errors were independent    |
| `paper` | `paper_reward` of the last step | Ong et al. (2025): -1 if `-` wins, else P(+)^0.3 / input_len^0.6 |

A candidate with no steps (the policy produced nothing) scores 0.0 under every aggregation but `paper`, where it
scores -1 and ranks below every scored candidate: it carries no evidence of being right, and `prod`'s empty product
(1.0) would otherwise rank it above every real solution.

`paper` needs, beside P(+), the number of tokens the PRM read to produce that score (`input_lengths`, image tokens
included; `PRMScorer.score_with_input_lengths` gives them). Rank candidates with `rank_key`, not the bare value: the
paper breaks the tie between candidates that all score -1 by the lowest P(-).

Every aggregation is a function in the `AGGREGATIONS` registry; `@AGGREGATIONS.register("name")` adds one, usable by
name in `SearchConfig.aggregation`, the sweep's `best_of_n:<name>` and the GRPO reward.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from trl_vlprm.registry import Registry

# `(step_scores, input_lengths) -> score`, called with at least one step score. Add one with
# `@AGGREGATIONS.register("name")`; mark it `reads_input_lengths` (see `paper`) when it needs the PRM input lengths.
Aggregation = Callable[[Sequence[float], Sequence[int] | None], float]
AGGREGATIONS: Registry[Aggregation] = Registry("aggregation")

# Exponents of the paper's length-normalised reward (theogbrand/vlprm, VisualPRMv2.inference_single).
PAPER_PROB_EXPONENT = 0.3
PAPER_LENGTH_EXPONENT = 0.6


@AGGREGATIONS.register("last")
def aggregate_last(step_scores: Sequence[float], input_lengths: Sequence[int] | None = None) -> float:
    return float(step_scores[-1])


@AGGREGATIONS.register("min")
def aggregate_min(step_scores: Sequence[float], input_lengths: Sequence[int] | None = None) -> float:
    return float(min(step_scores))


@AGGREGATIONS.register("mean")
def aggregate_mean(step_scores: Sequence[float], input_lengths: Sequence[int] | None = None) -> float:
    return float(sum(step_scores) / len(step_scores))


@AGGREGATIONS.register("prod")
def aggregate_prod(step_scores: Sequence[float], input_lengths: Sequence[int] | None = None) -> float:
    return float(math.prod(step_scores))


def paper_reward(p_correct: float, input_length: int) -> float:
    """The paper's reward of one PRM call: -1 when `-` wins, else `P(+)^0.3 / input_length^0.6`.

    `-` wins when its logit is strictly higher than `+`'s (the paper takes the argmax over the two logits, which
    picks `+` on a tie), i.e. when P(+) < 0.5. The length term divides by the number of tokens of the whole PRM
    input, so of two confident solutions the shorter one wins.
    """
    if input_length < 1:
        raise ValueError(f"paper_reward: input_length must be >= 1, got {input_length}")
    if p_correct < 0.5:
        return -1.0
    return p_correct**PAPER_PROB_EXPONENT / input_length**PAPER_LENGTH_EXPONENT


@AGGREGATIONS.register("paper")
def aggregate_paper(step_scores: Sequence[float], input_lengths: Sequence[int] | None = None) -> float:
    if input_lengths is None or len(input_lengths) != len(step_scores):
        got = "none" if input_lengths is None else f"{len(input_lengths)}"
        raise ValueError(
            f"aggregation 'paper' needs the PRM input length of every step: {len(step_scores)} scores, {got} "
            "input lengths (score with a scorer that reports them, e.g. PRMScorer)"
        )
    return paper_reward(float(step_scores[-1]), int(input_lengths[-1]))


aggregate_paper.reads_input_lengths = True


def reads_input_lengths(how: str) -> bool:
    """Whether aggregation `how` needs, beside the step scores, the PRM input length of every step."""
    return bool(getattr(AGGREGATIONS.get(how), "reads_input_lengths", False))


def aggregate(step_scores: Sequence[float], how: str, input_lengths: Sequence[int] | None = None) -> float:
    """One score for a solution from its step scores.

    Args:
        step_scores: P(step is correct) per step, in [0, 1].
        how: a name in `AGGREGATIONS` ("last", "min", "mean", "prod", "paper", or one registered since).
        input_lengths: per step, the tokens the PRM read to score it (only "paper" reads them).

    Returns:
        The aggregated score; 0.0 when `step_scores` is empty (-1.0 under an aggregation that reads input lengths,
        such as "paper").
    """
    reduce = AGGREGATIONS.get(how)
    if len(step_scores) == 0:
        return -1.0 if reads_input_lengths(how) else 0.0
    return reduce(step_scores, input_lengths)


def rank_key(
    step_scores: Sequence[float], how: str, input_lengths: Sequence[int] | None = None
) -> tuple[float, float]:
    """Sort key of a candidate: its aggregated score, then a tie-break (larger is better).

    Under an aggregation that reads input lengths ("paper"), candidates whose reward is -1 are ordered by their last
    step's P(+), i.e. the lowest P(-) first, as the paper's selection does when every candidate is judged wrong; an
    empty candidate comes last. Every other aggregation has no tie-break (0.0): ties go to the first candidate, as
    `max` keeps the first of equal keys.
    """
    value = aggregate(step_scores, how, input_lengths)
    if value == -1.0 and reads_input_lengths(how):
        return value, float(step_scores[-1]) if len(step_scores) else -1.0
    return value, 0.0
