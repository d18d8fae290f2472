"""The cost of the paper's 3B and 7B PRMs at their real widths: a training step with and without full-vocabulary
logits, and `PRMScorer` against one forward a candidate at N=16 with 1,000+ image tokens.

    python benchmarks/real_shapes.py                       # Qwen2.5-VL-3B and -7B widths, 2 layers, length 2048
    python benchmarks/real_shapes.py --score_sizes --max_length 8192  # the recipe's row length, training only
    python benchmarks/real_shapes.py --sizes 3B --max_length 1024 --candidates 4  # `make bench`'s CPU size
    python benchmarks/real_shapes.py --tiny                # the smoke run of `make test` (tiny widths, real vocab)

Models: Qwen2.5-VL with the published widths (text hidden size, attention and key/value heads, MLP width, the real
vocabulary of 151,936 / 152,064 rows, the 3B's tied embeddings, the vision tower's width 1280, 16 heads, MLP 3420,
patch 14, temporal patch 2, merge 2, window 112) at reduced depth (`--layers` text layers, `--vision_layers` vision
blocks), random bf16 weights built locally (nothing from a hub), the tiny project tokenizer (its ids lie inside the
real vocabulary).

Training (`train` table): one forward and backward pass of `VLPRMTrainer.compute_loss` on `--batch` rows of
`--max_length` tokens (one image at the 7B recipe's `max_pixels`, 50,176 pixels = 64 image tokens, then steps),
generative head, bf16 weights, activation checkpointing on, as the recipe trains. `full vocabulary` is the loss as it
was computed before verdict rows (the LM head's `[batch, seq, vocab]` logits, then the two verdict columns);
`verdict rows` is `VLPRMTrainer` as shipped. Each runs in its own process: peak memory is the process's peak resident
memory during the step above its resident memory before it (Linux `VmHWM`, reset before the step), time is the wall
time of the step, `load` the machine's 1-minute load average at its end. Both losses must agree (bf16: to 2e-2
relative). bf16 is also the faster type on this CPU (AVX-512 bf16: a 2048 x 3584 x 7168 matmul on 2 threads ran at
116 GFLOP/s in bf16 against 58 in float32).

Scoring (`score` table): one question with one 896x896 image (1,024 image tokens under the paper PRM's pixel bounds,
256-1280 x 28 x 28) and N=16 candidates of 3-5 steps; `PRMScorer.score` (image and question once, candidates
batched) vs `PRMScorer.score_plain` (one full forward a candidate, the image included), same model, bf16. The two
score lists must agree (bf16: to 2e-2).

The figures and the arithmetic that carries them to full depth are in docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import machine
from PIL import Image

# Published widths (the models' config.json); full depth in `layers`.
WIDTHS = {
    "3B": {"hidden_size": 2048, "intermediate_size": 11008, "num_attention_heads": 16, "num_key_value_heads": 2,
           "vocab_size": 151936, "tie_word_embeddings": True, "layers": 36},
    "7B": {"hidden_size": 3584, "intermediate_size": 18944, "num_attention_heads": 28, "num_key_value_heads": 4,
           "vocab_size": 152064, "tie_word_embeddings": False, "layers": 28},
}  # fmt: skip
VISION = {"hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16, "patch_size": 14, "temporal_patch_size": 2,
          "spatial_merge_size": 2, "window_size": 112, "depth": 32}  # fmt: skip
# --tiny: the same vocabularies and structure at toy widths (the smoke run; head size 32, as vLLM's CPU kernels need).
TINY = {"hidden_size": 128, "intermediate_size": 256, "num_attention_heads": 4, "num_key_value_heads": 2}
TINY_VISION = {"hidden_size": 32, "intermediate_size": 64, "num_heads": 2}
RECIPE_MAX_PIXELS = 50176  # recipes/configs/vlprm_qwen2_5_vl_7b.yaml
PRM_PIXELS = (256 * 28 * 28, 1280 * 28 * 28)  # the paper PRM preset's bounds (trl_vlprm.modeling.presets)
STEP = "We count the shapes in row {i} and compare them with the pattern of the previous rows carefully."


def build_config(size: str, args: argparse.Namespace, tokenizer):
    from transformers import Qwen2_5_VLConfig

    text = {k: v for k, v in WIDTHS[size].items() if k != "layers"}
    vision = {k: v for k, v in VISION.items() if k != "depth"}
    if args.tiny:
        text.update(TINY)
        vision.update(TINY_VISION)
    head_dim = text["hidden_size"] // text["num_attention_heads"]
    half = head_dim // 2
    mrope = [16, 24, 24] if head_dim == 128 else [half - 2 * (half // 3), half // 3, half // 3]
    tie = text.pop("tie_word_embeddings")
    text.update(
        num_hidden_layers=args.layers, max_position_embeddings=32768, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": mrope},
    )  # fmt: skip
    vision.update(
        depth=args.vision_layers, out_hidden_size=text["hidden_size"], fullatt_block_indexes=[args.vision_layers - 1]
    )
    ids = tokenizer.convert_tokens_to_ids
    return Qwen2_5_VLConfig(
        text_config=text, vision_config=vision, tie_word_embeddings=tie,
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
    )  # fmt: skip


def build_model(size: str, args: argparse.Namespace, tokenizer, device: str = "cpu", attention: str = "sdpa"):
    """A random bf16 generative PRM of `size`'s widths at `args.layers` depth, built on `device`."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    config = build_config(size, args, tokenizer)
    config._attn_implementation = attention
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # built in bf16 directly: no float32 copy of the 152k x 3584 tables
    try:
        with torch.device(device):
            model = Qwen2_5_VLForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(default)
    model.config.prm_head = "generative"
    return model


def random_image(side: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8))


def memory_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (the peak resident set) to the current one


# ---- one training step ------------------------------------------------------------------------------------------


def train_step(
    size: str, mode: str, args: argparse.Namespace, processor_path: str, device: str = "cpu", attention: str = "sdpa"
) -> dict:
    """One forward + backward of `VLPRMTrainer.compute_loss` (`mode`: "full vocabulary" or "verdict rows"); time and
    peak memory above the memory held before the step (GPU: `max_memory_allocated`; CPU: the process's `VmHWM`)."""
    from datasets import Dataset

    from trl_vlprm import VLPRMConfig, VLPRMTrainer
    from trl_vlprm.modeling.heads import step_logits
    from trl_vlprm.modeling.processor import load_processor

    class FullVocabulary(VLPRMTrainer):
        """The loss as computed before verdict rows: the LM logits of every token, then `step_logits`."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels, types = inputs.pop("labels"), inputs.pop("step_type_ids", None)
            logits = step_logits(model(**inputs, use_cache=False).logits, "generative", self.prm_token_ids)
            losses = self.step_losses(logits, labels)
            return (losses * self.step_weights(types, labels)).sum() / max(losses.numel(), 1)

    # transformers >= 5.20 calls it activation checkpointing (the vLLM venv's 5.19: gradient checkpointing)
    fields = VLPRMConfig.__dataclass_fields__
    checkpointing = "activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"
    processor = load_processor(processor_path, max_pixels=RECIPE_MAX_PIXELS)
    model = build_model(size, args, processor.tokenizer, device, attention)
    steps = [STEP.format(i=i) for i in range(args.max_length // 8)]  # more than fits: the row is cut at max_length
    rows = Dataset.from_list([
        {"id": f"r{r}", "prompt": "<image>Which shape completes the grid?", "images": [random_image(224, r)],
         "completions": steps, "labels": [(i + r) % 3 != 0 for i in range(len(steps))]}
        for r in range(args.batch)
    ])  # fmt: skip
    config = VLPRMConfig(
        output_dir=tempfile.mkdtemp(), head="generative", report_to="none", max_length=args.max_length,
        per_device_train_batch_size=args.batch, disable_tqdm=True, use_cpu=device == "cpu", **{checkpointing: True},
    )  # fmt: skip
    trainer = (FullVocabulary if mode == "full vocabulary" else VLPRMTrainer)(
        model, config, train_dataset=rows, processing_class=processor
    )
    model = trainer.model.train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(args.batch)])
    batch = {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}
    labelled = int((batch["labels"] != -100).sum())
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated() / 2**10
        torch.cuda.reset_peak_memory_stats()
    else:
        before = memory_kib("VmRSS")
        reset_peak()
    start = time.perf_counter()
    loss = trainer.compute_loss(model, dict(batch))
    # The forward's peak holds the head's output (full vocabulary: [rows, tokens, vocab]); the step's peak usually
    # comes at the end of the backward pass, when the parameter gradients exist and that output is long gone.
    forward_peak = torch.cuda.max_memory_allocated() / 2**10 if cuda else memory_kib("VmHWM")
    loss.backward()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**10 if cuda else memory_kib("VmHWM")
    return {
        "size": size, "mode": mode, "seconds": seconds, "peak_gib": (peak - before) / 2**20, "loss": loss.item(),
        "attention": attention, "forward_peak_gib": (forward_peak - before) / 2**20,
        "tokens": int(batch["input_ids"].numel()), "labelled": labelled, "resident_gib": before / 2**20,
        "params": sum(p.numel() for p in model.parameters()), "load": os.getloadavg()[0],
    }  # fmt: skip


# ---- scoring ----------------------------------------------------------------------------------------------------


def score(size: str, args: argparse.Namespace, processor_path: str) -> dict:
    from trl_vlprm.guidance.scorer import PRMScorer
    from trl_vlprm.modeling.processor import load_processor
    from trl_vlprm.types import Candidate

    min_pixels, max_pixels = PRM_PIXELS if not args.tiny else (56 * 56, 112 * 112)
    processor = load_processor(processor_path, min_pixels=min_pixels, max_pixels=max_pixels)
    model = build_model(size, args, processor.tokenizer).eval()
    scorer = PRMScorer(model, processor, head="generative", batch_size=args.candidates, reuse_prefix=False)
    side = 896 if not args.tiny else 112
    question = {"id": "q", "prompt": "<image>Which shape completes the grid?", "images": [random_image(side, 0)]}
    rng = np.random.default_rng(0)
    candidates = [
        Candidate(steps=[STEP.format(i=int(j)) for j in rng.integers(0, 9, rng.integers(3, 6))])
        for _ in range(args.candidates)
    ]
    image_tokens = sum(scorer.encoder.encode_prompt(question["prompt"], question["images"]).mm_token_type_ids)
    timings = {}
    for name, fn in (("PRMScorer.score", scorer.score), ("one forward a candidate", scorer.score_plain)):
        start = time.perf_counter()
        scores = fn(question, candidates)
        timings[name] = (time.perf_counter() - start, scores)
    shared, plain = timings["PRMScorer.score"][1], timings["one forward a candidate"][1]
    difference = float(np.abs(np.concatenate(shared) - np.concatenate(plain)).max())
    return {
        "size": size, "image_tokens": image_tokens, "candidates": len(candidates),
        "shared_s": timings["PRMScorer.score"][0], "plain_s": timings["one forward a candidate"][0],
        "max_diff": difference,
    }  # fmt: skip


# ---- driver -----------------------------------------------------------------------------------------------------


def run_isolated(task: list[str], args: argparse.Namespace) -> dict:
    """One measurement in a fresh process (a clean peak-memory reading); its result comes back as JSON. The tiny
    smoke run measures in this process (its memory figures are then only indicative)."""
    if args.tiny:
        kind, size, processor_path = task[1:]
        return measure(kind, size, processor_path, args)
    command = [sys.executable, __file__, *task, *args.forwarded]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"{' '.join(task)} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def measure(kind: str, size: str, processor_path: str, args: argparse.Namespace) -> dict:
    if kind.startswith("train:"):
        return train_step(size, kind.split(":")[1].replace("_", " "), args, processor_path)
    return score(size, args, processor_path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["3B", "7B"], choices=sorted(WIDTHS))
    parser.add_argument("--layers", type=int, default=2, help="text layers (the published models: 36 and 28)")
    parser.add_argument("--vision_layers", type=int, default=1, help="vision blocks (the published tower: 32)")
    parser.add_argument("--max_length", type=int, default=2048, help="row length (the 7B recipe's: 8192)")
    parser.add_argument("--batch", type=int, default=1, help="rows a step (the 7B recipe's: 2 a device)")
    parser.add_argument("--candidates", type=int, default=16, help="N, candidates scored for one question")
    parser.add_argument(
        "--train_sizes",
        nargs="*",
        default=None,
        choices=sorted(WIDTHS),
        help="widths of the training table (default: --sizes; none: no training table)",
    )
    parser.add_argument(
        "--score_sizes",
        nargs="*",
        default=None,
        choices=sorted(WIDTHS),
        help="widths of the scoring table (default: --sizes; none: no scoring table)",
    )
    parser.add_argument("--tiny", action="store_true", help="toy widths, real vocabularies (the smoke run)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--_task", nargs=3, help=argparse.SUPPRESS)  # internal: one isolated measurement
    args = parser.parse_args(argv)
    forwarded = ["--layers", args.layers, "--vision_layers", args.vision_layers, "--max_length", args.max_length,
                 "--batch", args.batch, "--candidates", args.candidates, "--threads", args.threads]  # fmt: skip
    args.forwarded = [str(x) for x in forwarded] + (["--tiny"] if args.tiny else [])
    if args.tiny:
        args.max_length, args.candidates = min(args.max_length, 256), min(args.candidates, 4)
    return args


def main(argv: list[str] | None = None) -> dict[str, list[dict]]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args._task:  # a worker: one measurement, printed as JSON
        print(json.dumps(measure(*args._task, args)))
        return {}

    from trl_vlprm.testing import build_tiny_vlm

    results: dict[str, list[dict]] = {"train": [], "score": []}
    with tempfile.TemporaryDirectory() as tmp:
        processor_path = str(build_tiny_vlm(f"{tmp}/tokenizer", arch="qwen2_5_vl", max_pixels=PRM_PIXELS[1]))
        for size in args.sizes:
            trained = args.sizes if args.train_sizes is None else args.train_sizes
            for mode in ("full_vocabulary", "verdict_rows") if size in trained else ():
                task = ["--_task", f"train:{mode}", size, processor_path]
                results["train"].append(run_isolated(task, args))
            if size in (args.sizes if args.score_sizes is None else args.score_sizes):
                results["score"].append(run_isolated(["--_task", "score", size, processor_path], args))
    check(results)
    print(report(results, args))
    return results


def check(results: dict[str, list[dict]]) -> None:
    """The benchmark's own agreement checks (bf16 numerics)."""
    by_size = {}
    for r in results["train"]:
        by_size.setdefault(r["size"], {})[r["mode"]] = r
    for size, modes in by_size.items():
        full, rows = modes["full vocabulary"]["loss"], modes["verdict rows"]["loss"]
        if abs(full - rows) > 2e-2 * max(1.0, abs(full)):
            raise AssertionError(
                f"{size}: the verdict-rows loss {rows:.5f} differs from the full-vocabulary {full:.5f}"
            )
    for r in results["score"]:
        if r["max_diff"] > 2e-2:
            raise AssertionError(f"{r['size']}: PRMScorer and per-candidate scores differ by {r['max_diff']:.2e}")


def report(results: dict[str, list[dict]], args: argparse.Namespace) -> str:
    lines = [machine(), f"{'tiny widths' if args.tiny else 'real widths'}, {args.layers} text layer(s), "
             f"{args.vision_layers} vision block(s), bf16, random weights", "",
             "| width | head computation | rows x tokens | labelled | params | forward peak GiB | step peak GiB "
             "| step s | loss | load |", "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in results["train"]:
        lines.append(
            f"| {r['size']} | {r['mode']} | {args.batch} x {r['tokens'] // args.batch} | {r['labelled']} | "
            f"{r['params'] / 1e9:.2f} B | {r['forward_peak_gib']:.2f} | {r['peak_gib']:.2f} | {r['seconds']:.1f} | "
            f"{r['loss']:.4f} | {r['load']:.1f} |"
        )
    by_size = {}
    for r in results["train"]:
        by_size.setdefault(r["size"], {})[r["mode"]] = r
    for size, modes in by_size.items():
        full, rows = modes["full vocabulary"], modes["verdict rows"]
        forward = rows["forward_peak_gib"] / full["forward_peak_gib"]
        lines.append(
            f"\n{size}: verdict rows / full vocabulary: forward peak {forward:.2f}, "
            f"step peak {rows['peak_gib'] / full['peak_gib']:.2f}, step time {rows['seconds'] / full['seconds']:.2f}"
        )
    if results["score"]:
        lines += ["", "| width | image tokens | N | PRMScorer.score s | one forward a candidate s | ratio "
                  "| max abs diff |", "|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in results["score"]:
            lines.append(
                f"| {r['size']} | {r['image_tokens']} | {r['candidates']} | {r['shared_s']:.1f} | {r['plain_s']:.1f} "
                f"| {r['plain_s'] / r['shared_s']:.2f} | {r['max_diff']:.1e} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
