"""One command for the day a GPU is there: training and scoring figures of the paper's 3B and 7B PRM widths on one
H100/H200, with no hub access (real-width random models are built locally), in under 8 minutes, as one table.

    python benchmarks/gpu_check.py                  # on one GPU (make gpu-check)
    python benchmarks/gpu_check.py --tiny           # CPU, tiny widths: the smoke run of `make test`

Rows (docs/performance.md says where the numbers go):
- `train`: tokens/s and peak memory of one forward + backward of `VLPRMTrainer.compute_loss` on `--batch` rows of
  `--max_length` tokens at the 3B and 7B widths (`benchmarks/real_shapes.py` builds them, `--layers` deep), bf16,
  activation checkpointing, with sdpa and (when installed) flash-attention 2, the full-vocabulary loss against
  verdict rows;
- `vLLM policy`: generated tokens/s of `VLLMPolicy` sampling N solutions on the 7B-width model (when vLLM is
  installed);
- `score`: candidates/s of `PRMScorer` and of `VLLMScorer` (when vLLM is installed) at N=16 on one question whose
  image sits at the paper PRM's upper pixel bound (1,280 x 28 x 28 pixels: 1,280 image tokens), and their largest
  score difference.

Without a GPU (and without `--tiny`) it stops at once, saying so.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import machine
from real_shapes import PRM_PIXELS, STEP, build_model, random_image, train_step

# On one H100/H200 80 GB: the full recipe's sequence length and batch, at a depth that keeps the whole check
# under 8 minutes (the per-layer cost scales linearly to the published depths, docs/performance.md).
GPU_DEFAULTS = {"layers": 4, "vision_layers": 4, "max_length": 8192, "batch": 2, "candidates": 16}
PARTS = ("train", "policy", "score")
TINY_DEFAULTS = {"layers": 2, "vision_layers": 1, "max_length": 256, "batch": 1, "candidates": 4}


def attention_implementations(device: str) -> list[str]:
    found = ["sdpa"]
    if device.startswith("cuda") and importlib.util.find_spec("flash_attn") is not None:
        found.append("flash_attention_2")
    return found


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def save_prm(size: str, args: argparse.Namespace, processor_path: str, folder: Path) -> Path:
    """The random generative PRM of `size` saved with its processor and PRM metadata (vLLM reads a folder)."""
    from trl_vlprm.modeling.heads import prm_token_ids
    from trl_vlprm.modeling.processor import load_processor

    processor = load_processor(processor_path, min_pixels=PRM_PIXELS[0], max_pixels=PRM_PIXELS[1])
    model = build_model(size, args, processor.tokenizer)
    model.config.prm_step_separator = "\n"
    model.config.prm_positive_token_id, model.config.prm_negative_token_id = prm_token_ids(processor.tokenizer)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def question(args: argparse.Namespace) -> dict:
    side = 112 if args.tiny else 28 * 36  # 1,008 x 1,008 -> 36 x 36 merged patches = 1,296 -> capped at 1,280
    return {"id": "gpu-check", "prompt": "<image>Which shape completes the grid?", "images": [random_image(side, 0)]}


def candidates(n: int):
    from trl_vlprm.types import Candidate

    rng = np.random.default_rng(0)
    return [Candidate(steps=[STEP.format(i=int(j)) for j in rng.integers(0, 9, rng.integers(3, 6))]) for _ in range(n)]


def score_rows(folder: Path, args: argparse.Namespace, device: str) -> list[dict]:
    from trl_vlprm.guidance.scorer import PRMScorer

    rows = []
    scorer = PRMScorer.from_pretrained(folder, dtype="bfloat16", device=device, batch_size=args.candidates)
    group, q = candidates(args.candidates), question(args)
    scorer.score(q, group[:2])  # warm-up
    start = time.perf_counter()
    reference = scorer.score(q, group)
    seconds = time.perf_counter() - start
    rows.append({"what": "score", "setting": "PRMScorer", "value": f"{len(group) / seconds:.1f} candidates/s"})
    del scorer
    if not vllm_available():
        rows.append({"what": "score", "setting": "VLLMScorer", "value": "n/a: vLLM is not installed"})
        return rows
    from trl_vlprm.guidance.vllm_scorer import VLLMScorer

    engine = {"enforce_eager": True, "gpu_memory_utilization": 0.05, "kv_cache_memory_bytes": 256 << 20}
    engine = engine if not device.startswith("cuda") else {"gpu_memory_utilization": 0.5}
    vllm = VLLMScorer.from_pretrained(folder, dtype="bfloat16", max_model_len=4096, llm_kwargs=engine)
    vllm.score(q, group[:2])
    vllm.clear_cache()
    start = time.perf_counter()
    got = vllm.score(q, group)
    seconds = time.perf_counter() - start
    difference = float(np.abs(np.concatenate(got) - np.concatenate(reference)).max())
    value = f"{len(group) / seconds:.1f} candidates/s (max abs dP vs PRMScorer {difference:.1e}, bf16)"
    rows.append({"what": "score", "setting": "VLLMScorer", "value": value})
    del vllm
    return rows


def policy_row(folder: Path, args: argparse.Namespace, device: str) -> dict:
    if not vllm_available():
        return {"what": "vLLM policy", "setting": "VLLMPolicy", "value": "n/a: vLLM is not installed"}
    from trl_vlprm.guidance.vllm_policy import VLLMPolicy

    engine = {"enforce_eager": True, "gpu_memory_utilization": 0.05, "kv_cache_memory_bytes": 256 << 20}
    engine = engine if not device.startswith("cuda") else {"gpu_memory_utilization": 0.3}
    max_new = 16 if args.tiny else 512
    policy = VLLMPolicy.from_pretrained(
        str(folder), dtype="bfloat16", max_model_len=4096, llm_kwargs=engine, max_new_tokens=max_new, seed=0
    )
    start = time.perf_counter()
    policy.sample_solutions(question(args), args.candidates)
    seconds = time.perf_counter() - start
    tokens = policy.stats.tokens
    return {"what": "vLLM policy", "setting": f"N={args.candidates}, {max_new} new tokens at most",
            "value": f"{tokens / seconds:.0f} tokens/s ({tokens} tokens)"}  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="CPU, tiny widths (real vocabularies): the smoke run")
    parser.add_argument("--sizes", nargs="+", default=["3B", "7B"], choices=["3B", "7B"])
    for name, default in GPU_DEFAULTS.items():
        parser.add_argument(
            f"--{name}", type=int, default=None, help=f"default {default} (--tiny: {TINY_DEFAULTS[name]})"
        )
    parser.add_argument("--threads", type=int, default=2, help="torch threads on the CPU")
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS, help="which rows to measure")
    args = parser.parse_args(argv)
    for name, value in (TINY_DEFAULTS if args.tiny else GPU_DEFAULTS).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    if device == "cpu" and not args.tiny:
        raise SystemExit("gpu_check.py needs a CUDA GPU (none is visible); --tiny runs its CPU smoke version")
    torch.set_num_threads(args.threads)
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from trl_vlprm.testing import build_tiny_vlm

    start = time.perf_counter()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        processor_path = str(
            build_tiny_vlm(f"{tmp}/tokenizer", arch="qwen2_5_vl", hidden_size=128, max_pixels=PRM_PIXELS[1])
        )
        for size in args.sizes if "train" in args.parts else []:
            for attention in attention_implementations(device):
                for mode in ("full vocabulary", "verdict rows"):
                    r = train_step(size, mode, args, processor_path, device=device, attention=attention)
                    value = f"{r['tokens'] / r['seconds']:.0f} tokens/s, peak {r['peak_gib']:.2f} GiB"
                    rows.append({"what": "train", "setting": f"{size}, {attention}, {mode}", "value": value})
                    if device.startswith("cuda"):
                        torch.cuda.empty_cache()
        folder = save_prm(args.sizes[-1], args, processor_path, Path(tmp) / "prm")
        if "policy" in args.parts:
            rows.append(policy_row(folder, args, device))
        if "score" in args.parts:
            rows += score_rows(folder, args, device)
    print(machine())
    print(
        f"{'tiny widths (CPU smoke run)' if args.tiny else 'real widths'}, {args.layers} text layer(s), "
        f"{args.vision_layers} vision block(s), {args.batch} x {args.max_length} tokens, bf16; "
        f"{time.perf_counter() - start:.0f} s in all"
    )
    print("| check | setting | result |")
    print("|---|---|---|")
    for r in rows:
        print(f"| {r['what']} | {r['setting']} | {r['value']} |")
    return rows


if __name__ == "__main__":
    main()
