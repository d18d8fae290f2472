"""`report_to` as TRL users know it: training passes it to transformers' integrations; the evaluation sweep and
labelling log their tables to the trackers named. TensorBoard (the `trackers` extra, in `dev`) is read back from its
event files; trackio and wandb share the code path but are not installed here."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import pytest

from trl_vlprm.utils.trackers import check_report_to, resolve_report_to


def events(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted(folder.rglob("events.out.tfevents.*"))
    assert files, f"no TensorBoard event file under {folder}"
    accumulator = EventAccumulator(str(files[-1].parent), size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def text(accumulator, tag: str) -> str:
    (event,) = accumulator.Tensors(f"{tag}/text_summary")
    return event.tensor_proto.string_val[0].decode()


def test_report_to_names_are_checked_before_any_work():
    assert resolve_report_to("none") == [] and resolve_report_to(["none"]) == [] and resolve_report_to(None) == []
    assert "tensorboard" in resolve_report_to("all")
    with pytest.raises(ValueError, match=r"EvalTTSConfig.report_to: unknown tracker 'tensorbord'; known: tensorboard"):
        check_report_to(["tensorbord"], "EvalTTSConfig.report_to")
    for name in ("wandb", "trackio"):
        if importlib.util.find_spec(name) is None:
            with pytest.raises(ValueError, match=rf"tracker '{name}' is not installed \(pip install {name}\)"):
                check_report_to([name], "LabelConfig.report_to")
    from trl_vlprm.eval.eval_tts import EvalTTSConfig

    with pytest.raises(ValueError, match="unknown tracker 'tb'"):
        EvalTTSConfig(report_to=["tb"])


def test_eval_sweep_logs_its_tables_and_accuracy_curves_to_tensorboard(tmp_path):
    from trl_vlprm.cli import run

    bench = "testbed:num_questions=4,solutions_per_question=2"
    args = ["--benchmarks", "testbed:5,limit=8", "--scorers", "oracle", "random", "--selections", "majority",
            "best_of_n:min", "--n_values", "1", "4", "--num_subsamples", "2", "--output_dir", str(tmp_path),
            "--process_benches", bench, "--report_to", "tensorboard"]  # fmt: skip
    run("eval", args)
    logged = events(tmp_path / "runs")
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert len(rows) == 2 * 3  # majority, best_of_n:min x (oracle, random), at N = 1 and 4
    for row in rows:
        tag = f"results/{row['benchmark']}/{row['policy']}/{row['scorer']}/{row['selection']}/accuracy"
        by_step = {event.step: event.value for event in logged.Scalars(tag)}
        assert by_step[int(row["n"])] == pytest.approx(float(row["accuracy"]), abs=1e-6)
    table = text(logged, "results")
    assert table.splitlines()[0].startswith("| benchmark | policy | scorer | selection | n | accuracy")
    assert len(table.splitlines()) == 2 + len(rows)
    assert "| oracle | all |" in text(logged, "process_bench").replace(
        "testbed:num_questions=4,solutions_per_question=2 ", ""
    )


def test_labelling_logs_its_summary_and_rule_cases(tmp_path):
    from trl_vlprm.labeling.builder import LabelConfig, run

    config = LabelConfig(dataset="puzzles", num_questions=4, output_dir=str(tmp_path / "labels"), rule="vlprm",
                         num_rollouts=2, mc_mode="binary_search", step_separator="\n", judge="testbed",
                         show_progress=False, report_to=["tensorboard"])  # fmt: skip
    stats = run(config)
    logged = events(tmp_path / "labels" / "runs")
    cases = text(logged, "labelling_cases").splitlines()[2:]
    assert cases == [f"| {case} | {count} |" for case, count in sorted(stats.cases.items())] and cases
    assert [(e.step, e.value) for e in logged.Scalars("labelling_summary/records")] == [(0, stats.records)]
    assert "| rule | vlprm |" in text(logged, "config")


@pytest.mark.slow
def test_training_passes_report_to_through_to_tensorboard(tmp_path):
    from trl_vlprm.cpu_recipe import CPURecipe

    CPURecipe(num_puzzles=6, max_steps=3).train(tmp_path, report_to="tensorboard", logging_steps=1)
    losses = events(tmp_path).Scalars("train/loss")  # transformers' TensorBoard callback, under the output folder
    assert [event.step for event in losses] == [1, 2, 3] and all(event.value > 0 for event in losses)
