"""How the evaluation sweep picks one of N finished, scored solutions: the outcome selections.

Selections (names in `EvalTTSConfig.selections`):

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
PAPER_SELECTION = "best_of_n:paper"


# ---------------------------------------------------------------- selections over pre-scored samples


@dataclass(frozen=True)
class OutcomeSelection:
    """An outcome selection of the sweep: how one of N finished, scored solutions is picked.

    Attributes:
        choose: `(candidates, aggregation, correct) -> index | None`: the candidate picked (None: no pick) given the
            aggregation named after the colon ("" when none) and, for oracles only, whether each one is correct.
        takes_aggregation: which aggregation names the selection accepts after a colon (`best_of_n:<agg>`); None
            when it takes none. A selection that takes one reads the scorers' step scores.
    """

    choose: Callable[[Sequence[Candidate], str, Sequence[bool]], int | None]
    takes_aggregation: Callable[[str], bool] | None = None


OUTCOME_SELECTIONS: Registry[OutcomeSelection] = Registry("outcome selection")


def outcome_selection(name: str, takes_aggregation: Callable[[str], bool] | None = None):
    """Decorator: registers `choose(candidates, aggregation, correct) -> index | None` as the selection `name`."""

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


def parse_selection(selection: str) -> tuple[OutcomeSelection, str]:
    """The outcome selection and the aggregation a sweep selection name ("best_of_n:min") stands for; an error naming
    the selection when it is unknown or takes no such aggregation."""
    name, _, aggregation = selection.partition(":")
    rule = OUTCOME_SELECTIONS.get(name, f"selection {selection!r}")
    takes = rule.takes_aggregation
    if takes is None and aggregation:
        raise ValueError(f"selection {selection!r}: {name!r} takes no aggregation")
    if takes is not None and not takes(aggregation):
        accepted = [how for how in AGGREGATIONS if takes(how)]
        raise ValueError(f"selection {selection!r}: {name}:<agg> takes <agg> in {accepted}, got {aggregation!r}")
    return rule, aggregation


def check_selection(selection: str) -> None:
    """Raise a `ValueError` naming the selection when it is not one `OUTCOME_SELECTIONS` can run (see the table in the
    module docstring)."""
    parse_selection(selection)


def needs_whole_solution(selections: Sequence[str]) -> bool:
    """Whether the sampling pass must also score every solution whole (for `best_of_n:paper`)."""
    return PAPER_SELECTION in selections


def uses_scorer(selection: str) -> bool:
    return parse_selection(selection)[0].takes_aggregation is not None


def selection_correct(selection: str, samples: Sequence[Mapping[str, Any]], scorer: str | None) -> bool:
    """Whether `selection` answers correctly from these graded samples (step scores read under `scorer`)."""
    rule, aggregation = parse_selection(selection)
    if selection == PAPER_SELECTION:
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
    chosen = rule.choose(candidates, aggregation, [bool(sample["correct"]) for sample in samples])
    return chosen is not None and bool(samples[chosen]["correct"])


def _whole_candidate(sample: Mapping[str, Any], scorer: str) -> Candidate:
    if scorer not in (sample.get("whole_score") or {}):
        raise ValueError(
            f"a sample has no whole-solution score under scorer {scorer!r}: it was sampled without "
            f"{PAPER_SELECTION!r} among the selections; sample again into another output_dir"
        )
    whole = sample["whole_score"][scorer]
    if whole is None:  # an empty solution: nothing was scored, it ranks last
        return Candidate([], True, sample["vote_answer"])
    return Candidate(
        ["<whole solution>"],
        True,
        sample["vote_answer"],
        step_scores=[whole["p"]],
        step_input_lengths=[whole["input_length"]],
    )


def subsample_indices(n_max: int, n: int, num_subsamples: int, seed: int) -> list[list[int]]:
    """`num_subsamples` random subsets of size n of range(n_max) (in random order); one draw per seed offset."""
    if not 1 <= n <= n_max:
        raise ValueError(f"N={n} must be between 1 and n_max={n_max}")
    return [random.Random(f"{seed}:{n}:{k}").sample(range(n_max), n) for k in range(num_subsamples)]


def derive_accuracies(
    records: Sequence[Mapping[str, Any]],
    selections: Sequence[str],
    scorers: Sequence[str],
    n_values: Sequence[int],
    num_subsamples: int,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Accuracy of every (scorer, selection, N) on sampled records: mean over subsamples of the mean over questions.

    Returns rows {scorer, selection, n, accuracy, std (over subsamples), num_questions}; selections that need no
    scorer come once, with scorer "-".
    """
    cache: dict[tuple[int, int], list[list[int]]] = {}

    def subsets(n_max: int, n: int) -> list[list[int]]:
        if (n_max, n) not in cache:
            cache[n_max, n] = subsample_indices(n_max, n, num_subsamples, seed)
        return cache[n_max, n]

    rows = []
    for selection in selections:
        check_selection(selection)
        names = list(scorers) if uses_scorer(selection) else [NO_SCORER]
        if selection == PAPER_SELECTION:  # only scorers that report PRM input lengths have the paper's reward
            names = [s for s in names if not any(s in r.get("no_input_lengths", []) for r in records)]
        for scorer in names:
            for n in n_values:
                per_draw = []
                for draw in range(num_subsamples):
                    hits = 0
                    for record in records:
                        samples = record["samples"]
                        indices = subsets(len(samples), n)[draw]
                        hits += selection_correct(selection, [samples[i] for i in indices], scorer)
                    per_draw.append(hits / len(records) if records else 0.0)
                mean = sum(per_draw) / len(per_draw)
                std = (sum((a - mean) ** 2 for a in per_draw) / len(per_draw)) ** 0.5
                rows.append(
                    {
                        "scorer": scorer,
                        "selection": selection,
                        "n": n,
                        "accuracy": mean,
                        "std": std,
                        "num_questions": len(records),
                    }
                )
    return rows
