"""Training samples per second: `VLPRMTrainer` vs a plain `transformers.Trainer` on the same model and batches.

    python benchmarks/train_throughput.py                         # tiny Qwen2-VL value head, batch 8, 5 repeats
    python benchmarks/train_throughput.py --steps 60 --repeats 7 --hidden_size 128

Both trainers train the same value-head PRM (`load_prm` of a tiny Qwen2-VL, same seed, so the same initial
weights; dropout off) on the same rows, tokenized once by `VLPRMTrainer`'s tokenization and batched by its collator
(images are processed in the collator for both), with the same batch size, optimizer, schedule and data order. The
plain Trainer computes the standard token-classification cross-entropy over labelled positions through
`compute_loss_func`; `VLPRMTrainer` computes its per-step loss with perception weighting (weight 1 here, so both
losses are the same number, which the `train loss` column shows). What is left to differ is the trainer.

Timing: from the end of step `--warmup` to the end of the last step of one `train()` call (a callback reads the
clock), so model loading, trainer construction and warmup steps are excluded; data loading and collation are
included for both. The two trainers alternate within each repeat (order flipped every repeat) so that load from
other processes on the machine hits both alike; the overhead is the median over repeats of the paired ratio.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import machine
from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments
from trl.trainer.utils import disable_dropout_in_model

from trl_vlprm import VLPRMConfig, VLPRMTrainer
from trl_vlprm.modeling.heads import load_prm
from trl_vlprm.modeling.processor import load_processor
from trl_vlprm.testbed.supervision import sample_supervision
from trl_vlprm.testing import build_tiny_vlm
from trl_vlprm.trainer import DataCollatorForVLPRM

IGNORE_INDEX = -100  # transformers' label of positions without a loss

KINDS = ("VLPRMTrainer", "Trainer")


class StepClock(TrainerCallback):
    """Reads the clock at the end of step `warmup` and of the last step."""

    def __init__(self, warmup: int):
        self.warmup = warmup
        self.start: float | None = None
        self.end: float | None = None

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.warmup:
            self.start = time.perf_counter()
        self.end = time.perf_counter()


class PlainCollator:
    """`DataCollatorForVLPRM` batches for a plain Trainer: integer class labels, no step types."""

    def __init__(self, processing_class):
        self.collate = DataCollatorForVLPRM(processing_class)

    def __call__(self, rows):
        batch = self.collate(rows)
        batch.pop("step_type_ids")
        batch["labels"] = batch["labels"].long()
        return batch


def token_classification_loss(outputs, labels, num_items_in_batch=None):
    """Cross-entropy over labelled tokens, summed and divided by their count (transformers' convention)."""
    logits = outputs.logits.float()
    loss = F.cross_entropy(
        logits.view(-1, logits.shape[-1]), labels.view(-1), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    count = num_items_in_batch if num_items_in_batch is not None else (labels != IGNORE_INDEX).sum()
    return loss / count


def fresh_model(model_path: Path, seed: int):
    torch.manual_seed(seed)  # the new score head's initialisation
    model = load_prm(model_path, head="value", num_labels=2)
    model.config.use_cache = False
    model.config.get_text_config().use_cache = False
    # VLPRMTrainer disables dropout (the token-classification head has p=0.1); the baseline does too, so the
    # two trainers compute the same losses and the comparison is of the same arithmetic.
    disable_dropout_in_model(model)
    return model


def run_once(kind: str, model_path: Path, processor, dataset, args: argparse.Namespace, output_dir: Path):
    """Train one fresh model for warmup + steps; return (samples/s over the timed steps, mean train loss)."""
    common = dict(
        output_dir=str(output_dir), per_device_train_batch_size=args.batch_size, max_steps=args.warmup + args.steps,
        learning_rate=1e-3, lr_scheduler_type="constant", use_cpu=True, save_strategy="no", report_to="none",
        logging_steps=args.logging_steps, disable_tqdm=True, seed=args.seed, remove_unused_columns=False,
        dataloader_num_workers=0, activation_checkpointing=False,  # same work for both (VLPRMConfig defaults it on)
    )  # fmt: skip
    clock = StepClock(args.warmup)
    model = fresh_model(model_path, args.seed)
    if kind == "VLPRMTrainer":
        trainer = VLPRMTrainer(
            model=model, args=VLPRMConfig(**common, max_length=args.max_length), train_dataset=dataset,
            processing_class=processor, callbacks=[clock],
        )  # fmt: skip
    else:
        trainer = Trainer(
            model=model, args=TrainingArguments(**common), train_dataset=dataset,
            data_collator=PlainCollator(processor), compute_loss_func=token_classification_loss, callbacks=[clock],
        )  # fmt: skip
    trainer.remove_callback(PrinterCallback)  # the table is the output; per-step log lines would bury it
    result = trainer.train()
    return args.steps * args.batch_size / (clock.end - clock.start), result.training_loss


def main(argv: list[str] | None = None) -> dict[str, list[float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--puzzles", type=int, default=32, help="puzzles; x4 solutions each = training rows")
    parser.add_argument("--image_size", type=int, default=112)
    parser.add_argument("--hidden_size", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps at the start of every run")
    parser.add_argument("--steps", type=int, default=40, help="timed steps per run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--logging_steps", type=int, default=10)
    parser.add_argument("--max_length", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared machine)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_path = build_tiny_vlm(tmp / "tiny", arch="qwen2_vl", seed=args.seed, hidden_size=args.hidden_size)
        processor = load_processor(model_path)
        rows = sample_supervision(args.puzzles, solutions_per_puzzle=4, seed=args.seed, image_size=args.image_size)
        # Tokenized once, by VLPRMTrainer's own pipeline (its `train_dataset` after construction); both trainers then
        # get the same token ids and labels.
        config = VLPRMConfig(output_dir=str(tmp / "prep"), use_cpu=True, max_length=args.max_length, report_to="none")
        dataset = VLPRMTrainer(
            model=fresh_model(model_path, args.seed), args=config, train_dataset=rows, processing_class=processor
        ).train_dataset
        mean_length = sum(len(ids) for ids in dataset["input_ids"]) / len(dataset)

        speeds: dict[str, list[float]] = {kind: [] for kind in KINDS}
        losses: dict[str, list[float]] = {kind: [] for kind in KINDS}
        for repeat in range(args.repeats):
            for kind in KINDS if repeat % 2 == 0 else reversed(KINDS):
                speed, loss = run_once(kind, model_path, processor, dataset, args, tmp / "out")
                speeds[kind].append(speed)
                losses[kind].append(loss)

    # Same model, rows, order and arithmetic: the two trainers must reach the same training loss (its own check).
    for a, b in zip(losses["VLPRMTrainer"], losses["Trainer"]):
        if abs(a - b) > 1e-4 * max(1.0, abs(b)):
            raise AssertionError(f"VLPRMTrainer's training loss {a:.6f} differs from Trainer's {b:.6f}")
    ratios = [plain / vlprm for vlprm, plain in zip(speeds["VLPRMTrainer"], speeds["Trainer"])]
    print(machine())
    print(
        f"{len(dataset)} rows, mean {mean_length:.0f} tokens, batch {args.batch_size}, {args.steps} timed steps after "
        f"{args.warmup} warmup, {args.repeats} repeat(s), value head, hidden {args.hidden_size}"
    )
    print("| trainer | median samples/s | min | max | train loss |")
    print("|---|---|---|---|---|")
    for kind in KINDS:
        values = speeds[kind]
        print(
            f"| {kind} | {statistics.median(values):.1f} | {min(values):.1f} | {max(values):.1f} | "
            f"{statistics.median(losses[kind]):.4f} |"
        )
    overhead = statistics.median(ratios) - 1
    print(f"VLPRMTrainer overhead vs Trainer (median paired ratio - 1): {100 * overhead:+.1f}%  "
          f"(per repeat: {', '.join(f'{100 * (r - 1):+.1f}%' for r in ratios)}; goal < 5%)")  # fmt: skip
    return speeds


if __name__ == "__main__":
    main()
