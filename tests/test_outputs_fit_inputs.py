"""One command's output is the next one's input, and what a run finds is said where the user looks: reruns keep
earlier results, `train` warns about a PRM that learnt nothing, `eval` and `tts` print `check`'s guard-rails.

Each test failed on b146d26 (what happened then is in its docstring).
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from trl_vlprm import cli


def test_train_warns_on_a_constant_verdict_and_on_a_zero_bad_step_f1():
    """Before: `train` printed the metrics of a PRM calling every step good (bad-step F1 0.0) without a word."""
    from trl_vlprm.trainer.metrics import bad_step_metrics, verdict_warnings

    labels = np.array([1.0, 0.0, 1.0, 0.0, 1.0])
    constant = {f"eval_{k}": v for k, v in bad_step_metrics(np.full(5, 0.9), labels).items()}
    assert constant["eval_predicted_bad_share"] == 0.0 and constant["eval_bad_f1"] == 0.0
    assert verdict_warnings(constant) == [
        "WARNING: constant verdict: the PRM calls all 5 held-out steps good (a majority-class PRM: it learnt nothing "
        "it can rank with); see docs/training.md for settings a CPU PRM learns under"
    ]
    # not constant, but every step it calls bad is good: F1 0
    wrong = {f"eval_perception_{k}": v for k, v in bad_step_metrics(np.array([0.1, 0.9, 0.9, 0.9, 0.9]),
                                                                      labels).items()}  # fmt: skip
    assert wrong["eval_perception_predicted_bad_share"] == 0.2
    assert verdict_warnings(wrong) == [
        "WARNING: held-out bad-step F1 is 0 on 5 perception steps: the PRM finds none of the wrong steps; see "
        "docs/training.md for settings a CPU PRM learns under"
    ]
    learnt = {f"eval_{k}": v for k, v in bad_step_metrics(np.array([0.9, 0.1, 0.8, 0.2, 0.7]), labels).items()}
    assert learnt["eval_bad_f1"] == 1.0 and verdict_warnings(learnt) == []


def _eval(tmp_path, scorers):
    argv = ["eval", "--benchmarks", "testbed:0,limit=6", "--policies", "scripted:perception_error_rate=0.4",
            "--scorers", *scorers, "--selections", "first", "best_of_n:min", "--n_values", "1", "2",
            "--num_subsamples", "2", "--process_benches", "testbed:num_questions=3,solutions_per_question=2",
            "--output_dir", str(tmp_path / "eval")]  # fmt: skip
    assert cli.main(argv) == 0
    with open(tmp_path / "eval" / "results.csv") as file:
        results = list(csv.DictReader(file))
    with open(tmp_path / "eval" / "process_bench.csv") as file:
        process = list(csv.DictReader(file))
    return results, process, (tmp_path / "eval" / "results.md").read_text()


def test_an_eval_rerun_with_fewer_scorers_keeps_the_earlier_rows(tmp_path, caplog):
    """Before: rerunning into the same folder with fewer scorers rewrote results.csv/.md, process_bench.* and the plot
    without the earlier scorers' rows."""
    first, first_process, _ = _eval(tmp_path, ["oracle", "random"])
    assert {row["scorer"] for row in first} == {"oracle", "random", "-"} and len(first) == 6
    again, again_process, markdown = _eval(tmp_path, ["oracle"])
    key = lambda row: tuple(row.values())  # noqa: E731 (a sort key)
    assert sorted(again, key=key) == sorted(first, key=key)  # every earlier row, the same figures
    assert sorted(again_process, key=key) == sorted(first_process, key=key)
    assert "| random | best_of_n:min |" in markdown
    assert "kept 2 row(s) of an earlier run not rerun here: testbed / " in caplog.text


def test_eval_prints_the_below_random_warning_per_n():
    """Before: `sweep_below_random` existed but `trl-vlprm eval` never printed it."""
    from trl_vlprm.scripts.eval import below_random_lines

    row = {"benchmark": "b", "policy": "p", "std": 0.0, "num_questions": 20}
    figures = [("vlprm", 2, 0.40), ("vlprm", 4, 0.30), ("random", 2, 0.50), ("random", 4, 0.25)]
    rows = [{**row, "scorer": s, "selection": "best_of_n:min", "n": n, "accuracy": a} for s, n, a in figures]
    assert below_random_lines(rows) == [
        "WARNING: b/p N=2: best_of_n:min with vlprm (0.400) is below a random scorer on the same samples (0.500); "
        "the PRM is not informative here"
    ]
    without_random = [r for r in rows if r["scorer"] != "random"]
    without_random += [{**row, "scorer": "-", "selection": "first", "n": n, "accuracy": 0.35} for n in (2, 4)]
    lines = below_random_lines(without_random)
    assert [line.split(":")[1] for line in lines] == [" b/p N=4"] and "(0.300)" in lines[0] and "(0.350)" in lines[0]


def test_the_eval_testbed_benchmark_reads_a_puzzles_file(tmp_path):
    """Before: `testbed:<source>` took only a generator seed (hard tier), so `eval` could not read `puzzles` output."""
    from trl_vlprm.data.loading import write_dataset
    from trl_vlprm.eval.specs import load_benchmark_spec
    from trl_vlprm.testbed import generate_puzzles

    puzzles = generate_puzzles(5, seed=9, families="learnable", image_size=84)
    path = write_dataset(puzzles, tmp_path / "held_out.parquet")
    label, questions = load_benchmark_spec(f"testbed:{path},limit=3")
    assert questions["id"] == puzzles["id"][:3] and set(questions["answer_kind"]) == {"multiple_choice"}
    assert load_benchmark_spec("testbed:2,limit=4")[1]["id"] == generate_puzzles(4, seed=2)["id"]


@pytest.fixture(scope="module")
def untrained_prm(tiny_qwen2_vl_path, tmp_path_factory):
    """A value-head PRM that learnt nothing (its head is random): the guard-rails have something to say."""
    import shutil

    from trl_vlprm.modeling.heads import load_prm

    folder = tmp_path_factory.mktemp("prm") / "untrained"
    load_prm(str(tiny_qwen2_vl_path), head="value").save_pretrained(folder)
    for path in tiny_qwen2_vl_path.iterdir():
        if not (folder / path.name).exists():
            shutil.copy(path, folder / path.name)
    return folder


def test_tts_prints_checks_guard_rails_for_a_prm(untrained_prm, tmp_path, capsys):
    """Before: `tts` printed only its accuracy; a PRM below a random pick, or blind to its image, went unsaid."""
    out = tmp_path / "tts.jsonl"
    argv = ["tts", "--dataset", "puzzles", "--num_questions", "6", "--perception_error_rate", "0.5",
            "--strategy", "best_of_n", "--n", "4", "--scorer", "prm", "--prm_model_path", str(untrained_prm),
            "--output_file", str(out)]  # fmt: skip
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out.splitlines()
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 6
    accuracy = sum(line["correct"] for line in lines) / 6
    expected = sum(sum(all(c["gold_correct"]) for c in line["candidates"]) / 4 for line in lines) / 6
    picks = [line for line in printed if line.startswith("N=4: prm")]
    assert picks == [f"N=4: prm picks right on {accuracy:.3f} of 6 questions with 2+ candidates; a random pick among "
                     f"the same candidates {expected:.3f}"]  # fmt: skip
    assert any(line.startswith("WARNING: N=4: the answers prm chose") for line in printed) == (accuracy < expected)
    swaps = [line for line in printed if line.startswith("image swap, ")]
    assert any("perception: mean |delta P(correct)|" in line for line in swaps), printed


def test_the_tts_testbed_configs_advice_to_swap_in_a_prm_works(untrained_prm, tmp_path, capsys):
    """Before: the config said "swap `scorer: prm` + `prm_model_path`", and doing just that was refused because
    `output_file` held the oracle's results. The advice now names a new output file too; run as it says."""
    import re
    import shlex
    from pathlib import Path

    config = Path(__file__).resolve().parents[1] / "recipes" / "configs" / "tts_testbed.yaml"
    advice = re.search(r"#   (trl-vlprm tts .*?)\n#\s+(--output_file \S+)", config.read_text())
    assert advice, "the config's comment shows the command"
    command = advice.group(1).rstrip(" \\") + " " + advice.group(2)
    argv = shlex.split(command.replace("<PRM folder>", str(untrained_prm)))
    small = ["--num_questions", "2", "--n", "2", "--beam_width", "2"]
    first = tmp_path / "outputs/tts/testbed_beam_search.jsonl"
    oracle = ["tts", "--config", str(config), *small, "--output_file", str(first)]
    assert cli.main(oracle) == 0
    swapped = [a if not a.startswith("outputs/") else str(tmp_path / a) for a in argv[1:]]
    assert cli.main([*swapped, *small]) == 0
    assert (tmp_path / "outputs/tts/testbed_beam_search_prm.jsonl").read_text().count("\n") == 2
