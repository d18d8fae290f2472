"""Dataset opening from every place users keep data, testbed supervision sampling, and the demo end to end."""

import json

import pytest

from trl_vlprm.data.loading import load_records
from trl_vlprm.data.schema import validate_dataset
from trl_vlprm.testbed import sample_supervision


@pytest.fixture(scope="module")
def supervision():
    return sample_supervision(12, solutions_per_puzzle=3, perception_error_rate=0.5, reasoning_error_rate=0.5, seed=4)


def test_sample_supervision_labels_are_the_gold(supervision):
    assert len(supervision) == 36
    assert validate_dataset(supervision) == 36
    assert supervision[0]["id"].endswith("#0") and supervision[2]["id"].endswith("#2")
    labels = [label for row in supervision for label in row["labels"]]
    assert 0 < labels.count(False) < len(labels)  # both classes present at these error rates
    for row in supervision:
        # First-error convention: once a step is wrong, every later step is wrong.
        first_bad = row["labels"].index(False) if False in row["labels"] else len(row["labels"])
        assert row["labels"] == [True] * first_bad + [False] * (len(row["labels"]) - first_bad)
        assert row["step_types"][0] == "perception"


@pytest.mark.parametrize("form", ["saved", "parquet", "shards", "jsonl"])
def test_load_records_every_local_form(supervision, tmp_path, form):
    if form == "saved":
        supervision.save_to_disk(str(tmp_path / "saved"))
        source = tmp_path / "saved"
    elif form == "parquet":
        source = tmp_path / "data.parquet"
        supervision.to_parquet(str(source))
    elif form == "shards":
        (tmp_path / "shards" / "a").mkdir(parents=True)
        supervision.select(range(20)).to_parquet(str(tmp_path / "shards" / "a" / "shard-0.parquet"))
        supervision.select(range(20, 36)).to_parquet(str(tmp_path / "shards" / "shard-1.parquet"))
        source = tmp_path / "shards"
    else:
        source = tmp_path / "data.jsonl"
        source.write_text("".join(json.dumps({k: row[k] for k in ("prompt", "completions", "labels")}) + "\n"
                                  for row in supervision))  # fmt: skip
    loaded = load_records(str(source))
    assert len(loaded) == 36
    assert sorted(map(tuple, loaded["labels"])) == sorted(map(tuple, supervision["labels"]))


def test_load_records_errors_name_the_path(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="neither a saved dataset nor Parquet shards"):
        load_records(str(tmp_path / "empty"))
    (tmp_path / "data.csv").write_text("a\n1\n")
    with pytest.raises(ValueError, match=r"data.csv: unsupported dataset file type '.csv'"):
        load_records(str(tmp_path / "data.csv"))


def test_demo_runs_every_stage_and_resumes(tmp_path, capsys):
    from trl_vlprm.demo import main

    args = ["--output_dir", str(tmp_path), "--label_questions", "12", "--eval_questions", "6", "--train_puzzles",
            "24", "--max_steps", "20", "--lookalike_steps", "20", "--hard_steps", "20", "--n", "4",
            "--transfer_limit", "2"]  # fmt: skip
    main(args)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["label_quality"]["labelled"] > 0
    assert 0.0 <= summary["eval_after"]["eval_perception_accuracy"] <= 1.0
    assert set(summary["guidance"]) == {"greedy", "majority", "best_of_n:last", "best_of_n:min", "best_of_n:mean",
                                        "best_of_n:prod", "weighted_vote:min", "beam_search:min"}  # fmt: skip
    assert (tmp_path / "eval_tts" / "accuracy_vs_n.png").stat().st_size > 10_000
    table = (tmp_path / "eval_tts" / "results.md").read_text()
    assert "| testbed-learnable | scripted-systematic | vlprm | best_of_n:min |" in table
    out = capsys.readouterr().out
    page = tmp_path / "eval_tts" / "view.html"
    assert f"(open in a browser): {page}" in out
    html = page.read_text()
    assert html.count('"id":"') >= 6 and html.count("data:image/png;base64,") >= 1 and "vlprm" in html
    assert "mean |delta P(correct)|" in out and "random pick" in out and "| perception |" in out
    # the demo's PRM learns from the demo's own hybrid labels; the lookalike-tier one is reported on its own tier
    assert "| untrained: accuracy / bad-step F1 | hybrid-trained: accuracy / bad-step F1 |" in out
    assert "| lookalike-trained: accuracy / bad-step F1 |" in out
    assert (tmp_path / "hybrid" / "vlprm" / "model.safetensors").exists() and summary["eval_after_lookalike"]
    assert (tmp_path / "lookalike" / "vlprm" / "model.safetensors").exists()
    # both PRMs on the real PuzzleVQA bench (2 puzzles of each of its 20 types), the lookalike one per type too
    assert set(summary["puzzlevqa_transfer"]) == {"learnable tier (one shape)", "lookalike tier"}
    for aucs in summary["puzzlevqa_transfer"].values():
        assert set(aucs) == {"colour", "colour_swapped", "drawn_colour_swaps", "other", "reasoning", "algopuzzlevqa"}
        assert all(0.0 <= v <= 1.0 for v in aucs.values())
    assert "| color_grid (colour) | 2 |" in out and "| all types, pooled | 40 |" in out
    assert json.loads((tmp_path / "hybrid" / "cpu_recipe.json").read_text())["train_dataset"]
    # the lookalike PRM on its warmed-up tower, judging captions word by word, read with its own and the next image
    assert (tmp_path / "lookalike" / "tiny-qwen2-vl-warm" / "vision_warmup.json").exists()
    config = json.loads((tmp_path / "lookalike" / "vlprm" / "config.json").read_text())
    assert config["prm_word_verdicts"] == "perception"
    reading = summary["image_reading"]
    assert set(reading) == {"own", "next_image", "num_rows"} and reading["num_rows"] == 24
    assert "with their own image" in out and "vision warm-up: held-out colour accuracy" in out
    # step 8: a row per tier, the hard one's PRM trained in the background while steps 4-7 ran
    assert (tmp_path / "hard" / "vlprm" / "model.safetensors").exists() and summary["eval_after_hard"]
    assert "| hard (grids, counts, digit sums, clocks) | gold | 24 |" in out
    first = out
    main(args)  # every stage's output exists: the rerun reads it back and prints the same figures
    second = capsys.readouterr().out
    assert [line for line in first.splitlines() if "|" in line] == [
        line for line in second.splitlines() if "|" in line
    ]
