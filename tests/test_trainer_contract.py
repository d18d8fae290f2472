"""VLPRMTrainer beyond TRL's own tests: the rest of TRL's PRMTrainer contract (defaults, logits as predictions,
collators, model_init, PEFT type check, processing_class=None), per-step loss weights, seeding, truncation policy,
model cards, and clear errors for training data that cannot train."""

import json
import re

import pytest
import torch
from datasets import Dataset, IterableDataset
from PIL import Image
from transformers import AutoModelForTokenClassification, DataCollatorForTokenClassification

from trl_vlprm import VLPRMConfig, VLPRMTrainer
from trl_vlprm.data.schema import RecordError, stepwise_features
from trl_vlprm.modeling.processor import load_processor
from trl_vlprm.testing import build_tiny_text_prm, build_tiny_vlm
from trl_vlprm.trainer import compute_accuracy
from trl_vlprm.trainer.config import bf16_available
from trl_vlprm.trainer.metrics import bad_step_metrics, correct_probabilities
from trl_vlprm.trainer.tokenization import IGNORE_INDEX, tokenize_row

ROWS = [
    {"id": "a", "prompt": "Which is larger, 9.8 or 9.11?", "completions": ["11 > 8.", "So 9.11 > 9.8."],
     "labels": [True, False]},
    {"id": "b", "prompt": "2 + 2 * 3 = ?", "completions": ["2 * 3 = 6", "2 + 6 = 8", "Answer: 8"],
     "labels": [True, True, True]},
    {"id": "c", "prompt": "Count the circles.", "completions": ["There are 3.", "Answer: 4"], "labels": [True, False]},
    {"id": "d", "prompt": "Is 7 prime?", "completions": ["7 has no divisor but 1 and 7.", "Yes."],
     "labels": [True, True]},
]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_text(tmp_path_factory):
    return build_tiny_text_prm(tmp_path_factory.mktemp("tiny") / "text")


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory):
    return build_tiny_vlm(tmp_path_factory.mktemp("tiny") / "qwen2_vl", arch="qwen2_vl", seed=0)


def args_for(tmp_path, **kwargs) -> VLPRMConfig:
    defaults = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        max_steps=2,
        learning_rate=1e-3,
        use_cpu=True,
        save_strategy="no",
        max_length=128,
        disable_tqdm=True,
        logging_steps=1,
    )
    return VLPRMConfig(**{**defaults, **kwargs})


def text_model(path):
    return AutoModelForTokenClassification.from_pretrained(path, dtype="float32")


def test_defaults_follow_trl_prm_config(tmp_path):
    args = VLPRMConfig(output_dir=str(tmp_path))
    assert args.learning_rate == 1e-5 and args.logging_steps == 10
    assert args.gradient_checkpointing is True and args.activation_checkpointing is True
    assert args.bf16 is bf16_available()  # TRL's default where the hardware has bf16, off on a CPU-only machine
    if not torch.cuda.is_available():
        assert args.bf16 is False
    assert VLPRMConfig(output_dir=str(tmp_path), gradient_checkpointing=False).activation_checkpointing is False
    assert VLPRMConfig(output_dir=str(tmp_path), use_cpu=True, bf16=None).bf16 is False
    assert args.step_truncation == "tokens" and args.long_prompt == "truncate"


def test_predictions_are_logits_and_trl_metrics_work(tiny_text, tmp_path):
    data = Dataset.from_list(ROWS)
    seen = {}

    def preprocess(logits, labels):
        seen["logits"] = logits
        return logits

    trainer = VLPRMTrainer(
        text_model(tiny_text),
        args_for(tmp_path),
        train_dataset=data,
        eval_dataset=data,
        processing_class=load_processor(tiny_text),
        compute_metrics=compute_accuracy,
        preprocess_logits_for_metrics=preprocess,
    )
    output = trainer.predict(trainer.eval_dataset)
    assert isinstance(seen["logits"], torch.Tensor) and seen["logits"].shape[-1] == 2
    assert output.predictions.ndim == 3 and output.predictions.shape[:2] == output.label_ids.shape
    mask = output.label_ids != IGNORE_INDEX
    assert mask.sum() == 9  # one label a step
    predicted = output.predictions.argmax(-1)[mask]
    assert output.metrics["test_accuracy"] == pytest.approx((predicted == output.label_ids[mask]).mean())


def test_default_metrics_keep_per_step_type_results(tiny_vlm, tmp_path):
    rows = []
    for i, (claim, truth) in enumerate([("red", "red"), ("blue", "red"), ("red", "blue"), ("blue", "blue")] * 2):
        rows.append(
            {
                "id": f"r{i}",
                "prompt": "<image>What colour is it?",
                "answer": truth,
                "options": [],
                "category": "",
                "images": [Image.new("RGB", (56, 56), (200, 0, 0) if truth == "red" else (0, 0, 200))],
                "completions": ["Let me look.", f"It is {claim}."],
                "labels": [i % 3 != 0, claim == truth],
                "step_types": ["reasoning", "perception"],
            }
        )
    data = Dataset.from_list(rows, features=stepwise_features())
    trainer = VLPRMTrainer(
        str(tiny_vlm), args_for(tmp_path, per_device_eval_batch_size=3), train_dataset=data, eval_dataset=data
    )
    metrics = trainer.evaluate()
    output = trainer.predict(trainer.eval_dataset)
    mask = output.label_ids != IGNORE_INDEX
    probabilities, labels = correct_probabilities(output.predictions)[mask], output.label_ids[mask]
    perception = [j % 2 == 1 for j in range(len(labels))]  # each row: reasoning then perception
    expected = bad_step_metrics(probabilities[perception], labels[perception])
    assert metrics["eval_perception_accuracy"] == pytest.approx(expected["accuracy"])
    assert metrics["eval_perception_num_steps"] == 8 and metrics["eval_reasoning_num_steps"] == 8
    assert metrics["eval_accuracy"] == pytest.approx(bad_step_metrics(probabilities, labels)["accuracy"])


def test_trl_collator_pretokenized_rows_and_no_processing_class(tiny_text, tmp_path):
    tokenizer = load_processor(tiny_text)
    tokenized = [VLPRMTrainer.tokenize_row(r, tokenizer, "\n", None, None, False, False) for r in ROWS]
    pretokenized = Dataset.from_list(tokenized)
    assert sorted(pretokenized.column_names) == ["input_ids", "labels"]
    # TRL's own collator, records tokenized by the trainer: only input_ids and labels reach it.
    trainer = VLPRMTrainer(
        text_model(tiny_text),
        args_for(tmp_path),
        train_dataset=Dataset.from_list(ROWS),
        processing_class=tokenizer,
        data_collator=DataCollatorForTokenClassification(tokenizer),
    )
    assert sorted(trainer.train_dataset.column_names) == ["input_ids", "labels"]
    assert trainer.train().training_loss > 0
    # Pretokenized rows, TRL's collator, no processing class.
    trainer = VLPRMTrainer(
        text_model(tiny_text),
        args_for(tmp_path),
        train_dataset=pretokenized,
        data_collator=DataCollatorForTokenClassification(tokenizer),
    )
    assert trainer.processing_class is None and trainer.train().training_loss > 0
    # Pretokenized rows with the default collator (no step types: every step counts as untyped, weight 1).
    trainer = VLPRMTrainer(
        text_model(tiny_text), args_for(tmp_path), train_dataset=pretokenized, processing_class=tokenizer
    )
    batch = trainer.data_collator([pretokenized[i] for i in range(4)])
    assert (batch["step_type_ids"][batch["labels"] != IGNORE_INDEX] == 2).all()
    with pytest.raises(ValueError, match="A `processing_class` must be specified"):
        VLPRMTrainer(text_model(tiny_text), args_for(tmp_path), train_dataset=Dataset.from_list(ROWS))


def test_model_init_and_peft_config_type(tiny_text, tmp_path):
    calls = []

    def model_init():
        calls.append(1)
        return text_model(tiny_text)

    trainer = VLPRMTrainer(
        args=args_for(tmp_path),
        train_dataset=Dataset.from_list(ROWS),
        processing_class=load_processor(tiny_text),
        model_init=model_init,
    )
    trainer.train()
    assert len(calls) == 2  # once at init, once more by train(), as transformers does
    assert trainer.model.config.prm_head == "value"  # prepared like a given model
    assert all(m.p == 0 for m in trainer.model.modules() if isinstance(m, torch.nn.Dropout))
    with pytest.raises(
        TypeError,
        match=re.escape("`peft_config` must be a `peft.PeftConfig` instance (e.g. `peft.LoraConfig`), got dict."),
    ):
        VLPRMTrainer(
            text_model(tiny_text),
            args_for(tmp_path),
            train_dataset=Dataset.from_list(ROWS),
            processing_class=load_processor(tiny_text),
            peft_config={"r": 8},
        )


def test_label_weights_multiply_step_losses_exactly(tiny_text, tmp_path):
    rows = [dict(r, label_weights=w) for r, w in zip(ROWS, [[0.0, 1.0], [100.0, 1.0, 0.0], [1.0, 100.0], [0.0, 0.0]])]
    losses = {}
    for use in (True, False):
        trainer = VLPRMTrainer(
            text_model(tiny_text),
            args_for(tmp_path, use_label_weights=use),
            train_dataset=Dataset.from_list(rows),
            processing_class=load_processor(tiny_text),
        )
        batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
        inputs = {k: v for k, v in batch.items() if k not in ("labels", "step_type_ids", "label_weights")}
        with torch.no_grad():
            losses[use] = trainer.compute_loss(trainer.model, dict(batch)).item()
            per_step = trainer.step_losses(trainer._class_logits(trainer.model, inputs), batch["labels"])
    weights = torch.tensor([0.0, 1.0, 100.0, 1.0, 0.0, 1.0, 100.0, 0.0, 0.0])
    assert per_step.numel() == 9
    assert losses[True] == pytest.approx((weights * per_step).sum().item() / 9, rel=1e-5)
    assert losses[False] == pytest.approx(per_step.mean().item(), rel=1e-5)
    bad = [dict(ROWS[0], label_weights=[1.0, -1.0])] + ROWS[1:]
    with pytest.raises(RecordError, match=re.escape("row 0: field 'label_weights': weight 1 is -1.0")):
        VLPRMTrainer(
            text_model(tiny_text),
            args_for(tmp_path),
            train_dataset=Dataset.from_list(bad),
            processing_class=load_processor(tiny_text),
        )


def test_same_seed_same_training(tiny_vlm, tmp_path):
    rows = [
        {
            "id": f"s{i}",
            "prompt": "<image>Colour?",
            "images": [Image.new("RGB", (28, 28), (9 * i, 0, 0))],
            "completions": ["It is red."],
            "labels": [i % 2 == 0],
        }
        for i in range(8)
    ]
    data = Dataset.from_list(rows)
    runs = []
    for _ in range(2):
        trainer = VLPRMTrainer(str(tiny_vlm), args_for(tmp_path, max_steps=3, seed=7), train_dataset=data)
        runs.append(
            (
                [h["loss"] for h in trainer.train() and trainer.state.log_history if "loss" in h],
                trainer.model.score.weight.detach().clone(),
            )
        )
        torch.rand(1000)  # the global RNG moves on between runs, as in any program
    assert len(runs[0][0]) == 3 and runs[0][0] == runs[1][0]
    assert torch.equal(runs[0][1], runs[1][1])


def test_truncation_policies_and_counts(tiny_text, tmp_path, caplog):
    long_prompt = dict(ROWS[0], id="long", prompt="word " * 60)
    data = Dataset.from_list([long_prompt] + ROWS[1:])
    with caplog.at_level("WARNING", logger="trl_vlprm.trainer.vlprm_trainer"):
        trainer = VLPRMTrainer(
            text_model(tiny_text),
            args_for(tmp_path, max_length=40),
            train_dataset=data,
            processing_class=load_processor(tiny_text),
        )
    assert trainer.train_dataset["id"] == ["b", "c", "d"]
    assert "1 row(s) have a prompt (image tokens included) longer than max_length=40" in caplog.text
    assert "1 row(s) kept no labelled step after truncation and are removed" in caplog.text
    with pytest.raises(RecordError, match="row long: field 'prompt': .* exceed max_length 40"):
        VLPRMTrainer(
            text_model(tiny_text),
            args_for(tmp_path, max_length=40, long_prompt="error"),
            train_dataset=data,
            processing_class=load_processor(tiny_text),
        )


@pytest.mark.parametrize(
    "dataset, error, message",
    [
        (Dataset.from_list([]), ValueError, "`train_dataset` is empty (0 rows)"),
        (Dataset.from_list(ROWS).to_iterable_dataset(), TypeError, "`train_dataset` is an IterableDataset"),
        (Dataset.from_list([dict(ROWS[0], prompt="word " * 60)]), ValueError,
         "train dataset: none of its 1 row(s) keeps a labelled step after tokenization (max_length=40"),
        (Dataset.from_list([dict(r, labels=[str(x) for x in r["labels"]]) for r in ROWS]), RecordError,
         "row 0: field 'labels': label 0 is 'True'; expected a bool or a float in [0, 1]"),
    ],
)  # fmt: skip
def test_training_data_that_cannot_train_is_a_clear_error(tiny_text, tmp_path, dataset, error, message):
    assert isinstance(dataset, (Dataset, IterableDataset))
    with pytest.raises(error, match=re.escape(message)):
        VLPRMTrainer(str(tiny_text), args_for(tmp_path, max_length=40), train_dataset=dataset)


def test_vision_rows_with_image_tokens_in_steps_or_extreme_images_name_the_row(tiny_vlm):
    processor = load_processor(tiny_vlm)
    row = {
        "prompt": "<image>Colour?",
        "images": [Image.new("RGB", (28, 28))],
        "completions": ["ok", "bad"],
        "labels": [True, False],
    }
    with pytest.raises(
        RecordError, match=re.escape("row q7: field 'completions': step 1 contains the vision token(s) <|image_pad|>")
    ):
        tokenize_row(dict(row, completions=["ok", "see <|image_pad|> here"]), processor, row="q7")
    with pytest.raises(RecordError, match=re.escape("row q8: field 'images[0]': 2x500 image: aspect ratio above 200")):
        tokenize_row(dict(row, images=[Image.new("RGB", (2, 500))]), processor, row="q8")


def test_model_card_with_every_checkpoint(tiny_text, tmp_path):
    trainer = VLPRMTrainer(
        text_model(tiny_text),
        args_for(tmp_path, save_strategy="steps", save_steps=1),
        train_dataset=Dataset.from_list(ROWS),
        processing_class=load_processor(tiny_text),
    )
    trainer.train()
    for folder in (tmp_path / "out", tmp_path / "out" / "checkpoint-1", tmp_path / "out" / "checkpoint-2"):
        card = (folder / "README.md").read_text()
        assert "@article{ong2025training" in card and "arXiv:2509.23250" in card
        assert "trained with VL-PRM" in card and "- trl_vlprm" in card and "- prm" in card
    assert json.loads((tmp_path / "out" / "checkpoint-2" / "trainer_state.json").read_text())["global_step"] == 2
    assert VLPRMTrainer._name == "VL-PRM" and VLPRMTrainer._paper["id"] == "2509.23250"
