"""Best-of-N: sample n full solutions, keep the one the PRM rates highest (the PRM used as an outcome scorer)."""

from __future__ import annotations

from collections.abc import Sequence

from trl_vlprm.guidance.aggregation import rank_key
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
from trl_vlprm.types import StatsDelta, expect_samples


def select_best_of_n(candidates: Sequence[Candidate], aggregation: str) -> int:
    """Index of the candidate with the highest aggregated step score (ties go to the lowest index).

    Reads `candidate.step_scores` (and `step_input_lengths` for "paper"), so it also works on candidates scored
    beforehand (evaluation sweeps). Under "paper" the candidates all scoring -1 are ranked by the lowest P(-)
    (`aggregation.rank_key`), as the paper's selection does.
    """
    if not candidates:
        raise ValueError("select_best_of_n: no candidates")
    keys = [rank_key(c.step_scores, aggregation, c.step_input_lengths) for c in candidates]
    return max(range(len(keys)), key=keys.__getitem__)


@STRATEGIES.register("best_of_n")
def run_best_of_n(question: Question, policy: Policy, scorer: StepScorer | None, config: SearchConfig) -> SearchResult:
    """Sample `config.n` solutions, score all their steps in one scorer call, keep the best by `config.aggregation`.

    With `config.whole_solution` each solution is scored once as a single step: the paper's protocol with
    `aggregation="paper"` (`recipes/configs/eval_tts_paper.yaml`).
    """
    scorer = require_scorer(scorer, "best_of_n")
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
    chosen = select_best_of_n(candidates, config.aggregation) if candidates else None
    return SearchResult(
        question_id=question_id(question),
        strategy="best_of_n",
        candidates=candidates,
        chosen=chosen,
        answer=None if chosen is None else candidates[chosen].answer,
        candidate_scores=aggregated_scores(candidates, config.aggregation),
        details={"aggregation": config.aggregation, "whole_solution": config.whole_solution},
        policy_stats=cost.spent.as_dict(),
    )
