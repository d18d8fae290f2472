"""Verdict rows only: the heads read the scored positions from the hidden states, never `[batch, seq, vocab]`.

The reference is the computation before this change, written out here: the model's full outputs (the LM logits of
every token for the generative head), `step_logits`, and the per-step loss over labelled positions. Loss, gradients,
evaluation predictions and scores must equal it to 1e-5 (float32), for both heads, with LoRA too. A forward hook on
the head module records every output it produces: none may have the vocabulary as its last dimension.
"""

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig
from transformers import EvalPrediction

from trl_vlprm import VLPRMConfig, VLPRMTrainer
from trl_vlprm.guidance.scorer import PRMScorer
from trl_vlprm.modeling.heads import correct_probability, load_prm, step_logits
from trl_vlprm.modeling.processor import load_processor
from trl_vlprm.modeling.readout import VerdictTokensMissingError, head_module
from trl_vlprm.testbed.supervision import sample_supervision
from trl_vlprm.testing import build_tiny_vlm
from trl_vlprm.trainer import compute_accuracy
from trl_vlprm.trainer.tokenization import IGNORE_INDEX
from trl_vlprm.types import Candidate

BOOKKEEPING = ("labels", "step_type_ids", "label_weights", "id")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = build_tiny_vlm(tmp_path_factory.mktemp("verdict") / "qwen2_5_vl", arch="qwen2_5_vl", seed=0)
    return path, load_processor(path), sample_supervision(3, solutions_per_puzzle=2, seed=0, image_size=112)


class HeadOutputs:
    """Records the shape of every output of a module (a forward hook)."""

    def __init__(self, module):
        self.shapes: list[tuple[int, ...]] = []
        self.handle = module.register_forward_hook(lambda _m, _i, out: self.shapes.append(tuple(out.shape)))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def make_trainer(tiny, head, tmp_path, peft_config=None, **kwargs):
    path, processor, rows = tiny
    torch.manual_seed(0)
    model = load_prm(path, head=head, dtype=torch.float32)
    settings = dict(
        output_dir=str(tmp_path / "out"), head=head, use_cpu=True, report_to="none", max_length=512,
        per_device_train_batch_size=3, per_device_eval_batch_size=3, activation_checkpointing=False,
        perception_loss_weight=2.0, disable_tqdm=True,
    )  # fmt: skip
    args = VLPRMConfig(**{**settings, **kwargs})
    return VLPRMTrainer(model, args, train_dataset=rows, processing_class=processor, peft_config=peft_config)


def reference_loss(trainer, model, batch):
    """The loss as computed before: full head outputs, `step_logits`, labelled positions, perception weights."""
    inputs = {k: v for k, v in batch.items() if k not in BOOKKEEPING}
    logits = model(**inputs, use_cache=False).logits
    class_logits = step_logits(logits, trainer.head, trainer.prm_token_ids)
    labels = batch["labels"]
    mask = labels != IGNORE_INDEX
    log_probs = torch.log_softmax(class_logits[mask].float(), dim=-1)
    targets = labels[mask].float()
    losses = -(targets * log_probs[:, 1] + (1 - targets) * log_probs[:, 0])
    weights = trainer.step_weights(batch.get("step_type_ids"), labels)
    return (losses * weights).sum() / losses.numel(), logits.shape[-1]


def gradients(model) -> dict[str, torch.Tensor]:
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return grads


@pytest.mark.parametrize("head,lora", [("generative", False), ("value", False), ("generative", True), ("value", True)])
def test_training_loss_and_gradients_equal_full_vocabulary(tiny, tmp_path, head, lora):
    peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]) if lora else None
    trainer = make_trainer(tiny, head, tmp_path, peft_config)
    model = trainer.model.train()
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(3)])
    reference, reference_width = reference_loss(trainer, model, batch)
    reference.backward()
    expected = gradients(model)
    vocab = model.config.get_text_config().vocab_size
    with HeadOutputs(head_module(model, head)) as seen:
        loss = trainer.compute_loss(model, dict(batch))
        loss.backward()
    got = gradients(model)

    labelled = int((batch["labels"] != IGNORE_INDEX).sum())
    classes = 2
    assert seen.shapes == [(labelled, classes)]  # the head ran once, on the labelled positions, 2 columns
    if head == "generative":
        assert reference_width == vocab > 100  # the reference did read the whole vocabulary
    assert loss.item() == pytest.approx(reference.item(), abs=1e-5)
    assert set(got) == set(expected) and len(got) > 0
    if lora:
        assert all("lora_" in name or "score" in name for name in got)
    for name, grad in expected.items():
        torch.testing.assert_close(got[name], grad, atol=1e-5, rtol=1e-5, msg=name)


def test_evaluation_predictions_are_per_token_class_logits(tiny, tmp_path):
    trainer = make_trainer(tiny, "generative", tmp_path, per_device_eval_batch_size=2)
    model = trainer.model.eval()
    vocab = model.config.get_text_config().vocab_size
    with HeadOutputs(head_module(model, "generative")) as seen:
        output = trainer.predict(trainer.train_dataset)
    assert seen.shapes and all(shape[-1] == 2 for shape in seen.shapes)
    assert all(vocab not in shape for shape in seen.shapes)

    # Per-token class logits of every row (TRL's contract), equal to the full-vocabulary reference at every token.
    rows = [trainer.train_dataset[i] for i in range(len(trainer.train_dataset))]
    batch = trainer.data_collator(rows)
    with torch.no_grad():
        inputs = {k: v for k, v in batch.items() if k not in BOOKKEEPING}
        full = step_logits(model(**inputs).logits, "generative", trainer.prm_token_ids)
    predictions = torch.as_tensor(output.predictions)
    assert predictions.shape[0] == len(rows) and predictions.shape[-1] == 2
    width = full.shape[1]
    mask = batch["labels"] != IGNORE_INDEX
    torch.testing.assert_close(predictions[:, :width][mask], full[mask], atol=1e-5, rtol=1e-5)
    accuracy = compute_accuracy(EvalPrediction(output.predictions, output.label_ids))["accuracy"]
    labels = batch["labels"][mask]
    expected = (full[mask].argmax(-1) == labels).float().mean().item()
    assert accuracy == pytest.approx(expected) and mask.sum() > 0


@pytest.mark.parametrize("head", ["generative", "value"])
def test_scorer_reads_only_the_scored_positions(tiny, head, tmp_path):
    path, processor, rows = tiny
    model = load_prm(path, head=head, dtype=torch.float32)
    scorer = PRMScorer(model, processor, batch_size=4)
    question = {"id": "q", "prompt": rows[0]["prompt"], "images": rows[0]["images"]}
    candidates = [Candidate(steps=rows[i]["completions"]) for i in range(len(rows))]
    with HeadOutputs(head_module(model, head)) as seen:
        scores = scorer.score(question, candidates)
    steps = sum(len(c.steps) for c in candidates)
    assert sum(shape[0] for shape in seen.shapes) == steps and all(shape[1:] == (2,) for shape in seen.shapes)

    # Reference: one full forward a candidate (prefix + steps), the head's whole output read at the step ends.
    encoder = scorer.encoder
    prompt = encoder.encode_prompt(question["prompt"], question["images"], "q")
    image_inputs = scorer.family.image_inputs(processor, prompt.images)
    for candidate, got in zip(candidates, scores):
        suffix = encoder.encode_candidate(question["prompt"], prompt, candidate.steps, row="q")
        ids = torch.tensor([prompt.input_ids + suffix.input_ids])
        types = torch.tensor([prompt.mm_token_type_ids + [0] * len(suffix.input_ids)])
        with torch.no_grad():
            logits = model(input_ids=ids, mm_token_type_ids=types, **image_inputs).logits[0]
        ends = [len(prompt.input_ids) + end for end in suffix.ends]
        expected = correct_probability(step_logits(logits[ends], head, scorer.token_ids)).tolist()
        assert got == pytest.approx(expected, abs=1e-5) and len(expected) == len(candidate.steps)


def test_checkpoint_without_the_verdict_tokens_is_refused(tiny, tmp_path):
    path, processor, rows = tiny
    model = load_prm(path, head="generative", dtype=torch.float32)
    plus = processor.tokenizer.convert_tokens_to_ids("+")
    model.config.prm_positive_token_id, model.config.prm_negative_token_id = (
        plus,
        model.config.get_text_config().vocab_size + 7,
    )
    folder = tmp_path / "resized"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    with pytest.raises(VerdictTokensMissingError, match=r"'-' \(id \d+\)") as error:
        PRMScorer.from_pretrained(folder)
    assert "'+'" not in str(error.value).split("vocabulary")[0]  # only the missing token is named

    small = load_prm(path, head="generative", dtype=torch.float32)
    small.resize_token_embeddings(min(plus, processor.tokenizer.convert_tokens_to_ids("-")))  # drops both rows
    args = VLPRMConfig(output_dir=str(tmp_path / "o"), head="generative", use_cpu=True, report_to="none")
    with pytest.raises(VerdictTokensMissingError, match=r"'\+' \(id \d+\) and '-' \(id \d+\)"):
        VLPRMTrainer(small, args, train_dataset=rows, processing_class=processor)


def test_one_label_value_head_reads_one_column(tiny, tmp_path):
    """A one-label value head (soft labels' head): [K, 1] at the labelled positions, the BCE loss unchanged."""
    path, processor, rows = tiny
    torch.manual_seed(0)
    model = load_prm(path, head="value", num_labels=1, dtype=torch.float32)
    args = VLPRMConfig(output_dir=str(tmp_path / "o"), head="value", use_cpu=True, report_to="none")
    trainer = VLPRMTrainer(model, args, train_dataset=rows, processing_class=processor)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    inputs = {k: v for k, v in batch.items() if k not in BOOKKEEPING}
    mask = batch["labels"] != IGNORE_INDEX
    with HeadOutputs(head_module(model, "value")) as seen, torch.no_grad():
        got = trainer._class_logits(trainer.model, inputs, positions=mask)
        full = trainer.model(**inputs).logits
    assert seen.shapes == [(int(mask.sum()), 1), (*mask.shape, 1)]  # ours, then the reference's full output
    torch.testing.assert_close(got, full[mask], atol=1e-6, rtol=1e-6)
    losses = trainer.step_losses(got, batch["labels"][mask])
    expected = F.binary_cross_entropy_with_logits(full[mask][:, 0], batch["labels"][mask].float(), reduction="none")
    torch.testing.assert_close(losses, expected, atol=1e-6, rtol=1e-6)


# One SGD step (learning rate 1) of a generative PRM under a 2-process DeepSpeed ZeRO-3 launch, the head's weight
# partitioned: the weights after it are the initial weights minus the gradient, so equal weights after the step
# (to 1e-5) mean equal gradients. Run once with the full-vocabulary reference and once with verdict rows.
ZERO3_SCRIPT = '''
import json, sys
import deepspeed, torch, torch.distributed as dist
from datasets import load_from_disk
from trl_vlprm import VLPRMConfig, VLPRMTrainer
from trl_vlprm.modeling.heads import step_logits


class FullVocabulary(VLPRMTrainer):
    """The loss as computed before verdict rows: the LM logits of every token, then `step_logits`."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels, types = inputs.pop("labels"), inputs.pop("step_type_ids", None)
        logits = step_logits(model(**inputs, use_cache=False).logits, "generative", self.prm_token_ids)
        losses = self.step_losses(logits, labels)
        return (losses * self.step_weights(types, labels)).sum() / max(losses.numel(), 1)


mode, model_path, data_path, out = sys.argv[1:5]
args = VLPRMConfig(
    output_dir=out, head="generative", use_cpu=True, max_steps=1, per_device_train_batch_size=2, optim="sgd",
    learning_rate=1.0, lr_scheduler_type="constant", warmup_steps=0, report_to="none", save_strategy="no",
    activation_checkpointing=False, seed=0, disable_tqdm=True, max_length=512, perception_loss_weight=2.0,
)
trainer_class = FullVocabulary if mode == "full" else VLPRMTrainer
trainer = trainer_class(model_path, args, train_dataset=load_from_disk(data_path))
lm_head = trainer.model.get_output_embeddings()
partitioned = lm_head.weight.numel() == 0 and hasattr(lm_head.weight, "ds_id")  # ZeRO-3 holds a shard, not the rows
seen = []
lm_head.register_forward_hook(lambda module, inputs, output: seen.append(list(output.shape)))
loss = trainer.train().training_loss
layer = "model.language_model.layers.0"
names = ["lm_head.weight", f"{layer}.mlp.down_proj.weight", f"{layer}.self_attn.q_proj.weight"]
params = dict(trainer.model.named_parameters())
with deepspeed.zero.GatheredParameters([params[n] for n in names]):
    weights = {n: params[n].detach().clone() for n in names}
if dist.get_rank() == 0:
    torch.save(weights, f"{out}/weights.pt")
    report = {"world_size": dist.get_world_size(), "trainer_world_size": trainer.args.world_size, "loss": loss,
              "partitioned": partitioned, "head_outputs": seen, "vocab": lm_head.out_features}
    json.dump(report, open(f"{out}/report.json", "w"))
# Ranks leave together and tear gloo down before the interpreter does: a rank exiting while its peer still writes
# can abort in gloo's teardown ("terminate called without an active exception", exit -6), as trl-vlprm train avoids.
dist.barrier()
dist.destroy_process_group()
'''


@pytest.mark.slow
def test_zero3_two_processes_verdict_rows_equal_full_vocabulary(tiny, tmp_path):
    import json
    import subprocess
    import sys

    from test_launch import REPO, free_port, launch_env

    path, _, rows = tiny
    data = tmp_path / "data"
    rows.save_to_disk(str(data))
    script = tmp_path / "zero3_step.py"
    script.write_text(ZERO3_SCRIPT)
    reports, weights = {}, {}
    for mode in ("full", "rows"):
        out = tmp_path / mode
        out.mkdir()
        command = [
            sys.executable, "-m", "accelerate.commands.launch",
            "--config_file", str(REPO / "recipes" / "accelerate" / "zero3.yaml"), "--num_processes", "2",
            "--main_process_port", str(free_port()), str(script), mode, str(path), str(data), str(out),
        ]  # fmt: skip
        result = subprocess.run(command, cwd=REPO, env=launch_env(), capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
        reports[mode] = json.loads((out / "report.json").read_text())
        weights[mode] = torch.load(out / "weights.pt")

    for report in reports.values():
        assert report["world_size"] == report["trainer_world_size"] == 2
        assert report["partitioned"]  # the LM head's weight really was partitioned across the 2 ranks
    vocab = reports["full"]["vocab"]
    assert reports["full"]["head_outputs"] and all(s[-1] == vocab for s in reports["full"]["head_outputs"])
    assert reports["rows"]["head_outputs"] and all(s[-1] == 2 and len(s) == 2 for s in reports["rows"]["head_outputs"])
    assert reports["rows"]["loss"] == pytest.approx(reports["full"]["loss"], abs=1e-5)
    initial = load_prm(path, head="generative", dtype=torch.float32).state_dict()
    for name, full in weights["full"].items():
        torch.testing.assert_close(weights["rows"][name], full, atol=1e-5, rtol=1e-5, msg=name)
        assert not torch.equal(full, initial[name]), f"{name} did not move: no gradient reached it"
