"""PRM-guided step selection (the paper's "process" mode): sample k next steps, keep the best, repeat.

`prm_guided_walk` runs several such walks in lock-step (one scorer call per step for all of them); DVTS reuses it
with one walk per subtree.
"""

from __future__ import annotations

from trl_vlprm.guidance.aggregation import aggregate, rank_key
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
from trl_vlprm.types import StatsDelta, expect_samples


def prm_guided_walk(
    question: Question,
    policy: Policy,
    scorer: StepScorer,
    num_walks: int,
    k: int,
    max_steps: int,
    step_rule: str = "min",
) -> tuple[list[Candidate], list[dict]]:
    """Grow `num_walks` independent solutions one step at a time, each keeping the best of `k` sampled next steps.

    Siblings share their prefix, so they are compared on the score of the new step alone (an aggregate over the
    whole path would tie them whenever the prefix holds the lowest score). `step_rule` "paper" compares them as the
    paper's step search does: by `paper_reward` of the new step (its P(+) and the PRM input length up to it), the
    lowest P(-) first when all are judged wrong. Walks still open after `max_steps` steps are completed to the end.
    Returns the walks (scored) and a per-step trace.
    """
    walks = [root_candidate() for _ in range(num_walks)]
    trace = []
    for depth in range(max_steps):
        open_walks = [i for i, walk in enumerate(walks) if not walk.finished]
        if not open_walks:
            break
        siblings = {
            i: [
                walks[i].extend(c)
                for c in expect_samples(
                    policy.sample_next_steps(question, walks[i].steps, k), k, question, "sample_next_steps"
                )
            ]
            for i in open_walks
        }
        score_candidates(scorer, question, [c for i in open_walks for c in siblings[i]])
        step = {"depth": depth, "walks": []}
        for i in open_walks:
            if not siblings[i]:
                raise RuntimeError(f"question {question_id(question)}: policy.sample_next_steps returned nothing")
            prefix_len = len(walks[i].steps)
            if step_rule == "paper":
                keys = [
                    rank_key(c.step_scores[prefix_len:], "paper", c.step_input_lengths[prefix_len:])
                    for c in siblings[i]
                ]
                new_step_scores = [key[0] for key in keys]
                best = max(range(len(keys)), key=keys.__getitem__)
            else:
                new_step_scores = [aggregate(c.step_scores[prefix_len:], "min") for c in siblings[i]]
                best = max(range(len(siblings[i])), key=new_step_scores.__getitem__)
            step["walks"].append(
                {
                    "walk": i,
                    "scores": new_step_scores,
                    "kept": best,
                    "gold_ok": [None if c.gold_correct is None else all(c.gold_correct) for c in siblings[i]],
                }
            )
            walks[i] = siblings[i][best]
        trace.append(step)
    open_walks = [i for i, walk in enumerate(walks) if not walk.finished]
    finished_tails = complete_open(question, policy, [walks[i] for i in open_walks])
    score_candidates(scorer, question, finished_tails)
    for i, walk in zip(open_walks, finished_tails):
        walks[i] = walk
    return walks, trace


@STRATEGIES.register("step_selection")
def run_step_selection(
    question: Question, policy: Policy, scorer: StepScorer | None, config: SearchConfig
) -> SearchResult:
    """One solution built step by step, each step the PRM's favourite of `config.n` samples.

    With `config.aggregation="paper"` each step is picked by the paper's reward (the paper's second protocol).
    """
    scorer = require_scorer(scorer, "step_selection")
    step_rule = "paper" if config.aggregation == "paper" else "min"
    with StatsDelta(policy) as cost:
        walks, trace = prm_guided_walk(question, policy, scorer, 1, config.n, config.max_steps, step_rule)
    return SearchResult(
        question_id=question_id(question),
        strategy="step_selection",
        candidates=walks,
        chosen=0,
        answer=walks[0].answer,
        candidate_scores=aggregated_scores(walks, config.aggregation),
        details={"steps": trace},
        policy_stats=cost.spent.as_dict(),
    )
