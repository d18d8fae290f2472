"""Best-of-N: sample n full solutions, keep the one the PRM rates highest (the PRM used as an outcome scorer)."""

from __future__ import annotations

from collections.abc import Sequence

from trl_vlprm.guidance.aggregation import aggregate
from trl_vlprm.guidance.policy import Candidate, Policy, Question, StepScorer
from trl_vlprm.guidance.strategies.base import (
    SearchConfig,
    SearchResult,
    StatsDelta,
    aggregated_scores,
    question_id,
    require_scorer,
    root_candidate,
    score_candidates,
)


def select_best_of_n(candidates: Sequence[Candidate], aggregation: str) -> int:
    """Index of the candidate with the highest aggregated step score (ties go to the lowest index).

    Reads `candidate.step_scores`, so it also works on candidates scored beforehand (evaluation sweeps).
    """
    if not candidates:
        raise ValueError("select_best_of_n: no candidates")
    scores = [aggregate(c.step_scores, aggregation) for c in candidates]
    return max(range(len(scores)), key=scores.__getitem__)


def run_best_of_n(question: Question, policy: Policy, scorer: StepScorer | None, config: SearchConfig) -> SearchResult:
    """Sample `config.n` solutions, score all their steps in one scorer call, keep the best by `config.aggregation`."""
    scorer = require_scorer(scorer, "best_of_n")
    with StatsDelta(policy) as cost:
        candidates = [root_candidate().extend(c) for c in policy.sample_solutions(question, config.n)]
    score_candidates(scorer, question, candidates)
    chosen = select_best_of_n(candidates, config.aggregation) if candidates else None
    return SearchResult(
        question_id=question_id(question),
        strategy="best_of_n",
        candidates=candidates,
        chosen=chosen,
        answer=None if chosen is None else candidates[chosen].answer,
        candidate_scores=aggregated_scores(candidates, config.aggregation),
        details={"aggregation": config.aggregation},
        policy_stats=cost.spent,
    )
