"""Majority vote (self-consistency): sample n solutions, answer with the most frequent final answer."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from trl_vlprm.data.answers import extract_answer
from trl_vlprm.guidance.policy import Candidate, Policy, Question, StepScorer
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


def answer_key(answer: str | None) -> str | None:
    """The form under which two answers count as the same vote ("(B)", "b." and " B " agree); None for no answer."""
    if answer is None:
        return None
    key = answer.strip().casefold().rstrip(".").strip()
    if len(key) >= 2 and key[0] == "(" and key[-1] == ")":
        key = key[1:-1].strip()
    return key or None


AnswerKey = Callable[[str | None], str | None]


def question_answer_key(question: Question) -> AnswerKey:
    """Vote key for a question: the canonical answer given its options ("blue" and "(B)" agree when B is blue)."""
    options = question.get("options") or None

    def key(answer: str | None) -> str | None:
        if answer is None:
            return None
        canonical = extract_answer(answer, options)
        return answer_key(canonical if canonical is not None else answer)

    return key


def vote_tally(
    candidates: Sequence[Candidate], weights: Sequence[float] | None = None, key: AnswerKey = answer_key
) -> dict[str, float]:
    """Total weight (default 1 per candidate) of each answer key, in order of first appearance."""
    tally: dict[str, float] = {}
    for index, candidate in enumerate(candidates):
        key_value = key(candidate.answer)
        if key_value is not None:
            tally[key_value] = tally.get(key_value, 0.0) + (1.0 if weights is None else float(weights[index]))
    return tally


def majority_vote(candidates: Sequence[Candidate], key: AnswerKey = answer_key) -> int | None:
    """Index of the candidate carrying the most frequent answer.

    Ties go to the answer seen first; the index is that of the first candidate giving the winning answer. Candidates
    without an answer do not vote; None when no candidate has one. `key` maps an answer to its vote (default:
    `answer_key`; `question_answer_key(question)` also merges an option's letter with its text).
    """
    tally = vote_tally(candidates, key=key)
    if not tally:
        return None
    winner = max(tally, key=tally.get)  # max keeps the first of equal keys: ties go to the earliest answer
    return next(i for i, c in enumerate(candidates) if key(c.answer) == winner)


@STRATEGIES.register("majority")
def run_majority(question: Question, policy: Policy, scorer: StepScorer | None, config: SearchConfig) -> SearchResult:
    """Sample `config.n` solutions and vote. A scorer, when given, only annotates the candidates."""
    with StatsDelta(policy) as cost:
        candidates = [
            root_candidate().extend(c)
            for c in expect_samples(
                policy.sample_solutions(question, config.n), config.n, question, "sample_solutions"
            )
        ]
    scores = []
    if scorer is not None:
        score_candidates(scorer, question, candidates)
        scores = aggregated_scores(candidates, config.aggregation)
    key = question_answer_key(question)
    chosen = majority_vote(candidates, key)
    return SearchResult(
        question_id=question_id(question),
        strategy="majority",
        candidates=candidates,
        chosen=chosen,
        answer=None if chosen is None else candidates[chosen].answer,
        candidate_scores=scores,
        details={"votes": vote_tally(candidates, key=key)},
        policy_stats=cost.spent.as_dict(),
    )
