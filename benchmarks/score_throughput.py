"""Candidates scored per second: `PRMScorer` (prefix encoded once, batched suffixes) vs one plain forward each.

    python benchmarks/score_throughput.py                      # tiny Qwen2.5-VL, one 448x448 image, N = 4, 16, 64
    python benchmarks/score_throughput.py --arch qwen2_vl --hidden_size 256 --batch_size 32
    .cache/vllm-venv/bin/python benchmarks/score_throughput.py --vllm --served  # + vLLM in-process and served

One question with one image; N candidate solutions of 2-5 steps. The baseline scores each candidate alone with a
plain full forward (vision tower + prefix + steps, `PRMScorer.score_plain`), as a scorer without prefix sharing
would. `PRMScorer.score` runs the vision tower and the prefix once and the candidates' steps in batches. Both are
timed from a cold prefix cache on the same model in the same run; both score lists must agree to 1e-5.

Columns: `bound` is the ideal speedup if cost were proportional to unique tokens, `N (P + S) / (P + N S)` with P the
prefix tokens and S the mean suffix tokens (the unique-token fraction is its inverse); `ratio` is measured against
the plain baseline and against batched full forwards without prefix sharing (image and prefix repeated in every
row), which separates the gain of sharing from the gain of batching. The measured ratio can exceed the bound: the
bound counts language-model tokens, but the vision tower runs on `merge_size^2` (4) patches per image token and
attention is quadratic in length, so the prefix costs more than its share of tokens, and fewer, larger calls also
amortise per-call overhead, which dominates a tiny model.

`--vllm` adds `VLLMScorer` (the same PRM folder on a vLLM pooling engine, one core: vLLM's CPU worker binds its
threads) on the same inputs in the same run: every timed call starts from an empty vLLM prefix cache and no kept
scores, so the prefix is shared only between the candidates of the call, as `PRMScorer.score` shares it; its scores
must agree with the others to 1e-5 too.

`--served` adds `ServerPRMScorer`: the same PRM folder behind a real vLLM server on loopback (started by the run,
`prm_server_args`), one HTTP `/pooling` request per candidate, 8 in flight; vLLM's HTTP pooling API cannot read the
prefix cache for token-wise pooling, so every prompt is computed in full. Its scores must agree to 1e-5 as well.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch
from _common import machine
from PIL import Image

from trl_vlprm.guidance.policy import Candidate
from trl_vlprm.guidance.scorer import PRMScorer
from trl_vlprm.modeling.heads import correct_probability, load_prm, step_logits
from trl_vlprm.modeling.processor import load_processor
from trl_vlprm.testing import build_tiny_vlm

STEP_TEXTS = [
    "The image shows a grid of coloured squares.",
    "There are 3 circles, 4 triangles and 5 squares.",
    "Count the objects in every row.",
    "The clock shows 3 o'clock; add 4 hours to get 7 o'clock.",
    "The pattern repeats in every row and column.",
    "A hexagon has 6 sides, a pentagon 5.",
    "So 2 * 3 = 6 and 9 - 4 = 5.",
    "Therefore the answer is B.",
]


def make_candidates(n: int, seed: int) -> list[Candidate]:
    rng = np.random.default_rng(seed)
    return [
        Candidate(steps=[STEP_TEXTS[j] for j in rng.integers(0, len(STEP_TEXTS), rng.integers(2, 6))])
        for _ in range(n)
    ]


def encode(scorer: PRMScorer, question, candidates: list[Candidate]):
    """The question's tokens and image tensors, and each candidate's tokens after them, through the scorer's own
    encoder (`PRMEncoder`, the trainer's layout) and model family."""
    prompt = scorer.encoder.encode_prompt(question["prompt"], question["images"], question["id"])
    image_inputs = scorer.family.image_inputs(scorer.processing_class, prompt.images)
    suffixes = [
        scorer.encoder.encode_candidate(question["prompt"], prompt, c.steps, row=question["id"]) for c in candidates
    ]
    return prompt, image_inputs, suffixes


@torch.inference_mode()
def score_batched_without_sharing(scorer: PRMScorer, question, candidates: list[Candidate]) -> list[list[float]]:
    """Batched full forwards (image and prefix repeated in every row): batching without prefix sharing."""
    prompt, image_inputs, suffixes = encode(scorer, question, candidates)
    prefix_ids, prefix_types = prompt.input_ids, prompt.mm_token_type_ids
    pad_id = scorer.tokenizer.pad_token_id
    scores = []
    for start in range(0, len(candidates), scorer.batch_size):
        chunk = suffixes[start : start + scorer.batch_size]
        longest = len(prefix_ids) + max(len(s.input_ids) for s in chunk)
        input_ids = torch.full((len(chunk), longest), pad_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        mm_token_type_ids = torch.zeros_like(input_ids)
        for row, suffix in enumerate(chunk):
            length = len(prefix_ids) + len(suffix.input_ids)
            input_ids[row, :length] = torch.tensor(prefix_ids + suffix.input_ids)
            attention_mask[row, :length] = 1
            mm_token_type_ids[row, : len(prefix_ids)] = torch.tensor(prefix_types)
        inputs = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "mm_token_type_ids": mm_token_type_ids,
            "pixel_values": image_inputs["pixel_values"].repeat(len(chunk), 1),
            "image_grid_thw": image_inputs["image_grid_thw"].repeat(len(chunk), 1),
        }
        class_logits = step_logits(scorer.model(**inputs).logits, scorer.head, scorer.token_ids)
        probabilities = correct_probability(class_logits)
        scores += [[float(probabilities[row, len(prefix_ids) + end]) for end in s.ends] for row, s in enumerate(chunk)]
    return scores


def timed(functions: dict, repeats: int) -> dict[str, tuple[float, list[list[float]]]]:
    """Best wall time of each function over `repeats` interleaved rounds (the machine is shared: the minimum is
    the least disturbed run, and interleaving exposes every function to the same load)."""
    best = {name: (float("inf"), None) for name in functions}
    for _ in range(repeats):
        for name, fn in functions.items():
            start = time.perf_counter()
            out = fn()
            elapsed = time.perf_counter() - start
            if elapsed < best[name][0]:
                best[name] = (elapsed, out)
    return best


def vllm_scorer(folder: str, args: argparse.Namespace):
    """`VLLMScorer` on the saved PRM folder (imported here: only the CPU vLLM venv has vLLM)."""
    import os

    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # engine in this process, like the tests
    from trl_vlprm.guidance.vllm_scorer import VLLMScorer

    engine = {"enforce_eager": True, "gpu_memory_utilization": 0.05, "kv_cache_memory_bytes": 256 << 20}
    return VLLMScorer.from_pretrained(
        folder, max_model_len=2048, dtype="float32", llm_kwargs=engine, cache_dir=os.path.join(folder, "views")
    )


SERVER_ARGS = [
    "--enforce-eager", "--dtype", "float32", "--max-model-len", "2048", "--gpu-memory-utilization", "0.05",
    "--kv-cache-memory-bytes", str(256 << 20), "--limit-mm-per-prompt", '{"image": 1, "video": 0}',
]  # fmt: skip


def cold(scorer):
    """`score` from an empty vLLM prefix cache and no kept scores (each timed call pays for its prefix once)."""

    def call(question, candidates):
        scorer.clear_cache()
        return scorer.score(question, candidates)

    return call


def run(args: argparse.Namespace) -> list[dict]:
    with tempfile.TemporaryDirectory() as folder:
        path = build_tiny_vlm(
            f"{folder}/base",
            arch=args.arch,
            seed=args.seed,
            hidden_size=args.hidden_size,
            max_pixels=args.image_size**2,
        )
        model = load_prm(path, head=args.head, dtype=torch.float32)
        processor = load_processor(path)
        model.save_pretrained(f"{folder}/prm")
        processor.save_pretrained(f"{folder}/prm")
        vllm_score = cold(vllm_scorer(f"{folder}/prm", args)) if args.vllm else None
        if not args.served:
            return measure(args, model, processor, vllm_score, None)
        from trl_vlprm.guidance.server_scorer import ServerPRMScorer, prm_server_args
        from trl_vlprm.guidance.vllm_server import launch_vllm_server

        with launch_vllm_server(prm_server_args(f"{folder}/prm"), SERVER_ARGS, f"{folder}/serve.log") as url:
            served = ServerPRMScorer.from_pretrained(url, f"{folder}/prm", max_concurrency=8)
            return measure(args, model, processor, vllm_score, served.score)


def measure(args: argparse.Namespace, model, processor, vllm_score, served_score) -> list[dict]:
    scorer = PRMScorer(model, processor, step_separator="\n", batch_size=args.batch_size, reuse_prefix=False)
    image = Image.fromarray(
        np.random.default_rng(args.seed).integers(0, 256, (args.image_size, args.image_size, 3), dtype=np.uint8)
    )
    question = {"id": "bench", "prompt": "<image>Which number is missing in the grid?", "images": [image]}
    prefix_tokens = len(encode(scorer, question, [])[0].input_ids)
    scorer.score(question, make_candidates(2, args.seed))  # warm-up (allocations, kernels)
    for extra in (vllm_score, served_score):
        if extra is not None:
            extra(question, make_candidates(2, args.seed))

    rows = []
    for n in args.num_candidates:
        candidates = make_candidates(n, args.seed + n)
        suffix_tokens = float(np.mean([len(s.input_ids) for s in encode(scorer, question, candidates)[2]]))
        functions = {
            "shared": lambda c=candidates: scorer.score(question, c),
            "plain": lambda c=candidates: scorer.score_plain(question, c),
            "batched": lambda c=candidates: score_batched_without_sharing(scorer, question, c),
        }
        if vllm_score is not None:
            functions["vllm"] = lambda c=candidates: vllm_score(question, c)
        if served_score is not None:
            functions["served"] = lambda c=candidates: served_score(question, c)
        times = timed(functions, args.repeats)
        (shared_time, shared), (plain_time, plain), (batched_time, batched) = (
            times["shared"],
            times["plain"],
            times["batched"],
        )
        others = [plain, batched] + [times[name][1] for name in ("vllm", "served") if name in times]
        difference = max(float(np.abs(np.concatenate(shared) - np.concatenate(other)).max()) for other in others)
        if difference > 1e-5:
            raise AssertionError(f"N={n}: prefix-sharing and plain scores differ by {difference:.2e}")
        bound = n * (prefix_tokens + suffix_tokens) / (prefix_tokens + n * suffix_tokens)
        rows.append(
            {
                "N": n,
                "prefix": prefix_tokens,
                "suffix": suffix_tokens,
                "plain/s": n / plain_time,
                "batched/s": n / batched_time,
                "shared/s": n / shared_time,
                "ratio": plain_time / shared_time,
                "ratio_batched": batched_time / shared_time,
                "bound": bound,
                "max|diff|": difference,
                "vllm/s": n / times["vllm"][0] if "vllm" in times else None,
                "served/s": n / times["served"][0] if "served" in times else None,
            }
        )
    return rows


def format_table(rows: list[dict]) -> str:
    header = (
        "| N | prefix tok | mean suffix tok | plain cand/s | batched, no sharing cand/s | PRMScorer cand/s "
        "| ratio vs plain | ratio vs batched | bound | max abs diff |"
    )
    with_vllm = rows and rows[0]["vllm/s"] is not None
    with_served = rows and rows[0]["served/s"] is not None
    columns = 10
    if with_vllm:
        header += " VLLMScorer cand/s | vLLM / PRMScorer |"
        columns += 2
    if with_served:
        header += " ServerPRMScorer cand/s | served / PRMScorer |"
        columns += 2
    lines = [header, "|" + "---|" * columns]
    for r in rows:
        line = (
            f"| {r['N']} | {r['prefix']} | {r['suffix']:.1f} | {r['plain/s']:.1f} | {r['batched/s']:.1f} | "
            f"{r['shared/s']:.1f} | {r['ratio']:.2f} | {r['ratio_batched']:.2f} | {r['bound']:.2f} | "
            f"{r['max|diff|']:.1e} |"
        )
        if with_vllm:
            line += f" {r['vllm/s']:.1f} | {r['vllm/s'] / r['shared/s']:.2f} |"
        if with_served:
            line += f" {r['served/s']:.1f} | {r['served/s'] / r['shared/s']:.2f} |"
        lines.append(line)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="qwen2_5_vl", choices=["qwen2_vl", "qwen2_5_vl"])
    parser.add_argument("--head", default="generative", choices=["value", "generative"])
    parser.add_argument("--hidden_size", type=int, default=128, help="text width of the tiny model")
    parser.add_argument("--image_size", type=int, default=448, help="square image side; max_pixels = side^2")
    parser.add_argument("--num_candidates", type=int, nargs="+", default=[4, 16, 64])
    parser.add_argument("--batch_size", type=int, default=16, help="PRMScorer candidates per forward pass")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per setting; the best is kept")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is steadier on a shared box)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--vllm", action="store_true", help="add the VLLMScorer column (needs vLLM: the CPU vLLM venv)"
    )
    parser.add_argument("--served", action="store_true", help="add the ServerPRMScorer column (a vLLM server)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = run(args)
    print(machine())
    print(
        f"{args.arch}, {args.head} head, hidden {args.hidden_size}, {args.image_size}x{args.image_size} image, "
        f"batch_size {args.batch_size}, {torch.get_num_threads()} torch threads, best of {args.repeats}"
    )
    print(format_table(rows))


if __name__ == "__main__":
    main()
