"""Test-time search strategies. Each runner has the signature
`run(question, policy, scorer, config: SearchConfig) -> SearchResult`; `STRATEGIES` maps registry names to runners.

The pure selection functions (`majority_vote`, `select_best_of_n`, `weighted_vote`) work on already-scored
candidates, so an evaluation sweep can reuse one set of samples for every strategy.
"""

from trl_vlprm.guidance.strategies.base import SearchConfig, SearchResult, score_candidates
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

STRATEGIES = {
    "greedy": run_greedy,
    "majority": run_majority,
    "best_of_n": run_best_of_n,
    "weighted_vote": run_weighted_vote,
    "beam_search": run_beam_search,
    "dvts": run_dvts,
    "step_selection": run_step_selection,
}


def get_strategy(name: str):
    """The runner registered under `name`."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; expected one of {sorted(STRATEGIES)}")
    return STRATEGIES[name]


__all__ = [
    "STRATEGIES",
    "SearchConfig",
    "SearchResult",
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
