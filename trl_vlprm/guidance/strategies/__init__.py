"""Test-time search strategies. Each runner has the signature
`run(question, policy, scorer, config: SearchConfig) -> SearchResult`; `STRATEGIES` is the registry of runners.

A strategy is one module of this package that registers its runner with `@STRATEGIES.register(name)`: the registry
imports every module here before its first lookup, as the backend registries do, so nothing else is edited. The
imports below only re-export the runners for direct calls.

The pure selection functions (`majority_vote`, `select_best_of_n`, `weighted_vote`) work on already-scored
candidates; the evaluation's outcome selections (`trl_vlprm.eval.selection`) reuse them on one set of samples.
"""

from trl_vlprm.guidance.strategies.base import STRATEGIES, SearchConfig, SearchResult, Strategy, score_candidates
from trl_vlprm.guidance.strategies.beam_search import run_beam_search
from trl_vlprm.guidance.strategies.best_of_n import run_best_of_n, select_best_of_n
from trl_vlprm.guidance.strategies.dvts import run_dvts
from trl_vlprm.guidance.strategies.greedy import run_greedy
from trl_vlprm.guidance.strategies.majority import (
    answer_key,
    majority_vote,
    question_answer_key,
    run_majority,
    vote_tally,
)
from trl_vlprm.guidance.strategies.step_selection import prm_guided_walk, run_step_selection
from trl_vlprm.guidance.strategies.weighted_vote import run_weighted_vote, weighted_vote


def get_strategy(name: str) -> Strategy:
    """The runner registered under `name`; an unknown name raises `UnknownNameError` listing the registered ones."""
    return STRATEGIES.get(name)


__all__ = [
    "STRATEGIES",
    "SearchConfig",
    "SearchResult",
    "Strategy",
    "answer_key",
    "get_strategy",
    "majority_vote",
    "prm_guided_walk",
    "question_answer_key",
    "run_beam_search",
    "run_best_of_n",
    "run_dvts",
    "run_greedy",
    "run_majority",
    "run_step_selection",
    "run_weighted_vote",
    "score_candidates",
    "select_best_of_n",
    "vote_tally",
    "weighted_vote",
]
