"""Step-level beam search guided by the PRM.

Every open beam proposes `expansions_per_beam` next steps (the root proposes `beam_width * expansions_per_beam`);
the PRM scores all steps of every expansion (partial solutions) and the best `beam_width` expansions by aggregated
score survive. A survivor that finished leaves the beam for the pool of completed solutions and the beam narrows by
one, so at most `beam_width` solutions complete. After `max_steps` steps the still-open beams are completed to the
end in one call. The answer is the best completed solution by the same aggregation.

Differences from search-and-learn's beam search (which keeps N beams and samples one step per beam copy): here the
width and the fan-out are separate settings, and finished beams are removed from the width instead of being
re-sampled.
"""

from __future__ import annotations

from trl_vlprm.guidance.policy import Candidate, Policy, Question, StepScorer
from trl_vlprm.guidance.strategies.base import (
    STRATEGIES,
    SearchConfig,
    SearchResult,
    aggregated_scores,
    complete_open,
    question_id,
    require_scorer,
    root_candidate,
    score_candidates,
)
from trl_vlprm.guidance.strategies.best_of_n import select_best_of_n
from trl_vlprm.types import StatsDelta, expect_samples


def _gold_ok(candidate: Candidate) -> bool | None:
    return None if candidate.gold_correct is None else all(candidate.gold_correct)


@STRATEGIES.register("beam_search")
def run_beam_search(
    question: Question, policy: Policy, scorer: StepScorer | None, config: SearchConfig
) -> SearchResult:
    """Beam search over steps; `details["iterations"]` records, per step, every expansion's score and the survivors."""
    scorer = require_scorer(scorer, "beam_search")
    beams = [root_candidate()]
    completed: list[Candidate] = []
    iterations = []
    with StatsDelta(policy) as cost:
        for depth in range(config.max_steps):
            width = config.beam_width - len(completed)
            if not beams or width <= 0:
                break
            expansions, parents = [], []
            # The root alone proposes width x expansions first steps, so the first level is as wide as later ones.
            fan_out = config.expansions_per_beam * (width if depth == 0 else 1)
            for parent, beam in enumerate(beams):
                for continuation in expect_samples(
                    policy.sample_next_steps(question, beam.steps, fan_out), fan_out, question, "sample_next_steps"
                ):
                    expansions.append(beam.extend(continuation))
                    parents.append(parent)
            score_candidates(scorer, question, expansions)
            scores = aggregated_scores(expansions, config.aggregation)
            # Stable ranking: equal scores keep generation order, so a run is reproducible.
            kept = sorted(range(len(expansions)), key=lambda i: -scores[i])[:width]
            iterations.append(
                {
                    "depth": depth,
                    "parents": parents,
                    "scores": scores,
                    "kept": sorted(kept),
                    "finished": [e.finished for e in expansions],
                    "gold_ok": [_gold_ok(e) for e in expansions],
                }
            )
            completed += [expansions[i] for i in kept if expansions[i].finished]
            beams = [expansions[i] for i in kept if not expansions[i].finished]
        tail = complete_open(question, policy, beams[: max(config.beam_width - len(completed), 0)])
    score_candidates(scorer, question, tail)
    completed += tail
    chosen = select_best_of_n(completed, config.aggregation) if completed else None
    return SearchResult(
        question_id=question_id(question),
        strategy="beam_search",
        candidates=completed,
        chosen=chosen,
        answer=None if chosen is None else completed[chosen].answer,
        candidate_scores=aggregated_scores(completed, config.aggregation),
        details={"aggregation": config.aggregation, "iterations": iterations, "completed_at_max_steps": len(tail)},
        policy_stats=cost.spent.as_dict(),
    )
