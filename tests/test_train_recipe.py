"""recipes/train.py as a TRL user runs it: splits kept apart, rows without steps skipped with a count, metrics files,
a model card, and `--push_to_hub` wired to the Hub (which this machine cannot reach: the test checks that the call is
made and fails offline with huggingface_hub's own message; the upload itself is not exercised)."""

import importlib.util
import json
import logging
from pathlib import Path

import pytest
from datasets import Dataset
from huggingface_hub.errors import OfflineModeIsEnabled
from trl import ModelConfig, TrlParser

from trl_vlprm import VLPRMConfig, VLPRMTrainer
from trl_vlprm.testing import build_tiny_text_prm

REPO = Path(__file__).resolve().parents[1]


def load_recipe():
    spec = importlib.util.spec_from_file_location("train_recipe", REPO / "recipes" / "train.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    return recipe


def rows(prefix: str, n: int) -> list[dict]:
    return [{"id": f"{prefix}{i}", "prompt": f"What is {i} + {i}?", "completions": [f"{i} + {i} = {2 * i}", "Done."],
             "labels": [True, i % 2 == 0]} for i in range(n)]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_text(tmp_path_factory):
    return build_tiny_text_prm(tmp_path_factory.mktemp("tiny") / "text")


@pytest.fixture
def hub_layout(tmp_path) -> Path:
    """A local dataset folder laid out as on the Hub: data/train-*.parquet and data/test-*.parquet."""
    folder = tmp_path / "dataset"
    (folder / "data").mkdir(parents=True)
    empty = [{"id": "empty0", "prompt": "No steps?", "completions": [], "labels": []}]
    Dataset.from_list(rows("train", 12) + empty).to_parquet(str(folder / "data" / "train-00000-of-00001.parquet"))
    Dataset.from_list(rows("test", 4)).to_parquet(str(folder / "data" / "test-00000-of-00001.parquet"))
    return folder


def parse(recipe, *argv: str):
    return TrlParser((recipe.PRMScriptArguments, VLPRMConfig, ModelConfig)).parse_args_and_config(list(argv))


def common_args(model: Path, data: Path, out: Path) -> list[str]:
    return ["--model_name_or_path", str(model), "--dataset_name", str(data), "--output_dir", str(out),
            "--max_steps", "2", "--per_device_train_batch_size", "4", "--use_cpu", "true", "--learning_rate", "1e-3",
            "--activation_checkpointing", "false", "--disable_tqdm", "true", "--save_strategy", "steps",
            "--save_steps", "1"]  # fmt: skip


def test_hub_layout_keeps_splits_and_writes_metrics_and_card(tiny_text, hub_layout, tmp_path, caplog):
    recipe = load_recipe()
    out = tmp_path / "out"
    args = parse(recipe, *common_args(tiny_text, hub_layout, out), "--eval_strategy", "steps", "--eval_steps", "1")
    with caplog.at_level(logging.WARNING, logger="trl_vlprm.recipes.train"):
        trainer = recipe.main(*args)
    assert "1 of 13 row(s) have no completions and are skipped" in caplog.text
    # Before: train and test shards were read as one split (test rows trained on), and eval_strategy=steps with only
    # dataset_name failed for want of an eval dataset.
    assert sorted(trainer.train_dataset["id"]) == sorted(f"train{i}" for i in range(12))
    assert sorted(trainer.eval_dataset["id"]) == [f"test{i}" for i in range(4)]
    for name in ("train_results.json", "eval_results.json", "all_results.json", "trainer_state.json"):
        assert (out / name).exists(), name
    eval_results = json.loads((out / "eval_results.json").read_text())
    assert eval_results["eval_num_steps"] == 8 and 0 <= eval_results["eval_accuracy"] <= 1
    assert json.loads((out / "all_results.json").read_text())["eval_loss"] == eval_results["eval_loss"]
    for folder in (out, out / "checkpoint-1", out / "checkpoint-2"):
        assert "@article{ong2025training" in (folder / "README.md").read_text()


def test_eval_strategy_without_a_test_split_is_a_clear_error(tiny_text, tmp_path):
    recipe = load_recipe()
    shards = tmp_path / "shards"
    shards.mkdir()
    Dataset.from_list(rows("s", 8)).to_parquet(str(shards / "shard-00000.parquet"))
    args = parse(recipe, *common_args(tiny_text, shards, tmp_path / "out"), "--eval_strategy", "steps")
    with pytest.raises(ValueError, match="eval_strategy='steps' needs evaluation rows: .* has no split 'test'"):
        recipe.main(*args)


def test_push_to_hub_reaches_the_hub(tiny_text, hub_layout, tmp_path, monkeypatch):
    recipe = load_recipe()
    argv = [*common_args(tiny_text, hub_layout, tmp_path / "out"), "--push_to_hub", "true", "--hub_model_id",
            "someone/tiny-vlprm"]  # fmt: skip
    # The repository is created when the trainer starts: offline, huggingface_hub refuses with its own message.
    with pytest.raises(OfflineModeIsEnabled, match="offline mode is enabled"):
        recipe.main(*parse(recipe, *argv))
    # With the Hub calls replaced by recorders (the only stand-in: no Hub here), the recipe pushes once, at the end,
    # after saving the model and its card.
    pushed, checkpoints = [], []
    monkeypatch.setattr(VLPRMTrainer, "init_hf_repo", lambda self, token=None: setattr(self, "push_in_progress", None))
    monkeypatch.setattr(
        VLPRMTrainer, "_push_from_checkpoint", lambda self, folder: checkpoints.append(Path(folder).name)
    )
    monkeypatch.setattr(
        VLPRMTrainer,
        "push_to_hub",
        lambda self, **kwargs: pushed.append((kwargs, sorted(Path(self.args.output_dir).iterdir()))),
    )
    recipe.main(*parse(recipe, *argv))
    # save_model pushes (transformers), then the recipe pushes once more with the card's dataset, as TRL's scripts do.
    assert [kwargs for kwargs, _ in pushed] == [
        {"commit_message": "Model save", "revision": None},
        {"dataset_name": None},
    ]
    assert checkpoints == ["checkpoint-1", "checkpoint-2"]  # transformers pushes every checkpoint too
    assert {"README.md", "model.safetensors", "all_results.json"} <= {f.name for f in pushed[-1][1]}
