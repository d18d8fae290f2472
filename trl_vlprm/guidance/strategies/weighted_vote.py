"""PRM-weighted majority vote: each solution votes for its answer with its aggregated PRM score."""

from __future__ import annotations

from collections.abc import Sequence

from trl_vlprm.guidance.aggregation import aggregate
from trl_vlprm.guidance.policy import Candidate, Policy, Question, StepScorer
from trl_vlprm.guidance.strategies.base import (
    STRATEGIES,
    SearchConfig,
    SearchResult,
    aggregated_scores,
    question_id,
    require_scorer,
    root_candidate,
    score_candidates,
    whole_solutions,
)
from trl_vlprm.guidance.strategies.majority import AnswerKey, answer_key, question_answer_key, vote_tally
from trl_vlprm.types import StatsDelta, expect_samples


def weighted_vote(candidates: Sequence[Candidate], aggregation: str, key: AnswerKey = answer_key) -> int | None:
    """Index of the best-scored candidate carrying the answer with the highest total aggregated score.

    Ties between answers go to the answer seen first. Candidates without an answer do not vote; None when no
    candidate has one. Reads `candidate.step_scores`, so it also works on candidates scored beforehand. `key` maps
    an answer to its vote, as in `majority_vote`.
    """
    if aggregation == "paper":
        # Its -1 for "judged wrong" and its length-scaled positives are ranks, not weights: summed they mean nothing.
        raise ValueError("weighted_vote: the 'paper' reward ranks candidates, it cannot weight votes; use best_of_n")
    scores = [aggregate(c.step_scores, aggregation) for c in candidates]
    tally = vote_tally(candidates, scores, key)
    if not tally:
        return None
    winner = max(tally, key=tally.get)
    holders = [i for i, c in enumerate(candidates) if key(c.answer) == winner]
    return max(holders, key=scores.__getitem__)


@STRATEGIES.register("weighted_vote")
def run_weighted_vote(
    question: Question, policy: Policy, scorer: StepScorer | None, config: SearchConfig
) -> SearchResult:
    """Sample `config.n` solutions, score them, and vote with weights = aggregated scores."""
    scorer = require_scorer(scorer, "weighted_vote")
    with StatsDelta(policy) as cost:
        candidates = [
            root_candidate().extend(c)
            for c in expect_samples(
                policy.sample_solutions(question, config.n), config.n, question, "sample_solutions"
            )
        ]
    if config.whole_solution:
        candidates = whole_solutions(candidates, policy.step_separator)
    score_candidates(scorer, question, candidates)
    scores = aggregated_scores(candidates, config.aggregation)
    key = question_answer_key(question)
    chosen = weighted_vote(candidates, config.aggregation, key)
    return SearchResult(
        question_id=question_id(question),
        strategy="weighted_vote",
        candidates=candidates,
        chosen=chosen,
        answer=None if chosen is None else candidates[chosen].answer,
        candidate_scores=scores,
        details={"aggregation": config.aggregation, "votes": vote_tally(candidates, scores, key)},
        policy_stats=cost.spent.as_dict(),
    )
