"""How the evaluation sweep picks one of N finished, scored solutions: the outcome-level strategies.

Strategies (names in `EvalTTSConfig.strategies`):

| name                 | picks                                                                        |
|----------------------|------------------------------------------------------------------------------|
| `majority`           | the most frequent answer (`guidance.strategies.majority_vote`)              |
| `best_of_n:<agg>`    | the solution with the best aggregated score (`select_best_of_n`)            |
| `best_of_n:paper`    | the paper's protocol: each solution scored whole, best `paper_reward`       |
| `weighted_vote:<agg>`| the answer with the highest summed score (`weighted_vote`)                  |
| `pass@n`             | correct if any of the N solutions is (the oracle upper bound)               |
| `first`              | the first solution of the subset (the single-sample baseline)               |

Each is an `OutcomeSelection` in the `OUTCOME_SELECTIONS` registry; `@outcome_selection(name)` adds one.
`<agg>` is an aggregation of `guidance.aggregation` (last, min, mean, prod).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from trl_vlprm.guidance.aggregation import AGGREGATIONS, reads_input_lengths
from trl_vlprm.guidance.policy import Candidate
from trl_vlprm.guidance.strategies import majority_vote, select_best_of_n, weighted_vote
from trl_vlprm.registry import Registry

NO_SCORER = "-"
PAPER_STRATEGY = "best_of_n:paper"


# ---------------------------------------------------------------- strategies over pre-scored samples


@dataclass(frozen=True)
class OutcomeSelection:
    """An outcome-level strategy of the sweep: how one of N finished, scored solutions is picked.

    Attributes:
        choose: `(candidates, aggregation, correct) -> index | None`: the candidate picked (None: no pick) given the
            aggregation named after the colon ("" when none) and, for oracles only, whether each one is correct.
        takes_aggregation: which aggregation names the strategy accepts after a colon (`best_of_n:<agg>`); None
            when it takes none. A strategy that takes one reads the scorers' step scores.
    """

    choose: Callable[[Sequence[Candidate], str, Sequence[bool]], int | None]
    takes_aggregation: Callable[[str], bool] | None = None


OUTCOME_SELECTIONS: Registry[OutcomeSelection] = Registry("outcome selection")


def outcome_selection(name: str, takes_aggregation: Callable[[str], bool] | None = None):
    """Decorator: registers `choose(candidates, aggregation, correct) -> index | None` as the sweep strategy `name`."""

    def decorator(choose):
        OUTCOME_SELECTIONS.register(name)(OutcomeSelection(choose, takes_aggregation))
        return choose

    return decorator


def _any_aggregation(how: str) -> bool:
    return how in AGGREGATIONS


def _step_aggregation(how: str) -> bool:  # the weighted vote sums scores, which the paper's -1 would not mean
    return how in AGGREGATIONS and not reads_input_lengths(how)


@outcome_selection("majority")
def _majority(candidates, aggregation, correct):
    return majority_vote(candidates)


@outcome_selection("first")
def _first(candidates, aggregation, correct):
    return 0 if candidates else None


@outcome_selection("pass@n")
def _pass_at_n(candidates, aggregation, correct):  # the oracle upper bound: a correct solution whenever there is one
    return next((i for i, ok in enumerate(correct) if ok), 0 if candidates else None)


@outcome_selection("best_of_n", takes_aggregation=_any_aggregation)
def _best_of_n(candidates, aggregation, correct):
    return select_best_of_n(candidates, aggregation) if candidates else None


@outcome_selection("weighted_vote", takes_aggregation=_step_aggregation)
def _weighted_vote(candidates, aggregation, correct):
    return weighted_vote(candidates, aggregation)


def parse_strategy(strategy: str) -> tuple[OutcomeSelection, str]:
    """The outcome selection and the aggregation a sweep strategy name ("best_of_n:min") stands for; an error naming
    the strategy when it is unknown or takes no such aggregation."""
    name, _, aggregation = strategy.partition(":")
    selection = OUTCOME_SELECTIONS.get(name, f"strategy {strategy!r}")
    takes = selection.takes_aggregation
    if takes is None and aggregation:
        raise ValueError(f"strategy {strategy!r}: {name!r} takes no aggregation")
    if takes is not None and not takes(aggregation):
        accepted = [how for how in AGGREGATIONS if takes(how)]
        raise ValueError(f"strategy {strategy!r}: {name}:<agg> takes <agg> in {accepted}, got {aggregation!r}")
    return selection, aggregation


def check_strategy(strategy: str) -> None:
    """Raise a `ValueError` naming the strategy when it is not one `OUTCOME_SELECTIONS` can run (see the table in the
    module docstring)."""
    parse_strategy(strategy)


def needs_whole_solution(strategies: Sequence[str]) -> bool:
    """Whether the sampling pass must also score every solution whole (for `best_of_n:paper`)."""
    return PAPER_STRATEGY in strategies


def uses_scorer(strategy: str) -> bool:
    return parse_strategy(strategy)[0].takes_aggregation is not None


def strategy_correct(strategy: str, samples: Sequence[Mapping[str, Any]], scorer: str | None) -> bool:
    """Whether `strategy` answers correctly from these graded samples (step scores read under `scorer`)."""
    selection, aggregation = parse_strategy(strategy)
    if strategy == PAPER_STRATEGY:
        candidates = [_whole_candidate(sample, scorer) for sample in samples]
    else:
        candidates = [
            Candidate(
                steps=sample["steps"],
                finished=True,
                answer=sample["vote_answer"],
                step_scores=sample["step_scores"][scorer] if scorer not in (None, NO_SCORER) else [],
            )
            for sample in samples
        ]
    chosen = selection.choose(candidates, aggregation, [bool(sample["correct"]) for sample in samples])
    return chosen is not None and bool(samples[chosen]["correct"])


def _whole_candidate(sample: Mapping[str, Any], scorer: str) -> Candidate:
    if scorer not in (sample.get("whole_score") or {}):
        raise ValueError(
            f"a sample has no whole-solution score under scorer {scorer!r}: it was sampled without "
            f"{PAPER_STRATEGY!r} among the strategies; sample again into another output_dir"
        )
    whole = sample["whole_score"][scorer]
    if whole is None:  # an empty solution: nothing was scored, it ranks last
        return Candidate([], True, sample["vote_answer"])
    return Candidate(["<whole solution>"], True, sample["vote_answer"], step_scores=[whole["p"]],
                     step_input_lengths=[whole["input_length"]])  # fmt: skip


def subsample_indices(n_max: int, n: int, num_subsamples: int, seed: int) -> list[list[int]]:
    """`num_subsamples` random subsets of size n of range(n_max) (in random order); one draw per seed offset."""
    if not 1 <= n <= n_max:
        raise ValueError(f"N={n} must be between 1 and n_max={n_max}")
    return [random.Random(f"{seed}:{n}:{k}").sample(range(n_max), n) for k in range(num_subsamples)]


def derive_accuracies(
    records: Sequence[Mapping[str, Any]],
    strategies: Sequence[str],
    scorers: Sequence[str],
    n_values: Sequence[int],
    num_subsamples: int,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Accuracy of every (scorer, strategy, N) on sampled records: mean over subsamples of the mean over questions.

    Returns rows {scorer, strategy, n, accuracy, std (over subsamples), num_questions}; strategies that need no
    scorer come once, with scorer "-".
    """
    cache: dict[tuple[int, int], list[list[int]]] = {}

    def subsets(n_max: int, n: int) -> list[list[int]]:
        if (n_max, n) not in cache:
            cache[n_max, n] = subsample_indices(n_max, n, num_subsamples, seed)
        return cache[n_max, n]

    rows = []
    for strategy in strategies:
        check_strategy(strategy)
        names = list(scorers) if uses_scorer(strategy) else [NO_SCORER]
        if strategy == PAPER_STRATEGY:  # only scorers that report PRM input lengths have the paper's reward
            names = [s for s in names if not any(s in r.get("no_input_lengths", []) for r in records)]
        for scorer in names:
            for n in n_values:
                per_draw = []
                for draw in range(num_subsamples):
                    hits = 0
                    for record in records:
                        samples = record["samples"]
                        indices = subsets(len(samples), n)[draw]
                        hits += strategy_correct(strategy, [samples[i] for i in indices], scorer)
                    per_draw.append(hits / len(records) if records else 0.0)
                mean = sum(per_draw) / len(per_draw)
                std = (sum((a - mean) ** 2 for a in per_draw) / len(per_draw)) ** 0.5
                rows.append(
                    {
                        "scorer": scorer,
                        "strategy": strategy,
                        "n": n,
                        "accuracy": mean,
                        "std": std,
                        "num_questions": len(records),
                    }
                )
    return rows
