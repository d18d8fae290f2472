"""Small defects found during the session: `--eval_fraction` splits by question (no question on both sides), a
training error names the row as numbered in the user's file, `check`'s guard-rails refuse a non-finite step score,
and a model folder without its image processor is a one-line CLI error."""

from __future__ import annotations

import json
import math
import shutil
from collections import Counter
from types import SimpleNamespace

import pytest
from PIL import Image

from trl_vlprm.cli import run as cli_run
from trl_vlprm.data.schema import question_key
from trl_vlprm.eval.guardrails import best_of_n_vs_random, image_swap_sensitivity
from trl_vlprm.scripts.train import PRMScriptArguments, load_datasets


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_eval_fraction_holds_out_whole_questions(tmp_path):
    # 40 questions with 1 to 5 solutions each: a row-level split puts most questions' solutions on both sides.
    rows = [
        {"id": f"q{q}#{k}", "prompt": f"question {q}", "completions": ["a", "b"], "labels": [True, k % 2 == 0]}
        for q in range(40)
        for k in range(1 + q % 5)
    ]
    data = write_jsonl(tmp_path / "rows.jsonl", rows)
    args = PRMScriptArguments(dataset_name=str(data), eval_fraction=0.2)
    train, held_out = load_datasets(args, SimpleNamespace(seed=0, eval_strategy="no"))
    train_questions = Counter(question_key(row) for row in train)
    eval_questions = Counter(question_key(row) for row in held_out)
    assert len(train) + len(held_out) == len(rows)
    assert not set(train_questions) & set(eval_questions)  # every question's rows on one side only
    per_question = Counter(question_key(row) for row in rows)
    assert all(per_question[q] == n for q, n in (train_questions + eval_questions).items())
    assert len(eval_questions) == math.ceil(0.2 * 40)  # the share of questions asked for: 8 of 40
    # the same split for the same seed, another for another seed
    again = load_datasets(args, SimpleNamespace(seed=0, eval_strategy="no"))[1]
    other = load_datasets(args, SimpleNamespace(seed=1, eval_strategy="no"))[1]
    assert held_out["id"] == again["id"] and held_out["id"] != other["id"]


def test_eval_fraction_groups_by_question_id_column(tmp_path):
    rows = [
        {"id": f"r{i}", "question_id": f"q{i // 3}", "prompt": "same", "completions": ["a"], "labels": [True]}
        for i in range(30)
    ]
    args = PRMScriptArguments(dataset_name=str(write_jsonl(tmp_path / "rows.jsonl", rows)), eval_fraction=0.3)
    train, held_out = load_datasets(args, SimpleNamespace(seed=0, eval_strategy="no"))
    assert not set(train["question_id"]) & set(held_out["question_id"])
    assert len(set(held_out["question_id"])) == 3  # 30 % of 10 questions


def test_a_missing_image_names_the_row_of_the_file(tmp_path, tiny_qwen2_vl_path, capsys):
    image = tmp_path / "ok.png"
    Image.new("RGB", (56, 56), (200, 30, 30)).save(image)
    rows = [
        {"prompt": f"<image>question {i}", "images": [str(image)], "completions": ["red", "so A"],
         "labels": [True, True]}
        for i in range(12)
    ]  # fmt: skip
    rows[1]["completions"], rows[1]["labels"] = [], []  # skipped on load: later rows move up by one
    rows[9]["images"] = [str(tmp_path / "gone.png")]
    data = write_jsonl(tmp_path / "rows.jsonl", rows)
    argv = ["--model_name_or_path", str(tiny_qwen2_vl_path), "--dataset_name", str(data), "--eval_fraction", "0.25",
            "--output_dir", str(tmp_path / "out"), "--max_steps", "1", "--use_cpu", "true", "--report_to", "none",
            "--max_length", "128", "--activation_checkpointing", "false", "--seed", "0"]  # fmt: skip
    with pytest.raises(SystemExit):
        cli_run("train", argv)
    err = capsys.readouterr().err
    assert f"row 9: field 'images[0]': image file not found: {tmp_path / 'gone.png'}" in err, err


class NaNScorer:
    """Scores every step 0.5, but step 1 of the second solution NaN (what fp16 overflow gives)."""

    def score(self, question, candidates):
        return [[0.5 if (c, s) != (1, 1) else float("nan") for s in range(len(cand.steps))]
                for c, cand in enumerate(candidates)]  # fmt: skip


def test_guard_rails_refuse_a_non_finite_step_score():
    image = Image.new("RGB", (8, 8), (0, 0, 255))
    rows = [
        {"id": f"q{q}#{k}", "prompt": "<image>?", "images": [image], "completions": ["x", "y"],
         "labels": [True, k == 0]}
        for q in range(3)
        for k in range(2)
    ]  # fmt: skip
    expected = r"question q0: candidate 1: NaNScorer returned a non-finite step score nan \(step 1\)"
    with pytest.raises(ValueError, match=expected):
        image_swap_sensitivity(NaNScorer(), rows)
    with pytest.raises(ValueError, match=expected):
        best_of_n_vs_random(NaNScorer(), rows)


def test_a_model_folder_without_image_processor_is_one_line(tmp_path, tiny_qwen2_vl_path, capsys):
    model = shutil.copytree(tiny_qwen2_vl_path, tmp_path / "model")
    for name in ("preprocessor_config.json", "processor_config.json"):
        (model / name).unlink(missing_ok=True)
    rows = [{"prompt": f"q{i}", "completions": ["a"], "labels": [True]} for i in range(2)]
    data = write_jsonl(tmp_path / "rows.jsonl", rows)
    with pytest.raises(SystemExit):
        cli_run("train", ["--model_name_or_path", str(model), "--dataset_name", str(data), "--output_dir",
                          str(tmp_path / "out"), "--use_cpu", "true", "--report_to", "none"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after datasets' progress bars
    assert err == (
        f"trl-vlprm train: {model}: a qwen2_vl model with no saved image processor (neither "
        "preprocessor_config.json nor an image_processor entry in processor_config.json); save the base model's "
        "processor there (`processor.save_pretrained(folder)`)"
    ), err
