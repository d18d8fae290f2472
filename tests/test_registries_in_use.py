"""Every "pick it by name" place of the library is one `Registry`: an unknown name fails with the list of what is
available, and an entry registered from outside is used by the public entry points with no other change."""

from __future__ import annotations

import contextlib
import re

import pytest

from trl_vlprm.data.answers import ANSWER_KINDS, AnswerKind, grade
from trl_vlprm.data.converters import CONVERTERS, convert_dataset
from trl_vlprm.data.schema import RecordError
from trl_vlprm.eval.benchmarks import BENCHMARKS, benchmark, load_benchmark
from trl_vlprm.eval.process_bench import PROCESS_BENCHES, load_process_bench_spec
from trl_vlprm.eval.selection import (
    OUTCOME_SELECTIONS,
    check_selection,
    derive_accuracies,
    outcome_selection,
    selection_correct,
    uses_scorer,
)
from trl_vlprm.guidance.aggregation import AGGREGATIONS, aggregate, reads_input_lengths
from trl_vlprm.guidance.rewards import VLPRMReward
from trl_vlprm.guidance.strategies import STRATEGIES, SearchConfig, SearchResult, get_strategy, select_best_of_n
from trl_vlprm.guidance.tts import TTSArguments
from trl_vlprm.labeling.combine import RULES, Combined, combination_rule, combine
from trl_vlprm.labeling.config import LabelConfig
from trl_vlprm.registry import Registry, UnknownNameError
from trl_vlprm.types import Candidate


class ConstantScorer:
    def score(self, question, candidates):
        return [[0.5] * len(c.steps) for c in candidates]


UNKNOWN_NAMES = {
    "strategy": (
        lambda: get_strategy("mcts"),
        "unknown strategy 'mcts'; available: beam_search, best_of_n, dvts, greedy, majority, step_selection, "
        "weighted_vote",
    ),
    "tts strategy": (
        lambda: TTSArguments(strategy="mcts"),
        "TTSArguments.strategy='mcts': unknown strategy 'mcts'; available: beam_search, best_of_n, dvts, greedy, "
        "majority, step_selection, weighted_vote",
    ),
    "aggregation": (
        lambda: aggregate([0.5], "max"),
        "unknown aggregation 'max'; available: last, mean, min, paper, prod",
    ),
    "search config aggregation": (
        lambda: SearchConfig(aggregation="max"),
        "SearchConfig.aggregation='max': unknown aggregation 'max'; available: last, mean, min, paper, prod",
    ),
    "reward aggregation": (
        lambda: VLPRMReward(ConstantScorer(), aggregation="max"),
        "unknown aggregation 'max'; available: last, mean, min, paper, prod",
    ),
    "benchmark": (
        lambda: load_benchmark("mmlu"),
        "unknown benchmark 'mmlu'; available: algopuzzlevqa, mathvision, mathvista, mmmu, puzzlevqa, testbed; "
        "did you mean 'mmmu'?",
    ),
    "process bench": (
        lambda: load_process_bench_spec("processbench:x=1"),
        "process bench spec 'processbench:x=1': unknown bench 'processbench'; available: algopuzzlevqa, puzzlevqa, "
        "testbed, visualprocessbench; did you mean 'visualprocessbench'?",
    ),
    "converter": (
        lambda: convert_dataset([], "prm800k"),
        "unknown source format 'prm800k'; available: trl_stepwise, visualprm400k, vlprm300k; did you mean "
        "'vlprm300k' or 'visualprm400k'?",
    ),
    "answer kind": (
        lambda: grade("B", "B", kind="symbolic"),
        "unknown answer kind 'symbolic'; available: free_form, multiple_choice, numeric (or 'auto')",
    ),
    "labelling rule": (
        lambda: combine("majority", 1, [True]),
        "unknown combination rule 'majority'; available: consensus, judge_first_error_confirmed_by_mc, "
        "judge_only, mc_only, vlprm",
    ),
    "label config rule": (
        lambda: LabelConfig(rule="majority"),
        "LabelConfig.rule='majority': unknown combination rule 'majority'; available: consensus, "
        "judge_first_error_confirmed_by_mc, judge_only, mc_only, vlprm",
    ),
    "outcome selection": (
        lambda: check_selection("mcts:min"),
        "selection 'mcts:min': unknown outcome selection 'mcts'; available: best_of_n, first, majority, pass@n, "
        "weighted_vote",
    ),
}


@pytest.mark.parametrize("place", UNKNOWN_NAMES)
def test_an_unknown_name_lists_what_is_available(place):
    trigger, message = UNKNOWN_NAMES[place]
    with pytest.raises(UnknownNameError) as caught:
        trigger()
    assert str(caught.value) == message
    # Callers that caught the ValueError (a bad setting) or the KeyError (a failed lookup) still do.
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, KeyError)


def test_the_sweep_names_the_aggregations_a_selection_accepts():
    with pytest.raises(ValueError) as caught:
        check_selection("weighted_vote:paper")
    expected = "selection 'weighted_vote:paper': weighted_vote:<agg> takes <agg> in ['last', 'mean', 'min', 'prod']"
    assert str(caught.value) == expected + ", got 'paper'"
    with pytest.raises(ValueError, match="selection 'majority:min': 'majority' takes no aggregation"):
        check_selection("majority:min")
    with pytest.raises(ValueError, match="needs the PRM input lengths"):
        VLPRMReward(ConstantScorer(), aggregation="paper")
    assert uses_scorer("best_of_n:paper") and not uses_scorer("pass@n")


@contextlib.contextmanager
def registered(registry: Registry, name: str, obj=None):
    """Keep an entry registered for the duration of a test (`obj` None: it is registered by the block itself)."""
    if obj is not None:
        registry.register(name)(obj)
    try:
        yield
    finally:
        if name in registry:
            registry.unregister(name)
    assert name not in registry


def scored(scores, answer):
    return Candidate(steps=["s"] * len(scores), finished=True, answer=answer, step_scores=scores)


def test_a_registered_aggregation_reaches_search_sweep_and_reward():
    def second_worst(step_scores, input_lengths=None):
        return sorted(step_scores)[1] if len(step_scores) > 1 else float(step_scores[0])

    with registered(AGGREGATIONS, "second_min", second_worst):
        assert SearchConfig(aggregation="second_min").aggregation == "second_min"
        candidates = [scored([0.1, 0.9, 0.9], "a"), scored([0.4, 0.5, 0.3], "b")]
        assert aggregate([0.1, 0.9, 0.9], "second_min") == 0.9 and aggregate([], "second_min") == 0.0
        assert select_best_of_n(candidates, "second_min") == 0 and select_best_of_n(candidates, "min") == 1
        check_selection("best_of_n:second_min")
        check_selection("weighted_vote:second_min")  # it reads step scores alone, so the weighted vote takes it
        assert not reads_input_lengths("second_min")
        assert VLPRMReward(ConstantScorer(), aggregation="second_min").aggregation == "second_min"
    with pytest.raises(ValueError, match=re.escape("['last', 'mean', 'min', 'paper', 'prod'], got 'second_min'")):
        check_selection("best_of_n:second_min")


def test_a_registered_outcome_selection_runs_in_the_sweep():
    def sample(answer, correct, scores):
        return {"steps": ["s"] * len(scores), "vote_answer": answer, "correct": correct, "step_scores": {"p": scores}}

    records = [
        {"id": "q1", "samples": [sample("a", False, [0.9]), sample("b", True, [0.2])]},
        {"id": "q2", "samples": [sample("c", True, [0.9]), sample("d", False, [0.2])]},
    ]
    with registered(OUTCOME_SELECTIONS, "last"):

        @outcome_selection("last")
        def pick_the_last(candidates, aggregation, correct):
            return len(candidates) - 1 if candidates else None

        assert selection_correct("last", records[0]["samples"], None)
        assert not selection_correct("last", records[1]["samples"], None)
        rows = derive_accuracies(records, ["last", "first"], ["p"], [2], num_subsamples=1)
        # With N = 2 the subset holds both samples in a random order; "last" and "first" then pick opposite ends,
        # so exactly one of them is right on each question and their accuracies sum to 1.
        by_selection = {row["selection"]: row for row in rows}
        assert by_selection["last"]["scorer"] == "-" and by_selection["last"]["num_questions"] == 2
        assert by_selection["last"]["accuracy"] + by_selection["first"]["accuracy"] == pytest.approx(1.0)


def test_a_registered_labelling_rule_is_used_and_its_inputs_checked():
    with registered(RULES, "mc_until_first_bad"):

        @combination_rule("mc_until_first_bad", needs_mc=True, needs_judge=False)
        def mc_until_first_bad(n, mc_labels, verdicts, disagreement, disagreement_weight):
            cut = next((i for i, good in enumerate(mc_labels) if not good), n)
            labels = [True] * cut + [False] * (cut < n) + [None] * max(n - cut - 1, 0)
            return Combined(labels, [0.0 if label is None else 1.0 for label in labels], "mc_cut")

        result = combine("mc_until_first_bad", 4, [True, False, True, False])
        assert result == Combined([True, False, None, None], [1.0, 1.0, 0.0, 0.0], "mc_cut")
        with pytest.raises(ValueError, match="needs one MC label per step"):
            combine("mc_until_first_bad", 2)
        # LabelConfig reads what the rule declares: no judge needed, so judge="none" is accepted.
        assert LabelConfig(rule="mc_until_first_bad", judge="none").mc_config() is not None


def test_a_registered_converter_strategy_benchmark_and_answer_kind_are_used():
    def from_pairs(record, row="?"):
        steps = {"prompt": record["q"], "images": [], "completions": [record["a"]], "labels": [record["ok"]]}
        return {**steps, "step_types": None, "id": str(row), "answer": None, "options": None, "category": None}

    with registered(CONVERTERS, "pairs", from_pairs):
        dataset = convert_dataset([{"q": "1+1?", "a": "2", "ok": True}], "pairs")
        assert dataset[0]["completions"] == ["2"] and dataset[0]["labels"] == [True] and dataset[0]["id"] == "0"

    def forgets_the_id(record, row="?"):
        return {"prompt": "q", "images": [], "completions": ["2"], "labels": [True]}

    with registered(CONVERTERS, "partial", forgets_the_id):  # an error naming the row and the field, not KeyError
        with pytest.raises(RecordError, match="row 0: field 'id': the 'partial' converter returned no such field"):
            convert_dataset([{}], "partial")

    def first_step_only(question, policy, scorer, config):
        return SearchResult(str(question["id"]), "first_step_only", [], None, "B")

    with registered(STRATEGIES, "first_step_only", first_step_only):
        assert get_strategy("first_step_only")({"id": 7}, None, None, SearchConfig()).answer == "B"

    with registered(BENCHMARKS, "letters"):

        @benchmark("letters", default_source="abcdef")
        def load_letters(source, split, limit, prompt_style):
            from datasets import Dataset

            return Dataset.from_list([{"id": letter, "answer": letter} for letter in source])

        # The loader does not apply `limit` itself, so load_benchmark keeps the first `limit` questions.
        assert load_benchmark("letters", limit=2)["id"] == ["a", "b"]
        assert load_benchmark("letters", "xyz")["id"] == ["x", "y", "z"]

    spaced = AnswerKind(extract=lambda text, options: text.strip().lower(), match=lambda p, g, o, tol: p == g.lower())
    with registered(ANSWER_KINDS, "lower", spaced):
        assert grade("  YES ", "Yes", kind="lower") and not grade("no", "Yes", kind="lower")


def test_every_registry_keeps_its_built_in_names():
    assert PROCESS_BENCHES.names() == ["algopuzzlevqa", "puzzlevqa", "testbed", "visualprocessbench"]
    assert CONVERTERS.names() == ["trl_stepwise", "visualprm400k", "vlprm300k"]
    assert ANSWER_KINDS.names() == ["free_form", "multiple_choice", "numeric"]
    assert OUTCOME_SELECTIONS.names() == ["best_of_n", "first", "majority", "pass@n", "weighted_vote"]
    assert [name for name in AGGREGATIONS if reads_input_lengths(name)] == ["paper"]
    assert {name: (RULES[name].needs_mc, RULES[name].needs_judge) for name in RULES} == {
        "consensus": (True, True),
        "judge_first_error_confirmed_by_mc": (True, True),
        "judge_only": (False, True),
        "mc_only": (True, False),
        "vlprm": (True, True),
    }
