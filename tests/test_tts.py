"""The test-time-scaling runner: graded JSONL lines, resume after interruption, refusal to mix runs, the recipe."""

import importlib.util
import json
from pathlib import Path

import pytest

from trl_vlprm.data.answers import grade
from trl_vlprm.data.schema import RecordError
from trl_vlprm.guidance.policy import Candidate
from trl_vlprm.guidance.strategies import STRATEGIES, SearchConfig
from trl_vlprm.guidance.tts import (
    TTSArguments,
    build_policy,
    build_questions,
    build_scorer,
    load_questions,
    read_results,
    run_tts,
)
from trl_vlprm.testbed import GoldOracleScorer, RandomScorer, ScriptedPolicy, generate_puzzles

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def puzzles():
    return list(generate_puzzles(10, seed=0))


def policy():
    return ScriptedPolicy(perception_error_rate=0.3, reasoning_error_rate=0.3, seed=0)


def lines(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_run_writes_graded_lines_and_resumes(tmp_path, puzzles):
    out = tmp_path / "runs" / "beam.jsonl"
    config = SearchConfig(beam_width=2, expansions_per_beam=2)
    first_policy = policy()
    first = run_tts(puzzles[:6], "beam_search", first_policy, GoldOracleScorer(), config, out, show_progress=False)
    assert (first.num_questions, first.num_run, first.num_skipped) == (6, 6, 0)
    written = lines(out)
    assert [r["id"] for r in written] == [q["id"] for q in puzzles[:6]]
    for question, record in zip(puzzles, written):
        assert record["correct"] == grade(record["answer"], question["answer"], question["options"])
        assert record["gold"] == question["answer"]
        assert record["settings"] == {
            "strategy": "beam_search",
            "n": 8,
            "aggregation": "min",
            "beam_width": 2,
            "expansions_per_beam": 2,
            "max_steps": 10,
            "whole_solution": False,
        }
    assert first.num_correct == sum(r["correct"] for r in written)

    # A rerun on a larger set runs only the 4 new questions; the policy is never asked about the first 6.
    second_policy = policy()
    second = run_tts(puzzles, "beam_search", second_policy, GoldOracleScorer(), config, out, show_progress=False)
    assert (second.num_questions, second.num_run, second.num_skipped) == (10, 4, 6)
    assert len(lines(out)) == 10 and len({r["id"] for r in lines(out)}) == 10
    assert second_policy.stats.calls == sum(r["policy_stats"]["calls"] for r in lines(out)[6:])
    assert second.num_correct == sum(r["correct"] for r in lines(out))
    assert second.accuracy == second.num_correct / 10

    # Nothing left: a third run does no work.
    third_policy = policy()
    third = run_tts(puzzles, "beam_search", third_policy, GoldOracleScorer(), config, out, show_progress=False)
    assert (third.num_run, third.num_skipped, third_policy.stats.calls) == (0, 10, 0)
    assert third.num_correct == second.num_correct


def test_line_cut_by_a_crash_is_redone(tmp_path, puzzles):
    out = tmp_path / "greedy.jsonl"
    config = SearchConfig()
    run_tts(puzzles[:4], "greedy", policy(), None, config, out, show_progress=False)
    text = out.read_text()
    out.write_text(text[: len(text) - len(text.splitlines()[-1]) // 2 - 1])  # half of the last line, no newline
    assert [r["id"] for r in read_results(out)] == [q["id"] for q in puzzles[:3]]
    assert len(out.read_text().splitlines()) == 3  # the broken tail was removed from the file
    summary = run_tts(puzzles[:4], "greedy", policy(), None, config, out, show_progress=False)
    assert (summary.num_run, summary.num_skipped) == (1, 3)
    assert [r["id"] for r in lines(out)] == [q["id"] for q in puzzles[:4]]


def test_bad_files_and_records_are_named(tmp_path, puzzles):
    out = tmp_path / "r.jsonl"
    out.write_text('{"id": "a", "correct": true}\nnot json\n{"id": "b", "correct": false}\n')
    with pytest.raises(ValueError, match=r"r\.jsonl:2: malformed result line"):
        read_results(out)
    assert read_results(tmp_path / "missing.jsonl") == []
    foreign = tmp_path / "foreign.jsonl"
    foreign.write_text('{"id": "x", "samples": []}\n')
    with pytest.raises(ValueError, match=r"foreign\.jsonl:1: field 'correct' missing"):
        run_tts(puzzles[:1], "greedy", policy(), None, SearchConfig(), foreign, show_progress=False)

    out = tmp_path / "mixed.jsonl"
    run_tts(puzzles[:2], "greedy", policy(), None, SearchConfig(), out, show_progress=False)
    with pytest.raises(ValueError, match=r"mixed\.jsonl:1: field 'settings'"):
        run_tts(puzzles[:2], "majority", policy(), None, SearchConfig(), out, show_progress=False)

    duplicated = [puzzles[0], puzzles[1], puzzles[0]]
    with pytest.raises(RecordError, match="row 2: field 'id': duplicate id"):
        run_tts(duplicated, "greedy", policy(), None, SearchConfig(), tmp_path / "d.jsonl", show_progress=False)
    no_answer = [{k: v for k, v in puzzles[0].items() if k != "answer"}]
    with pytest.raises(RecordError, match="field 'answer'"):
        run_tts(no_answer, "greedy", policy(), None, SearchConfig(), tmp_path / "e.jsonl", show_progress=False)


def test_random_scorer():
    candidates = [Candidate(steps=["a", "b", "c"]), Candidate(steps=["d"])]
    scores = RandomScorer(seed=5).score({}, candidates)
    assert [len(s) for s in scores] == [3, 1] and all(0.0 <= x < 1.0 for s in scores for x in s)
    assert RandomScorer(seed=5).score({}, candidates) == scores != RandomScorer(seed=6).score({}, candidates)


def test_load_questions_from_files(tmp_path, puzzles):
    rows = [{"id": q["id"], "prompt": q["prompt"].replace("<image>", ""), "answer": q["answer"]} for q in puzzles]
    path = tmp_path / "questions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    loaded = load_questions(str(path), max_questions=3)
    assert [r["id"] for r in loaded] == [q["id"] for q in puzzles[:3]]
    folder = tmp_path / "dataset"
    generate_puzzles(5, seed=1).save_to_disk(str(folder))
    assert len(load_questions(str(folder))) == 5
    with pytest.raises(FileNotFoundError, match="nowhere.csv"):
        load_questions(str(tmp_path / "nowhere.csv"))


def test_arguments_and_builders():
    with pytest.raises(ValueError, match="policy_model_path is needed for policy 'hf'"):
        TTSArguments(policy="hf")
    with pytest.raises(ValueError, match="scorer='judge'"):
        TTSArguments(scorer="judge")
    args = TTSArguments(scorer="random", num_questions=3, seed=2)
    assert isinstance(build_scorer(args), RandomScorer)
    assert build_scorer(TTSArguments(scorer="none")) is None
    assert isinstance(build_scorer(TTSArguments(scorer="oracle")), GoldOracleScorer)
    assert isinstance(build_policy(args), ScriptedPolicy)
    assert [q["id"] for q in build_questions(args)] == [q["id"] for q in generate_puzzles(3, seed=2)]
    assert isinstance(build_policy(TTSArguments(dataset="questions.jsonl")), ScriptedPolicy)  # a puzzles file can be


def test_recipe_runs_the_testbed_config_and_resumes(tmp_path, capsys):
    from trl import TrlParser

    spec = importlib.util.spec_from_file_location("tts_recipe", REPO / "recipes" / "tts.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    out = tmp_path / "testbed.jsonl"
    argv = [
        "--config",
        str(REPO / "recipes/configs/tts_testbed.yaml"),
        "--num_questions",
        "6",
        "--output_file",
        str(out),
    ]
    args, search = TrlParser((TTSArguments, SearchConfig)).parse_args_and_config(argv)
    assert (args.strategy, args.scorer, search.beam_width, search.aggregation) == ("beam_search", "oracle", 4, "min")
    summary = recipe.main(args, search)
    correct = sum(r["correct"] for r in lines(out))
    assert f"beam_search: accuracy {correct / 6:.4f} ({correct}/6); ran 6, skipped 0" in capsys.readouterr().out
    recipe.main(args, search)
    assert "ran 0, skipped 6" in capsys.readouterr().out
    assert lines(out)[0]["settings"]["scorer"] == "oracle"
    args.scorer = "random"  # another scorer must not resume into the same file
    with pytest.raises(ValueError, match="field 'settings'"):
        recipe.main(args, search)
    assert len(lines(out)) == 6 and summary.num_correct == correct


@pytest.mark.parametrize("config", sorted((REPO / "recipes" / "configs").glob("tts_*.yaml")), ids=lambda p: p.name)
def test_configs_parse(config):
    from trl import TrlParser

    args, search = TrlParser((TTSArguments, SearchConfig)).parse_args_and_config(["--config", str(config)])
    assert args.strategy in STRATEGIES and args.output_file.endswith(".jsonl")
    assert args.step_separator.strip() == "" and search.n >= search.beam_width


def test_prm_scorer_guides_a_run(tmp_path, puzzles):
    from trl_vlprm.guidance.scorer import PRMScorer
    from trl_vlprm.testing import build_tiny_prm

    prm_dir = build_tiny_prm(tmp_path / "prm", arch="qwen2_vl", seed=0)  # a random generative PRM: wiring, not skill
    args = TTSArguments(scorer="prm", prm_model_path=str(prm_dir), prm_batch_size=4)
    scorer = build_scorer(args)
    assert isinstance(scorer, PRMScorer) and scorer.batch_size == 4
    out = tmp_path / "prm.jsonl"
    config = SearchConfig(n=4, aggregation="min")
    summary = run_tts(puzzles[:3], "best_of_n", policy(), scorer, config, out, show_progress=False)
    assert summary.num_run == 3
    for record in lines(out):
        scores = [c["step_scores"] for c in record["candidates"]]
        assert [len(s) for s in scores] == [3] * 4 and all(0.0 <= x <= 1.0 for s in scores for x in s)
        assert record["candidate_scores"] == [min(s) for s in scores]
        assert record["chosen"] == record["candidate_scores"].index(max(record["candidate_scores"]))


class _AnswersHalf:
    """A policy whose every solution states "0.5" (the question below is graded differently by kind)."""

    step_separator = "\n"

    def __init__(self):
        from trl_vlprm.types import PolicyStats

        self.stats = PolicyStats()

    def _solutions(self, n):
        from trl_vlprm.types import Continuation

        found = [Continuation(steps=["The answer is 0.5"], finished=True, answer="0.5", num_tokens=4)] * n
        self.stats.record(found)
        return found

    def sample_solutions(self, question, n):
        return self._solutions(n)

    def sample_next_steps(self, question, prefix, n):
        return self._solutions(n)

    def complete(self, question, prefix, n):
        return self._solutions(n)


@pytest.mark.parametrize(("answer_kind", "correct"), [("free_form", False), ("numeric", True), (None, True)])
def test_tts_and_the_sweep_grade_by_the_questions_answer_kind(tmp_path, answer_kind, correct):
    """Gold "1/2", answer "0.5": right as a number, wrong as free-form text. `run_tts` once graded with plain
    `grade` ("auto" reads "1/2" as a number: right) while the sweep honoured the question's `answer_kind`."""
    from trl_vlprm.eval.tts_sweep import sample_question

    question = {"id": "q0", "prompt": "What fraction is shaded?", "images": [], "answer": "1/2", "options": []}
    if answer_kind is not None:
        question["answer_kind"] = answer_kind
    out = tmp_path / "tts.jsonl"
    summary = run_tts([question], "greedy", _AnswersHalf(), None, SearchConfig(), out, show_progress=False)
    swept = sample_question(question, _AnswersHalf(), {}, n_max=1)
    assert [line["correct"] for line in lines(out)] == [correct]
    assert summary.accuracy == float(correct)
    assert [sample["correct"] for sample in swept["samples"]] == [correct]
    assert grade("0.5", "1/2", kind=answer_kind or "auto") is correct
