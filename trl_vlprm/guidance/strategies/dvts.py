"""Diverse verifier tree search (DVTS): split the budget into independent subtrees, each searched greedily by the PRM.

Beam search lets one strong prefix take over every beam; DVTS keeps diversity by running `n // beam_width`
independent PRM-guided walks, each choosing the best of `beam_width` sampled next steps at every step (as
search-and-learn's DVTS does), then answers with the best walk by aggregated score.
"""

from __future__ import annotations

from trl_vlprm.guidance.policy import Policy, Question, StepScorer
from trl_vlprm.guidance.strategies.base import (
    STRATEGIES,
    SearchConfig,
    SearchResult,
    aggregated_scores,
    question_id,
    require_scorer,
)
from trl_vlprm.guidance.strategies.best_of_n import select_best_of_n
from trl_vlprm.guidance.strategies.step_selection import prm_guided_walk
from trl_vlprm.types import StatsDelta


@STRATEGIES.register("dvts")
def run_dvts(question: Question, policy: Policy, scorer: StepScorer | None, config: SearchConfig) -> SearchResult:
    """`n // beam_width` PRM-guided walks of fan-out `beam_width`; the answer is the best walk's."""
    scorer = require_scorer(scorer, "dvts")
    if config.n < config.beam_width:
        raise ValueError(f"dvts: n={config.n} < beam_width={config.beam_width}; need at least one subtree")
    num_subtrees = config.n // config.beam_width
    with StatsDelta(policy) as cost:
        walks, trace = prm_guided_walk(question, policy, scorer, num_subtrees, config.beam_width, config.max_steps)
    chosen = select_best_of_n(walks, config.aggregation)
    return SearchResult(
        question_id=question_id(question),
        strategy="dvts",
        candidates=walks,
        chosen=chosen,
        answer=walks[chosen].answer,
        candidate_scores=aggregated_scores(walks, config.aggregation),
        details={"aggregation": config.aggregation, "num_subtrees": num_subtrees, "steps": trace},
        policy_stats=cost.spent.as_dict(),
    )
