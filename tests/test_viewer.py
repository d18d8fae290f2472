"""`trl-vlprm view` without a browser: what the sample files now record, what the page embeds, and errors naming the
file and line. The page in a real browser: tests/test_viewer_browser.py."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from trl_vlprm.data.references import image_digest
from trl_vlprm.eval import process_bench
from trl_vlprm.eval.tts_sweep import run_sweep
from trl_vlprm.eval.viewer import ViewInputError, build_view, score_colour, write_view
from trl_vlprm.eval.viewer.summary import calibration
from trl_vlprm.guidance.strategies import SearchConfig
from trl_vlprm.guidance.tts import run_tts
from trl_vlprm.testbed import GoldOracleScorer, RandomScorer, ScriptedPolicy, generate_puzzles


def page_data(html: str) -> dict:
    block = re.search(r'<script id="view-data" type="application/json">(.*?)</script>', html, re.S).group(1)
    return json.loads(block)


@pytest.fixture(scope="module")
def puzzles():
    return list(generate_puzzles(8, seed=4, image_size=96))


def test_score_colour_runs_red_yellow_green():
    assert score_colour(0.0) == (214, 69, 65)
    assert score_colour(0.5) == (240, 200, 80)
    assert score_colour(1.0) == (67, 160, 71)
    assert score_colour(0.25) == (227, 135, 73)  # halfway red -> yellow, rounded half up
    assert score_colour(-3) == score_colour(0.0) and score_colour(7) == score_colour(1.0)


def test_calibration_of_a_collapsed_scorer_shows_no_separation():
    """The failure the viewer is for: every step scored about 0.85, misread or not."""
    pairs = [(0.85, 1)] * 60 + [(0.85, 0)] * 40
    cal = calibration("collapsed", pairs)
    assert cal.mean_good == pytest.approx(0.85) and cal.mean_bad == pytest.approx(0.85)
    assert cal.bins == [(pytest.approx(0.85), 0.6, 100)]
    assert cal.ece == pytest.approx(0.25)
    assert cal.good_hist[17] == 60 and cal.bad_hist[17] == 40 and sum(cal.good_hist) + sum(cal.bad_hist) == 100


def test_tts_lines_record_prompt_and_image_references_and_runs_sit_side_by_side(tmp_path, puzzles):
    config = SearchConfig(n=4, aggregation="min")
    for name, scorer in (("oracle", GoldOracleScorer()), ("random", RandomScorer(0))):
        run_tts(puzzles, "best_of_n", ScriptedPolicy(0.3, 0.3, seed=2), scorer, config, tmp_path / f"{name}.jsonl",
                show_progress=False)  # fmt: skip
    lines = [json.loads(x) for x in (tmp_path / "oracle.jsonl").read_text().splitlines()]
    for question, line in zip(puzzles, lines):
        assert line["prompt"] == question["prompt"]
        assert line["image_refs"] == [{"digest": image_digest(question["images"][0])}]  # in memory: no path
    html, summary = build_view([tmp_path / "oracle.jsonl", tmp_path / "random.jsonl"], questions=puzzles)
    data = page_data(html)
    assert summary.num_questions == len(puzzles) and summary.missing_images == []
    for question, line in zip(data["questions"], lines):
        assert [run["name"] for run in question["runs"]] == ["best_of_n · oracle", "best_of_n · random"]
        oracle = question["runs"][0]
        assert len(question["solutions"]) == 8 and oracle["solutions"] == [0, 1, 2, 3]
        assert oracle["pick"] == line["chosen"] and oracle["correct"] == line["correct"]
        assert oracle["scores"] == [c["step_scores"] for c in line["candidates"]]
        assert question["prompt"] == line["prompt"] and question["images"] == [question["images"][0]]
    # without the questions, the in-memory images are reported missing, one per question, not dropped silently
    _, bare = build_view([tmp_path / "oracle.jsonl"])
    assert len(bare.missing_images) == len(puzzles)


def test_sweep_samples_view_picks_as_the_sweep_does(tmp_path, puzzles):
    from trl_vlprm.eval.selection import selection_correct

    scorers = {"oracle": GoldOracleScorer(), "random": RandomScorer(1)}
    run_sweep({"tb": puzzles}, {"p": ScriptedPolicy(0.3, 0.3, seed=3)}, scorers, ["best_of_n:min"], [4], tmp_path)
    samples = tmp_path / "samples" / "tb__p.jsonl"
    records = [json.loads(x) for x in samples.read_text().splitlines()]
    assert all(r["prompt"] == q["prompt"] and len(r["image_refs"]) == 1 for r, q in zip(records, puzzles))
    summary = write_view([samples], tmp_path / "v.html", questions=puzzles, selection="best_of_n:min")
    data = page_data(summary.path.read_text())
    assert data["scorers"] == ["oracle", "random"]  # the controls (oracle, random) come after any PRM
    for question, record in zip(data["questions"], records):
        for run in question["runs"]:
            assert run["correct"] == selection_correct("best_of_n:min", record["samples"], run["name"])
        random_disagree = sum(
            (score >= 0.5) != good
            for sample in record["samples"]
            for score, good in zip(sample["step_scores"]["random"], sample["gold_correct"])
        )
        assert question["flags"]["disagree"] == {"oracle": 0, "random": random_disagree}


def test_process_bench_lines_show_gold_and_predicted_first_error(tmp_path):
    bench = process_bench.testbed_process_bench(num_questions=6, solutions_per_question=2, seed=1)
    scores = {"oracle": process_bench.process_bench_step_scores(GoldOracleScorer(), bench)}
    lines = process_bench.process_bench_lines(bench, scores)
    errors = [line["first_error"] for line in lines]
    assert any(e is None for e in errors) and any(e is not None for e in errors)
    for record, line in zip(bench, lines):
        gold = next((i for i, v in enumerate(record["process_correctness"]) if v == -1), None)
        assert line["first_error"] == gold == line["predicted_first_error"]["oracle"]
    path = tmp_path / "bench.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    html, summary = build_view([path], questions=bench)
    data = page_data(html)
    assert summary.kind == "process_bench" and summary.num_questions == 12 and not summary.missing_images
    assert all(q["runs"][0]["correct"] for q in data["questions"])


def test_bad_input_names_the_file_and_line(tmp_path, puzzles):
    run_sweep({"tb": puzzles[:3]}, {"p": ScriptedPolicy(0.3, 0.3, seed=3)}, {"oracle": GoldOracleScorer()},
              ["best_of_n:min"], [2], tmp_path)  # fmt: skip
    good = (tmp_path / "samples" / "tb__p.jsonl").read_text().splitlines()
    cases = {
        "not_json.jsonl": ([good[0], "{oops", good[1]], r"not_json.jsonl:2: not a JSON line"),
        "no_samples.jsonl": ([good[0], '{"id": "x", "answer": "1"}'], r"no_samples.jsonl:2: field 'samples' missing"),
        "unknown.jsonl": (['{"id": "x", "foo": 1}'], r"unknown.jsonl:1: neither a tts results line"),
        "no_steps.jsonl": (
            [good[0].replace('"steps"', '"stepz"', 1)],
            r"no_steps.jsonl:1: samples\[0\]: field 'steps'",
        ),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_text("\n".join(content) + "\n")
        with pytest.raises(ViewInputError, match=message):
            build_view([tmp_path / name])
    # a cut-off last line is what an interrupted run leaves: shown without it, with a warning
    (tmp_path / "cut.jsonl").write_text("\n".join([good[0], good[1][:40]]) + "\n")
    with pytest.warns(UserWarning, match="cut.jsonl:2"):
        _, summary = build_view([tmp_path / "cut.jsonl"])
    assert summary.num_questions == 1


def test_cli_view_writes_the_page_or_one_line_naming_file_and_line(tmp_path, puzzles, capsys):
    from trl_vlprm.cli import main

    run_sweep({"tb": puzzles[:3]}, {"p": ScriptedPolicy(0.3, 0.3, seed=3)}, {"oracle": GoldOracleScorer()},
              ["best_of_n:min"], [2], tmp_path)  # fmt: skip
    samples = tmp_path / "samples" / "tb__p.jsonl"
    assert main(["view", "--inputs", str(samples), "--questions", "puzzles:n=8,seed=4,image_size=96"]) == 0
    page = Path(str(samples) + ".html")
    assert f"wrote {page}: 3 questions (samples), 3 images" in capsys.readouterr().out
    assert len(page_data(page.read_text())["questions"]) == 3
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1, "samples": []}\n{"id": 2}\n')
    with pytest.raises(SystemExit) as exit_info:
        main(["view", "--inputs", str(bad)])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert (
        err
        == f"trl-vlprm view: {bad}:1: field 'answer' missing (an evaluation samples line needs id, answer, samples)"
    )


def test_labelled_dataset_view_shows_labels_mc_and_judge(tmp_path):
    """A hybrid-labelled dataset (MC rollouts + a noisy testbed judge, the paper's rule), from its Parquet shards."""
    import pyarrow.parquet as pq

    from trl_vlprm.labeling import LabelConfig, build_dataset

    config = LabelConfig(dataset="puzzles", num_questions=6, output_dir=str(tmp_path / "labels"), rule="vlprm",
                         num_rollouts=3, mc_mode="binary_search", perception_error_rate=0.4, reasoning_error_rate=0.3,
                         step_separator="\n", judge="testbed", judge_flip_rate_perception=0.3, seed=0)  # fmt: skip
    questions = list(generate_puzzles(6, seed=0, image_size=96))
    build_dataset(questions, ScriptedPolicy(0.4, 0.3, seed=0), config)
    rows = [
        row
        for file in sorted((tmp_path / "labels").glob("shard-*.parquet"))
        for row in pq.read_table(file).to_pylist()
    ]
    html, summary = build_view([tmp_path / "labels"])
    data = page_data(html)
    assert summary.kind == "labelled" and data["kind_labelled"] and summary.missing_images == []
    solutions = [s for q in data["questions"] for s in q["solutions"]]
    assert len(solutions) == len(rows) > 0
    mcjudge = 0
    for solution, row in zip(solutions, rows):
        assert solution["steps"] == row["completions"] and solution["rule"] == "vlprm"
        assert solution["label"] == [int(x) for x in row["labels"]]
        mc, judge = json.loads(row["mc"]), json.loads(row["judge"])
        assert solution["judge"] == judge["verdicts"][: len(row["completions"])]
        mcjudge += sum(
            bool(m) != (v == "correct")
            for m, v in zip(mc["labels"], judge["verdicts"][: len(row["completions"])])
            if m is not None and v in ("correct", "incorrect")
        )
    assert sum(q["flags"]["mcjudge"] for q in data["questions"]) == mcjudge > 0
    assert 'id="f-mcjudge"' in html and "MC estimate" in html  # the filter and the MC calibration card


def test_eval_samples_find_their_images_through_the_pinned_benchmark(tmp_path):
    """No --questions: the page reloads the benchmark the samples' .meta.json pins (testbed images live in memory)."""
    from trl_vlprm.cli import run

    run("eval", ["--benchmarks", "testbed:3,limit=5", "--scorers", "oracle", "--selections", "best_of_n:min",
                 "--n_values", "2", "--num_subsamples", "1", "--output_dir", str(tmp_path)])  # fmt: skip
    (samples,) = (tmp_path / "samples").glob("*.jsonl")
    records = [json.loads(line) for line in samples.read_text().splitlines()]
    html, summary = build_view([samples])
    assert summary.missing_images == [] and summary.num_images == len({r["image_refs"][0]["digest"] for r in records})
    assert all(q["images"] != [None] for q in page_data(html)["questions"])
    samples.with_suffix(".meta.json").rename(tmp_path / "moved.json")  # without the pin: counted missing, not lost
    _, bare = build_view([samples])
    assert len(bare.missing_images) == len(records) == 5
