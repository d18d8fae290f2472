"""VLPRMTrainer: label positions, loss weighting, learning, save/load, LoRA, heads, text-only TRL parity."""

import re

import pytest
import torch
from datasets import Dataset
from PIL import Image

from trl_vlprm import VLPRMConfig, VLPRMTrainer
from trl_vlprm.data.schema import RecordError, stepwise_features
from trl_vlprm.modeling.heads import correct_probability, load_prm, step_logits
from trl_vlprm.modeling.processor import load_processor
from trl_vlprm.testing import build_tiny_text_prm, build_tiny_vlm
from trl_vlprm.trainer.tokenization import IGNORE_INDEX, tokenize_row

COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220)}


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory):
    return build_tiny_vlm(tmp_path_factory.mktemp("tiny") / "qwen2_vl", arch="qwen2_vl", seed=0)


@pytest.fixture(scope="module")
def tiny_text(tmp_path_factory):
    return build_tiny_text_prm(tmp_path_factory.mktemp("tiny") / "text")


def colour_rows(n: int, seed: int = 0) -> Dataset:
    """A learnable VL task: the step claims the image's colour; it is correct iff the claim matches the pixels."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        truth, claim = (["red", "blue"][int(x)] for x in torch.randint(0, 2, (2,), generator=generator))
        rows.append({
            "id": f"c{i}", "prompt": "<image>What colour is the square?",
            "images": [Image.new("RGB", (112, 112), COLOURS[truth])],
            "completions": ["Let me look.", f"The square is {claim}."],
            "labels": [True, claim == truth], "step_types": ["reasoning", "perception"],
            "answer": truth, "options": ["red", "blue"], "category": "colour",
        })  # fmt: skip
    return Dataset.from_list(rows, features=stepwise_features())


def make_args(tmp_path, **kwargs) -> VLPRMConfig:
    defaults = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=8,
        per_device_eval_batch_size=16,
        num_train_epochs=1,
        learning_rate=3e-3,
        use_cpu=True,
        save_strategy="no",
        max_length=256,
        seed=0,
        logging_steps=50,
        disable_tqdm=True,
        activation_checkpointing=False,
    )  # fmt: skip  (a tiny model: checkpointing would only cost time)
    return VLPRMConfig(**{**defaults, **kwargs})


def test_text_label_positions(tiny_text):
    tokenizer = load_processor(tiny_text)
    row = {"prompt": "Which is larger, 9.8 or 9.11?", "completions": ["11 > 8.", "So 9.11 > 9.8."], "labels": [1, 0]}
    out = tokenize_row(row, tokenizer, step_separator="\n")
    prompt = tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
    sep = tokenizer.encode("\n", add_special_tokens=False)
    step1 = tokenizer("11 > 8.", add_special_tokens=False)["input_ids"] + sep
    step2 = tokenizer("So 9.11 > 9.8.", add_special_tokens=False)["input_ids"] + sep
    assert out["input_ids"] == prompt + step1 + step2
    labelled = [i for i, label in enumerate(out["labels"]) if label != IGNORE_INDEX]
    assert labelled == [len(prompt) + len(step1) - 1, len(prompt) + len(step1) + len(step2) - 1]
    assert [out["labels"][i] for i in labelled] == [1.0, 0.0]
    assert out["num_steps_dropped"] == 0


def test_image_label_positions_and_image_tokens(tiny_vlm):
    processor = load_processor(tiny_vlm)
    row = colour_rows(1)[0]
    out = tokenize_row(row, processor)
    # 112x112 -> 8x8 patches of 14 px -> 2x2 merge -> 16 image tokens, all flagged in mm_token_type_ids.
    image_positions = [i for i, t in enumerate(out["input_ids"]) if t == processor.image_token_id]
    assert len(image_positions) == 16
    assert [i for i, m in enumerate(out["mm_token_type_ids"]) if m == 1] == image_positions
    tokenizer = processor.tokenizer
    steps = [tokenizer(s, add_special_tokens=False)["input_ids"] + tokenizer.encode("\n") for s in row["completions"]]
    total = len(out["input_ids"])
    expected = [total - len(steps[1]) - 1, total - 1]
    assert [i for i, label in enumerate(out["labels"]) if label != IGNORE_INDEX] == expected
    assert [out["step_type_ids"][i] for i in expected] == [0, 1]  # reasoning, perception
    # The text the processor itself would build for this prompt has the same ids.
    reference = processor(
        text=[
            processor.apply_chat_template(
                [
                    {
                        "role": "user",
                        "content": [{"type": "image"}, {"type": "text", "text": "What colour is the square?"}],
                    }
                ],
                add_generation_prompt=True,
            )
        ],
        images=row["images"],
    )["input_ids"][0]
    assert out["input_ids"][: len(reference)] == list(reference)


def test_truncation_drops_whole_steps_and_long_prompt_errors(tiny_text):
    tokenizer = load_processor(tiny_text)
    row = {"prompt": "Q?", "completions": ["first step here", "second step is longer than the budget"],
           "labels": [True, False]}  # fmt: skip
    full = tokenize_row(row, tokenizer)
    first_len = full["labels"].index(1.0) + 1
    cut = tokenize_row(row, tokenizer, max_length=first_len + 2, step_truncation="whole_steps")
    assert cut["input_ids"] == full["input_ids"][:first_len]
    assert cut["num_steps_dropped"] == 1
    assert [x for x in cut["labels"] if x != IGNORE_INDEX] == [1.0]
    with pytest.raises(
        RecordError,
        match=re.escape(
            "row 7: field 'prompt': 2 prompt tokens (images included) exceed "
            "max_length 1; raise max_length or lower max_pixels"
        ),
    ):
        tokenize_row(row, tokenizer, max_length=1, row=7, long_prompt="error")


def test_train_on_last_step_only(tiny_text):
    tokenizer = load_processor(tiny_text)
    row = {"prompt": "Q", "completions": ["a", "b", "c"], "labels": [True, False, True]}
    train = tokenize_row(row, tokenizer, train_on_last_step_only=True, is_eval=False)
    evaluation = tokenize_row(row, tokenizer, train_on_last_step_only=True, is_eval=True)
    assert [x for x in train["labels"] if x != IGNORE_INDEX] == [1.0]
    assert [x for x in evaluation["labels"] if x != IGNORE_INDEX] == [1.0, 0.0, 1.0]


def test_perception_weight_scales_loss_by_factor(tiny_vlm, tmp_path):
    data, model, processor = colour_rows(8), load_prm(tiny_vlm, head="value"), load_processor(tiny_vlm)
    losses = {}
    for weight in (1.0, 3.0):
        trainer = VLPRMTrainer(
            model, make_args(tmp_path, perception_loss_weight=weight), train_dataset=data, processing_class=processor
        )
        batch = trainer.data_collator([trainer.train_dataset[i] for i in range(8)])
        with torch.no_grad():
            losses[weight] = trainer.compute_loss(trainer.model, dict(batch)).item()
            labels, types = batch["labels"], batch["step_type_ids"]
            class_logits = trainer._class_logits(
                trainer.model, {k: v for k, v in batch.items() if k not in ("labels", "step_type_ids")}
            )
            per_step = trainer.step_losses(class_logits, labels)
        perception = types[labels != IGNORE_INDEX] == 1
    # Same model, so the per-step losses are shared: loss = (w * L_perception + L_reasoning) / steps.
    n = per_step.numel()
    assert losses[1.0] == pytest.approx(per_step.sum().item() / n, rel=1e-5)
    expected = (3.0 * per_step[perception].sum() + per_step[~perception].sum()).item() / n
    assert losses[3.0] == pytest.approx(expected, rel=1e-5)
    assert perception.sum().item() == 8 and n == 16


def _probabilities(model, batch, head="value", token_ids=None):
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "step_type_ids")}
    with torch.no_grad():
        logits = model(**inputs).logits
    return correct_probability(step_logits(logits, head, token_ids))[batch["labels"] != IGNORE_INDEX]


def test_learns_toy_task_and_reloads_identically(tiny_vlm, tmp_path):
    train, held_out = colour_rows(192, seed=0), colour_rows(64, seed=1)
    args = make_args(tmp_path, num_train_epochs=6, eval_strategy="no")
    trainer = VLPRMTrainer(str(tiny_vlm), args, train_dataset=train, eval_dataset=held_out)
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    # Perception steps are 50/50 red/blue claims: chance is 0.5; a PRM that reads the image gets them right.
    print({k: round(v, 3) for k, v in after.items() if "accuracy" in k})
    assert after["eval_perception_accuracy"] >= 0.9, (before, after)
    assert after["eval_accuracy"] >= 0.9
    assert after["eval_loss"] < before["eval_loss"]

    trainer.save_model(str(tmp_path / "prm"))
    reloaded = load_prm(tmp_path / "prm")
    assert reloaded.config.prm_head == "value" and reloaded.config.prm_step_separator == "\n"
    batch = trainer.data_collator([trainer.eval_dataset[i] for i in range(16)])
    trainer.model.eval()
    reloaded.eval()
    torch.testing.assert_close(
        _probabilities(reloaded, batch), _probabilities(trainer.model, batch), atol=1e-6, rtol=0
    )
    assert load_processor(tmp_path / "prm").image_token_id == trainer.processing_class.image_token_id


def test_generative_head_trains_plus_minus_tokens(tiny_vlm, tmp_path):
    data = colour_rows(64)
    trainer = VLPRMTrainer(
        str(tiny_vlm), make_args(tmp_path, head="generative", num_train_epochs=10), train_dataset=data
    )
    positive, negative = trainer.prm_token_ids
    assert trainer.processing_class.tokenizer.decode([positive]) == "+"
    assert trainer.processing_class.tokenizer.decode([negative]) == "-"
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(16)])
    with torch.no_grad():
        start = trainer.compute_loss(trainer.model, dict(batch)).item()
    trainer.train()
    with torch.no_grad():
        end = trainer.compute_loss(trainer.model, dict(batch)).item()
    assert end < 0.7 * start
    trainer.save_model(str(tmp_path / "gen"))
    model = load_prm(tmp_path / "gen")
    assert model.config.prm_head == "generative"
    assert (model.config.prm_positive_token_id, model.config.prm_negative_token_id) == (positive, negative)


def test_lora_trains_adapters_and_value_head_only(tiny_vlm, tmp_path):
    from peft import LoraConfig

    base = load_prm(tiny_vlm, head="value")
    reference = {k: v.clone() for k, v in base.state_dict().items()}
    peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    trainer = VLPRMTrainer(
        base,
        make_args(tmp_path, max_steps=5),
        train_dataset=colour_rows(40),
        processing_class=load_processor(tiny_vlm),
        peft_config=peft_config,
    )
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or ".score." in n for n in trainable)
    assert any(".score." in n for n in trainable)
    trainer.train()
    merged = trainer.model.merge_and_unload().state_dict()
    q_proj = "model.language_model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(merged[q_proj], reference[q_proj])  # adapters learned something
    mlp = "model.language_model.layers.0.mlp.up_proj.weight"
    assert torch.equal(merged[mlp], reference[mlp])  # untouched by LoRA


def test_freeze_vision_tower_keeps_encoder_trains_merger(tiny_vlm, tmp_path):
    trainer = VLPRMTrainer(
        str(tiny_vlm), make_args(tmp_path, max_steps=3, freeze_vision_tower=True), train_dataset=colour_rows(24)
    )
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    after = dict(trainer.model.named_parameters())
    encoder = [n for n in before if ".visual." in f".{n}" and ".merger." not in n]
    merger = [n for n in before if ".merger." in n]
    assert encoder and merger
    assert all(torch.equal(before[n], after[n]) for n in encoder)
    assert any(not torch.equal(before[n], after[n]) for n in merger)


def test_soft_labels_use_one_logit_value_head(tiny_vlm, tmp_path):
    rows = colour_rows(16).to_list()
    for row in rows:
        row["labels"] = [0.75, 0.25 if not row["labels"][1] else 1.0]
    data = Dataset.from_list(rows, features=stepwise_features(soft_labels=True))
    trainer = VLPRMTrainer(str(tiny_vlm), make_args(tmp_path, max_steps=2), train_dataset=data)
    assert trainer.model.config.num_labels == 1
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    assert sorted(set(batch["labels"][batch["labels"] != IGNORE_INDEX].tolist()))[0] in (0.25, 0.75)
    trainer.train()


def test_bad_row_named_in_error(tiny_vlm, tmp_path):
    rows = colour_rows(3).to_list()
    rows[2]["labels"] = [True]
    data = Dataset.from_list(rows, features=stepwise_features())
    with pytest.raises(RecordError, match=re.escape("row 2: field 'labels': 1 label(s) for 2 step(s)")):
        VLPRMTrainer(str(tiny_vlm), make_args(tmp_path), train_dataset=data)


def _trl_113_tokenize_row():
    """TRL 1.13's own `PRMTrainer.tokenize_row`, read from the released wheel (TRL 1.14 deleted it)."""
    import ast
    import textwrap
    import zipfile
    from itertools import chain
    from pathlib import Path

    wheel = next((Path(__file__).parents[1] / ".cache" / "wheels").glob("trl-1.13.0-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        source = archive.read("trl/experimental/prm/prm_trainer.py").decode()
    function = next(
        n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.FunctionDef) and n.name == "tokenize_row"
    )
    function.decorator_list = []
    namespace = {"chain": chain}
    exec(compile(ast.Module([function], []), "trl_1_13_prm_trainer", "exec"), namespace)
    assert "max_completion_length" in textwrap.dedent(ast.unparse(function))
    return namespace["tokenize_row"]


@pytest.mark.parametrize("bos", [False, True])
def test_text_rows_match_trl_113_prm_tokenization(tiny_text, bos):
    reference = _trl_113_tokenize_row()
    tokenizer = load_processor(tiny_text)
    if bos:
        tokenizer.bos_token = "<|im_start|>"
    rows = [
        {"prompt": "Which number is larger, 9.8 or 9.11?", "completions": ["11 is greater than 8.",
         "Hence, 9.11 > 9.8."], "labels": [True, False]},
        {"prompt": "Count the circles.", "completions": ["There are 3 circles.", "Answer: 3"], "labels": [True, True]},
        {"prompt": "2 + 2 * 3 = ?", "completions": ["2 + 2 = 4", "4 * 3 = 12", "Answer: 12"],
         "labels": [False, False, False]},
    ]  # fmt: skip
    for separator in ("\n", "\n\n"):
        for last_only in (False, True):
            for row in rows:
                theirs = reference(
                    row,
                    tokenizer,
                    separator,
                    max_length=1024,
                    max_completion_length=None,
                    train_on_last_step_only=last_only,
                    is_eval=False,
                )
                ours = tokenize_row(row, tokenizer, separator, max_length=1024, train_on_last_step_only=last_only)
                assert ours["input_ids"] == theirs["input_ids"]
                assert ours["labels"] == [float(x) for x in theirs["labels"]]
    # Token-level truncation (TRL's, the default) and the static method with TRL's signature: identical output,
    # labels included as ints, for budgets that cut inside a step, inside the prompt, and in the completion only.
    for max_length, max_completion_length in [(None, None), (12, None), (5, None), (None, 4), (14, 6), (3, 2)]:
        for row in rows:
            for is_eval in (False, True):
                args = (row, tokenizer, "\n", max_length, max_completion_length, True, is_eval)
                theirs = reference(*args)
                assert VLPRMTrainer.tokenize_row(*args) == theirs
                assert all(type(x) is int for x in VLPRMTrainer.tokenize_row(*args)["labels"])
                ours = tokenize_row(*args[:7])
                assert ours["input_ids"] == theirs["input_ids"] and ours["labels"] == theirs["labels"]


def test_rows_truncated_to_no_step_are_removed_and_logged(tiny_vlm, tmp_path, caplog):
    rows = colour_rows(3).to_list()
    rows[1]["completions"] = ["word " * 200, "The square is red."]
    data = Dataset.from_list(rows, features=stepwise_features())
    with caplog.at_level("WARNING", logger="trl_vlprm.trainer.vlprm_trainer"):
        trainer = VLPRMTrainer(
            str(tiny_vlm), make_args(tmp_path, max_length=80, step_truncation="whole_steps"), train_dataset=data
        )
    assert trainer.train_dataset["id"] == ["c0", "c2"]
    assert "2 trailing step(s) did not fit max_length=80" in caplog.text
    assert "1 row(s) kept no labelled step after truncation and are removed" in caplog.text
