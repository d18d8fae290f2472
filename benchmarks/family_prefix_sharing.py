"""`PRMScorer` prefix-sharing speedup at N candidates, per model family (tiny random models of each).

    python benchmarks/family_prefix_sharing.py                       # N = 16, one model type per family
    python benchmarks/family_prefix_sharing.py --model_types qwen3_vl llava_next --num_candidates 64 --threads 2

For each model type: a tiny random model (`build_tiny_vlm`, the real transformers class) with a value head, one
question with one image, N candidate solutions of 2-5 steps. `PRMScorer.score` runs the vision tower and the question
once and the candidates' steps in batches over a copy of the prefix cache; the baseline, `PRMScorer.score_plain`,
runs each candidate alone as one whole forward (vision tower, question and steps), as a scorer without prefix
sharing would. Both are timed from a cold prefix cache on the same model in the same run (best of `--repeats`
interleaved rounds) and their scores must agree to 1e-5 (the run fails otherwise).

Columns: P the prefix tokens (image tokens included), S the mean suffix tokens, `bound` the speedup if cost were
proportional to language-model tokens, `N (P + S) / (P + N S)`. Qwen-family images are bounded by `--max_pixels`
(448x448: 256 image tokens for Qwen2.5-VL's 28-pixel tokens, 196 for Qwen3's 32-pixel ones); the tiny LLaVA-NeXT
reads 28-pixel tiles of at most 56x56 (its tiny image processor's grid), so its prefix is short and its bound low.
Tiny models: the figures show the overheads and the share of the prefix, not the speed of real checkpoints.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import machine
from PIL import Image

from trl_vlprm.guidance.policy import Candidate
from trl_vlprm.guidance.scorer import PRMScorer
from trl_vlprm.modeling.families import get_family
from trl_vlprm.modeling.heads import load_prm
from trl_vlprm.modeling.processor import load_processor
from trl_vlprm.testing import build_tiny_vlm

DEFAULT_TYPES = ["qwen2_5_vl", "qwen3_vl", "qwen3_5", "llava_next", "gemma3", "idefics3", "internvl"]
STEP_TEXTS = [
    "The image shows a grid of coloured squares.",
    "There are 3 circles, 4 triangles and 5 squares.",
    "Count the objects in every row.",
    "The clock shows 3 o'clock; add 4 hours to get 7 o'clock.",
    "The pattern repeats in every row and column.",
    "Therefore the answer is B.",
]


def candidates(n: int, seed: int = 0) -> list[Candidate]:
    rng = np.random.default_rng(seed)
    return [
        Candidate(steps=[STEP_TEXTS[j] for j in rng.integers(0, len(STEP_TEXTS), rng.integers(2, 6))])
        for _ in range(n)
    ]


def measure(model_type: str, args: argparse.Namespace, folder: Path) -> dict:
    # Pixel bounds are a Qwen image processor setting; LLaVA-style ones resize by their own settings.
    bounds = {"max_pixels": args.max_pixels} if get_family(model_type).name.startswith("qwen") else {}
    path = build_tiny_vlm(folder / model_type, arch=model_type, hidden_size=args.hidden_size, **bounds)
    scorer = PRMScorer(load_prm(path, head="value"), load_processor(path), batch_size=args.batch_size)
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (args.image_size, args.image_size, 3), dtype=np.uint8))
    question = {"id": "q", "prompt": "<image>Which shape is missing?", "images": [image]}
    cands = candidates(args.num_candidates)
    best = {"shared": (float("inf"), None), "plain": (float("inf"), None)}
    for _ in range(args.repeats):
        for name in best:
            scorer.clear_cache()
            start = time.perf_counter()
            out = scorer.score(question, cands) if name == "shared" else scorer.score_plain(question, cands)
            elapsed = time.perf_counter() - start
            if elapsed < best[name][0]:
                best[name] = (elapsed, out)
    shared, plain = best["shared"][1], best["plain"][1]
    diff = float(np.abs(np.concatenate(shared) - np.concatenate(plain)).max())
    if diff > 1e-5:
        raise AssertionError(f"{model_type}: prefix sharing differs from whole forwards by {diff:.2e}")
    prefix = scorer.encoder.encode_prompt(question["prompt"], question["images"], "q")
    suffix_lengths = [
        len(scorer.encoder.encode_candidate(question["prompt"], prefix, c.steps).input_ids) for c in cands
    ]
    p, s, n = len(prefix.input_ids), float(np.mean(suffix_lengths)), len(cands)
    return {
        "model_type": model_type, "P": p, "S": s, "bound": n * (p + s) / (p + n * s),
        "shared_ms": 1000 * best["shared"][0], "plain_ms": 1000 * best["plain"][0],
        "speedup": best["plain"][0] / best["shared"][0], "max_diff": diff,
    }  # fmt: skip


def format_table(rows: list[dict], n: int) -> str:
    lines = [
        "| model type | P | S | N | bound | shared (ms) | whole forwards (ms) | speedup | max abs diff |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model_type']} | {r['P']} | {r['S']:.1f} | {n} | {r['bound']:.2f} | {r['shared_ms']:.1f} | "
            f"{r['plain_ms']:.1f} | {r['speedup']:.2f} | {r['max_diff']:.1e} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_types", nargs="+", default=DEFAULT_TYPES, help="Model types to measure.")
    parser.add_argument("--num_candidates", type=int, default=16, help="Candidates per question (N).")
    parser.add_argument("--batch_size", type=int, default=16, help="PRMScorer batch size.")
    parser.add_argument("--hidden_size", type=int, default=128, help="Text width of the tiny models.")
    parser.add_argument("--image_size", type=int, default=448, help="Side of the question's square image (pixels).")
    parser.add_argument("--max_pixels", type=int, default=448 * 448, help="Qwen image processors' pixel bound.")
    parser.add_argument("--repeats", type=int, default=3, help="Interleaved timing rounds (best kept).")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is steadier on a shared box)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        rows = [measure(model_type, args, Path(folder)) for model_type in args.model_types]
    print(machine())
    print(format_table(rows, args.num_candidates))
    return rows


if __name__ == "__main__":
    main()
