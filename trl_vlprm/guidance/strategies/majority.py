"""Majority vote (self-consistency): sample n solutions, answer with the most frequent final answer."""

from __future__ import annotations

from collections.abc import Sequence

from trl_vlprm.guidance.policy import Candidate, Policy, Question, StepScorer
from trl_vlprm.guidance.strategies.base import (
    SearchConfig,
    SearchResult,
    StatsDelta,
    aggregated_scores,
    question_id,
    root_candidate,
    score_candidates,
)


def answer_key(answer: str | None) -> str | None:
    """The form under which two answers count as the same vote ("(B)", "b." and " B " agree); None for no answer."""
    if answer is None:
        return None
    key = answer.strip().casefold().rstrip(".").strip()
    if len(key) >= 2 and key[0] == "(" and key[-1] == ")":
        key = key[1:-1].strip()
    return key or None


def vote_tally(candidates: Sequence[Candidate], weights: Sequence[float] | None = None) -> dict[str, float]:
    """Total weight (default 1 per candidate) of each answer key, in order of first appearance."""
    tally: dict[str, float] = {}
    for index, candidate in enumerate(candidates):
        key = answer_key(candidate.answer)
        if key is not None:
            tally[key] = tally.get(key, 0.0) + (1.0 if weights is None else float(weights[index]))
    return tally


def majority_vote(candidates: Sequence[Candidate]) -> int | None:
    """Index of the candidate carrying the most frequent answer.

    Ties go to the answer seen first; the index is that of the first candidate giving the winning answer. Candidates
    without an answer do not vote; None when no candidate has one.
    """
    tally = vote_tally(candidates)
    if not tally:
        return None
    winner = max(tally, key=tally.get)  # max keeps the first of equal keys: ties go to the earliest answer
    return next(i for i, c in enumerate(candidates) if answer_key(c.answer) == winner)


def run_majority(question: Question, policy: Policy, scorer: StepScorer | None, config: SearchConfig) -> SearchResult:
    """Sample `config.n` solutions and vote. A scorer, when given, only annotates the candidates."""
    with StatsDelta(policy) as cost:
        candidates = [root_candidate().extend(c) for c in policy.sample_solutions(question, config.n)]
    scores = []
    if scorer is not None:
        score_candidates(scorer, question, candidates)
        scores = aggregated_scores(candidates, config.aggregation)
    chosen = majority_vote(candidates)
    return SearchResult(
        question_id=question_id(question),
        strategy="majority",
        candidates=candidates,
        chosen=chosen,
        answer=None if chosen is None else candidates[chosen].answer,
        candidate_scores=scores,
        details={"votes": vote_tally(candidates)},
        policy_stats=cost.spent,
    )
