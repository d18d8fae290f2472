import itertools
import json

import pytest
from PIL import Image

from trl_vlprm.cli import run
from trl_vlprm.eval.eval_tts import EvalTTSConfig
from trl_vlprm.eval.report import plot_accuracy_vs_n, rows_to_markdown, write_tables
from trl_vlprm.eval.selection import check_selection, derive_accuracies, selection_correct, subsample_indices
from trl_vlprm.eval.tts_sweep import run_sweep, sample_benchmark, samples_path
from trl_vlprm.guidance.backends import Backend, build_from_spec, parse_spec, split_label
from trl_vlprm.testbed import GoldOracleScorer, RandomScorer, ScriptedPolicy, generate_puzzles

STRATEGIES = ["first", "majority", "best_of_n:min", "best_of_n:last", "weighted_vote:min", "pass@n"]


def sample(answer, correct, scores):
    return {"steps": ["s"] * len(scores), "vote_answer": answer, "correct": correct, "step_scores": {"prm": scores}}


# Question 1: two wrong "A" votes outnumber one right "B", but the PRM likes "B".
# Question 2: right "C" is the majority and the best under min, not under last.
RECORDS = [
    {"id": "q1", "samples": [sample("a", False, [0.9, 0.2]), sample("a", False, [0.8, 0.3]),
                             sample("b", True, [0.7, 0.6])]},
    {"id": "q2", "samples": [sample("c", True, [0.5, 0.5]), sample("d", False, [0.4, 0.9]),
                             sample("c", True, [0.6, 0.4])]},
]  # fmt: skip


def test_strategies_on_hand_built_samples():
    q1, q2 = (r["samples"] for r in RECORDS)
    assert not selection_correct("majority", q1, None) and selection_correct("majority", q2, None)
    assert selection_correct("best_of_n:min", q1, "prm") and selection_correct("best_of_n:min", q2, "prm")
    # last: q1 picks b (0.6 > 0.3 > 0.2); q2 picks d (0.9).
    assert selection_correct("best_of_n:last", q1, "prm") and not selection_correct("best_of_n:last", q2, "prm")
    # weighted by min: q1 a = 0.2 + 0.3 = 0.5 < b = 0.6; q2 c = 0.5 + 0.4 = 0.9 > d = 0.4.
    assert selection_correct("weighted_vote:min", q1, "prm") and selection_correct("weighted_vote:min", q2, "prm")
    assert selection_correct("pass@n", q1, None)


def test_derive_accuracies_full_set_and_single_samples():
    rows = derive_accuracies(RECORDS, STRATEGIES, ["prm"], [1, 3], num_subsamples=3)
    table = {(r["selection"], r["scorer"], r["n"]): r["accuracy"] for r in rows}
    assert table["majority", "-", 3] == 0.5
    assert table["best_of_n:min", "prm", 3] == 1.0
    assert table["best_of_n:last", "prm", 3] == 0.5
    assert table["weighted_vote:min", "prm", 3] == 1.0
    assert table["pass@n", "-", 3] == 1.0
    # N = 1: every strategy answers with the one sample it gets, so all agree with "first".
    subsets = subsample_indices(3, 1, 3, seed=0)
    expected = sum(RECORDS[q]["samples"][s[0]]["correct"] for s in subsets for q in (0, 1)) / 6
    for strategy in STRATEGIES:
        scorer = "prm" if ":" in strategy else "-"
        assert table[strategy, scorer, 1] == pytest.approx(expected)
    assert {r["num_questions"] for r in rows} == {2}


def test_subsample_indices():
    subsets = subsample_indices(8, 3, 5, seed=1)
    assert len(subsets) == 5 and all(len(set(s)) == 3 and max(s) < 8 for s in subsets)
    assert subsets == subsample_indices(8, 3, 5, seed=1)
    with pytest.raises(ValueError, match="N=9"):
        subsample_indices(8, 9, 1, seed=0)


def test_check_selection_and_parse_spec():
    check_selection("weighted_vote:prod")
    with pytest.raises(ValueError, match="'best_of_n:max'"):
        check_selection("best_of_n:max")
    with pytest.raises(ValueError, match="'beam_search'"):
        EvalTTSConfig(selections=["beam_search"])
    assert parse_spec("scripted:perception_error_rate=0.3,seed=2") == (
        "scripted",
        [],
        {"perception_error_rate": 0.3, "seed": 2},
    )
    assert split_label("qwen-7b@vllm:/m/a@b") == ("qwen-7b", "vllm:/m/a@b")
    assert split_label("vllm:/m/a@b") == ("vllm:/m/a@b", "vllm:/m/a@b")
    assert parse_spec("hf:/models/qwen,temperature=0.7") == ("hf", ["/models/qwen"], {"temperature": 0.7})


@pytest.fixture(scope="module")
def puzzles():
    return generate_puzzles(24, seed=3, image_size=112)


def test_oracle_best_of_n_equals_pass_at_n_of_error_free_solutions(tmp_path, puzzles):
    policy = ScriptedPolicy(perception_error_rate=0.4, reasoning_error_rate=0.3, seed=0)
    scorers = {"oracle": GoldOracleScorer(), "random": RandomScorer(seed=0)}
    rows = run_sweep({"testbed": puzzles}, {"scripted": policy}, scorers, STRATEGIES, [1, 2, 4], tmp_path, 4)
    assert policy.stats.calls == len(puzzles)  # one generation per question serves every strategy and N
    records = [json.loads(line) for line in samples_path(tmp_path, "testbed", "scripted").read_text().splitlines()]
    assert len(records) == 24 and {len(r["samples"]) for r in records} == {4}
    table = {(r["selection"], r["scorer"], r["n"]): r["accuracy"] for r in rows}
    for n in (1, 2, 4):
        subsets = subsample_indices(4, n, 4, seed=0)

        # A perfect PRM (min of 0/1 scores) finds a solution without any wrong step whenever the subset has one;
        # otherwise all tie at 0 and the subset's first solution is taken (right only by luck).
        def oracle_pick_correct(samples, subset):
            if any(all(samples[i]["gold_correct"]) for i in subset):
                return True
            return samples[subset[0]]["correct"]

        error_free = sum(oracle_pick_correct(r["samples"], s) for r in records for s in subsets) / (24 * 4)
        any_correct = sum(any(r["samples"][i]["correct"] for i in s) for r in records for s in subsets) / (24 * 4)
        assert table["best_of_n:min", "oracle", n] == pytest.approx(error_free)
        assert table["pass@n", "-", n] == pytest.approx(any_correct)
    assert table["best_of_n:min", "oracle", 4] > table["first", "-", 4] + 0.1
    # Every error-free solution is graded correct (the grader and the testbed agree).
    assert all(s["correct"] for r in records for s in r["samples"] if all(s["gold_correct"]))


class CountingPolicy(ScriptedPolicy):
    def sample_solutions(self, question, n):
        self.asked = getattr(self, "asked", []) + [question["id"]]
        return super().sample_solutions(question, n)


def test_sampling_resumes_and_refuses_a_different_run(tmp_path, puzzles):
    path = tmp_path / "s.jsonl"
    questions = list(puzzles.select(range(6)))
    sample_benchmark(questions[:4], CountingPolicy(seed=0), {"oracle": GoldOracleScorer()}, 3, path)
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:3]) + "\n" + lines[3][:20])  # a crash cut the 4th line short
    policy = CountingPolicy(seed=0)
    records = sample_benchmark(questions, policy, {"oracle": GoldOracleScorer()}, 3, path)
    assert policy.asked == [q["id"] for q in questions[3:]]
    assert [r["id"] for r in records] == [q["id"] for q in questions]
    assert len(path.read_text().splitlines()) == 6
    with pytest.raises(ValueError, match="n_max"):
        sample_benchmark(questions, policy, {"oracle": GoldOracleScorer()}, 5, path)


def test_report_tables_and_plot(tmp_path):
    rows = [
        {"benchmark": b, "policy": "p", "scorer": s, "selection": st, "n": n, "accuracy": acc}
        for b in ("mmmu", "testbed")
        for (s, st), (n, acc) in itertools.product(
            [("-", "majority"), ("prm", "best_of_n:min")], [(1, 0.5), (4, 0.75)]
        )
    ]
    markdown = rows_to_markdown(rows)
    assert markdown.splitlines()[0] == "| benchmark | policy | scorer | selection | N=1 | N=4 |"
    assert "| testbed | p | prm | best_of_n:min | 50.0 | 75.0 |" in markdown
    csv_path, md_path = write_tables(rows, tmp_path)
    assert csv_path.read_text().splitlines()[0] == "benchmark,policy,scorer,selection,n,accuracy"
    assert len(csv_path.read_text().splitlines()) == 9
    png = plot_accuracy_vs_n(rows, tmp_path / "plot.png")
    with Image.open(png) as image:
        assert image.format == "PNG" and image.width > 1.5 * image.height  # two panels side by side


def test_recipe_main_writes_table_plot_and_resumes(tmp_path, capsys):
    args = ["--benchmarks", "testbed:5,limit=12", "--policies", "noisy@scripted:perception_error_rate=0.5",
            "--scorers", "oracle", "--selections", "majority", "best_of_n:min", "pass@n",
            "--n_values", "1", "4", "--num_subsamples", "2", "--output_dir", str(tmp_path),
            "--process_benches", "testbed:num_questions=6,solutions_per_question=2"]  # fmt: skip
    run("eval", args)
    first = (tmp_path / "results.csv").read_text()
    assert len(first.splitlines()) == 1 + 3 * 2
    assert (tmp_path / "accuracy_vs_n.png").stat().st_size > 0
    assert "| testbed | noisy | oracle | best_of_n:min |" in capsys.readouterr().out
    process = (tmp_path / "process_bench.md").read_text()
    assert (
        "| testbed:num_questions=6,solutions_per_question=2 | oracle | all | 100.0 | 100.0 | 100.0 | 36 |" in process
    )
    run("eval", args)  # everything sampled: the rerun only re-derives, with the same numbers
    assert (tmp_path / "results.csv").read_text() == first


def test_build_from_spec_gives_config_defaults_to_model_backends_only():
    seen = {}
    builders = {
        "vllm": Backend(lambda args, kwargs, seed: seen.setdefault("vllm", (args, kwargs, seed)), takes_defaults=True),
        "scripted": Backend(lambda args, kwargs, seed: seen.setdefault("scripted", (args, kwargs, seed))),
    }
    defaults = {"step_separator": "\n\n", "temperature": 1.0}
    build_from_spec("vllm:/models/q,temperature=0.5", builders, 3, "policy", defaults)
    build_from_spec("scripted:perception_error_rate=0.1", builders, 3, "policy", defaults)
    assert seen["vllm"] == (["/models/q"], {"step_separator": "\n\n", "temperature": 0.5}, 3)
    assert seen["scripted"] == ([], {"perception_error_rate": 0.1}, 3)
    with pytest.raises(ValueError, match="policy spec 'sglang:x': unknown policy backend 'sglang'"):
        build_from_spec("sglang:x", builders, 0, "policy")


def test_run_sweep_builds_a_policy_only_when_something_is_left_to_sample(tmp_path, puzzles):
    built = []

    def factory():
        built.append(1)
        return ScriptedPolicy(seed=0)

    scorers = {"oracle": GoldOracleScorer()}
    first = run_sweep({"testbed": puzzles}, {"p": factory}, scorers, ["majority"], [1, 2], tmp_path, 2)
    again = run_sweep({"testbed": puzzles}, {"p": factory}, scorers, ["majority"], [1, 2], tmp_path, 2)
    assert len(built) == 1 and first == again
    assert [row["n"] for row in first] == [1, 2] and {row["num_questions"] for row in first} == {24}


class LengthReportingOracle(GoldOracleScorer):
    """The testbed oracle, reporting an input length per step as a PRM does (100 tokens of prompt + 1 per char).

    Its P(+) is 0.9 for a step without error and 0.2 otherwise, so the paper's reward sees both branches.
    """

    def score_with_input_lengths(self, question, candidates):
        scores = [[0.9 if s > 0.5 else 0.2 for s in row] for row in self.score(question, candidates)]
        lengths = [[100 + len("".join(c.steps[: i + 1])) for i in range(len(c.steps))] for c in candidates]
        return scores, lengths


def test_best_of_n_paper_reads_whole_solution_scores(tmp_path, puzzles):
    policy = ScriptedPolicy(perception_error_rate=0.4, reasoning_error_rate=0.3, seed=0)
    strategies = ["first", "best_of_n:paper", "best_of_n:min"]
    rows = run_sweep(
        {"testbed": puzzles}, {"scripted": policy}, {"prm": LengthReportingOracle()}, strategies, [4], tmp_path, 2
    )
    records = [json.loads(line) for line in samples_path(tmp_path, "testbed", "scripted").read_text().splitlines()]
    for record in records:
        for sample in record["samples"]:
            whole = sample["whole_score"]["prm"]
            # One read of the whole solution: P(+) 0.9 only when every step is right, length of all its text.
            assert whole["p"] == (0.9 if all(sample["gold_correct"]) else 0.2)
            assert whole["input_length"] == 100 + len(policy.step_separator.join(sample["steps"]))
            assert len(sample["step_input_lengths"]["prm"]) == len(sample["steps"])

    def paper_pick(samples):  # the paper's rule: shortest among error-free ones, else the first
        rewards = [s["whole_score"]["prm"] for s in samples]
        positive = [i for i, w in enumerate(rewards) if w["p"] >= 0.5]
        if positive:
            return max(positive, key=lambda i: (rewards[i]["p"] ** 0.3 / rewards[i]["input_length"] ** 0.6, -i))
        return 0

    subsets = subsample_indices(4, 4, 2, seed=0)
    expected = sum(
        r["samples"][s[paper_pick([r["samples"][i] for i in s])]]["correct"] for r in records for s in subsets
    )
    table = {(r["selection"], r["scorer"]): r["accuracy"] for r in rows}
    assert table["best_of_n:paper", "prm"] == pytest.approx(expected / (len(records) * 2))
    with pytest.raises(ValueError, match="no whole-solution score under scorer 'prm'"):
        selection_correct("best_of_n:paper", RECORDS[0]["samples"], "prm")
    with pytest.raises(ValueError, match="'weighted_vote:paper'"):
        check_selection("weighted_vote:paper")


class ShiftedLengthOracle(LengthReportingOracle):
    """Another scorer under the same name: its input lengths are 1,000 tokens longer."""

    def score_with_input_lengths(self, question, candidates):
        scores, lengths = super().score_with_input_lengths(question, candidates)
        return scores, [[n + 1000 for n in row] for row in lengths]


def test_a_rescored_sample_gets_new_whole_solution_scores(tmp_path, puzzles):
    questions = list(puzzles.select(range(4)))
    path = tmp_path / "s.jsonl"
    policy = ScriptedPolicy(perception_error_rate=0.4, reasoning_error_rate=0.3, seed=0)
    first = sample_benchmark(questions, policy, {"prm": LengthReportingOracle()}, 3, path, whole_solution=True)
    second = sample_benchmark(
        questions, policy, {"prm": ShiftedLengthOracle()}, 3, path, scorer_pins={"prm": "shifted"}, whole_solution=True
    )
    for old, new in zip(first, second):
        for a, b in zip(old["samples"], new["samples"]):
            assert b["whole_score"]["prm"]["input_length"] == a["whole_score"]["prm"]["input_length"] + 1000
            assert b["step_input_lengths"]["prm"] == [n + 1000 for n in a["step_input_lengths"]["prm"]]
    with pytest.raises(Exception, match="whole_solution"):  # the file was sampled with whole-solution scores
        sample_benchmark(questions, policy, {"prm": LengthReportingOracle()}, 3, path)


def test_best_of_n_paper_leaves_out_scorers_without_input_lengths(tmp_path, puzzles):
    policy = ScriptedPolicy(perception_error_rate=0.4, reasoning_error_rate=0.3, seed=0)
    scorers = {"prm": LengthReportingOracle(), "random": RandomScorer(seed=0)}
    rows = run_sweep({"testbed": puzzles.select(range(6))}, {"scripted": policy}, scorers,
                     ["best_of_n:paper", "best_of_n:min"], [2], tmp_path, 2)  # fmt: skip
    pairs = {(r["selection"], r["scorer"]) for r in rows}
    assert pairs == {("best_of_n:paper", "prm"), ("best_of_n:min", "prm"), ("best_of_n:min", "random")}


def test_every_name_of_the_sweep_is_checked_before_any_sampling():
    """A typo'd benchmark, process bench, policy or scorer is refused by the config, naming the setting, the spec
    and what is available. A process bench's name was read only after the whole sweep had sampled and scored."""
    cases = {
        "benchmarks": (["testbed:0,limit=4", "testbd:0"], r"EvalTTSConfig.benchmarks: 'testbd:0': unknown benchmark "
                       r"'testbd'; available: algopuzzlevqa, mathvision, mathvista, mmmu, puzzlevqa, testbed"),
        "process_benches": (["puzlevqa:limit_per_category=5"], r"EvalTTSConfig.process_benches: 'puzlevqa:limit_"
                            r"per_category=5': unknown bench 'puzlevqa'; available: algopuzzlevqa, puzzlevqa"),
        "scorers": (["oracle", "r@randm"], r"EvalTTSConfig.scorers: scorer spec 'randm': unknown scorer backend "
                    r"'randm'"),
        "policies": (["s@scriptd:seed=1"], r"EvalTTSConfig.policies: policy spec 'scriptd:seed=1': unknown policy "
                     r"backend"),
    }  # fmt: skip
    for setting, (specs, message) in cases.items():
        with pytest.raises(ValueError, match=message):
            EvalTTSConfig(**{setting: specs})
    with pytest.raises(ValueError, match=r"EvalTTSConfig.benchmarks: 'b@testbd:2': unknown benchmark 'testbd'"):
        EvalTTSConfig(benchmarks=["a@testbed:0", "b@testbd:2"])
    assert EvalTTSConfig(benchmarks=["a@testbed:0,limit=4"], process_benches=["testbed"], scorers=["oracle"]).scorers


def test_plot_has_a_panel_per_scorer_and_a_legend_entry_per_selection(tmp_path):
    """A demo-sized sweep (3 scorers x 6 selections) once drew 17 lines and 17 legend entries in one panel."""
    from trl_vlprm.eval.report import plot_layout

    selections = {"-": ["first", "majority", "pass@n"], "s": ["best_of_n:min", "best_of_n:last", "weighted_vote:min"]}
    rows = [
        {"benchmark": "tb", "policy": "p", "scorer": scorer if kind == "s" else "-", "selection": selection, "n": n,
         "accuracy": 0.1 * k + 0.01 * n}
        for k, scorer in enumerate(["vlprm", "oracle", "random"])
        for kind, names in selections.items()
        for selection in names
        for n in (1, 2, 4)
        if kind == "s" or k == 0
    ]  # fmt: skip
    scorers, columns, lines = plot_layout(rows)
    assert scorers == ["vlprm", "oracle", "random"] and columns == ["tb"]
    for scorer in scorers:
        panel = lines[(scorer, "tb")]
        assert sorted(name for name, *_ in panel) == sorted(selections["s"] + selections["-"])  # each once
        assert sorted(name for name, _, reads in panel if reads) == sorted(selections["s"])
    png = plot_accuracy_vs_n(rows, tmp_path / "plot.png")
    with Image.open(png) as image:
        assert image.width > 2 * image.height  # one benchmark: the three scorers' panels side by side
