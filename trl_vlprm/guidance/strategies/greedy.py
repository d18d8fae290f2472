"""Greedy: one solution, no search. The baseline every other strategy is measured against.

The policy is asked for a single sample; it is truly greedy only if the backend decodes greedily (`HFPolicy` and
`VLLMPolicy` with `temperature=0`). With a sampling policy it is "single sample" accuracy.
"""

from __future__ import annotations

from trl_vlprm.guidance.policy import Policy, Question, StepScorer
from trl_vlprm.guidance.strategies.base import (
    STRATEGIES,
    SearchConfig,
    SearchResult,
    aggregated_scores,
    question_id,
    root_candidate,
    score_candidates,
)
from trl_vlprm.types import StatsDelta, expect_samples


@STRATEGIES.register("greedy")
def run_greedy(question: Question, policy: Policy, scorer: StepScorer | None, config: SearchConfig) -> SearchResult:
    """Sample one solution; score it when a scorer is given (for the record, it does not change the choice)."""
    with StatsDelta(policy) as cost:
        candidates = [
            root_candidate().extend(c)
            for c in expect_samples(policy.sample_solutions(question, 1), 1, question, "sample_solutions")
        ]
    scores = []
    if scorer is not None:
        score_candidates(scorer, question, candidates)
        scores = aggregated_scores(candidates, config.aggregation)
    chosen = 0 if candidates else None
    return SearchResult(
        question_id=question_id(question),
        strategy="greedy",
        candidates=candidates,
        chosen=chosen,
        answer=candidates[0].answer if candidates else None,
        candidate_scores=scores,
        policy_stats=cost.spent.as_dict(),
    )
