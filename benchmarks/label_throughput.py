"""Monte-Carlo labelling throughput: rollouts per second with the transformers policy, the in-process vLLM policy and
the server-backed policy (a real vLLM server on loopback), on the same questions with the same K.

    .cache/vllm-venv/bin/python benchmarks/label_throughput.py               # needs vLLM: the CPU vLLM venv
    .cache/vllm-venv/bin/python benchmarks/label_throughput.py --questions 8 --rollouts 4 --completions 4

One tiny random Qwen2-VL (width 128, as the CPU attention kernels need) serves all three backends; its samples are
gibberish, so every rollout fails and MC labelling estimates every step (`every_step` mode), the costliest case. The
step separator is a space, so the gibberish splits into many steps and MC has prefixes to complete.
A *rollout* here is one sampled sequence (a solution or an MC completion): the figure is sequences per second over a
whole `label_batch` call, generation, parsing and bookkeeping included. `tokens/s` counts generated tokens.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from _common import machine

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the in-process engine starts in seconds

ENGINE = {"enforce_eager": True, "gpu_memory_utilization": 0.05, "kv_cache_memory_bytes": 64 << 20}
SERVER_ARGS = [
    "--enforce-eager", "--dtype", "float32", "--max-model-len", "1024", "--gpu-memory-utilization", "0.05",
    "--kv-cache-memory-bytes", str(64 << 20), "--limit-mm-per-prompt", '{"image": 1, "video": 0}', "--seed", "0",
    "--served-model-name", "tiny",
]  # fmt: skip


def label(policy, questions, args) -> dict:
    from trl_vlprm.labeling.labeler import label_batch
    from trl_vlprm.labeling.mc import MCConfig

    start = time.perf_counter()
    _, stats = label_batch(
        questions, policy, "mc_only", args.rollouts, MCConfig(num_completions=args.completions, mode="every_step")
    )
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "rollouts": policy.stats.sequences,
        "rollouts/s": policy.stats.sequences / seconds,
        "tokens/s": policy.stats.tokens / seconds,
        "steps": stats.steps_total,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=4, help="testbed puzzles labelled")
    parser.add_argument("--rollouts", type=int, default=4, help="solutions sampled per question")
    parser.add_argument("--completions", type=int, default=4, help="K: MC completions per step prefix")
    parser.add_argument("--max_new_tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the transformers policy")
    args = parser.parse_args(argv)

    import torch

    from trl_vlprm.guidance.hf_policy import HFPolicy
    from trl_vlprm.guidance.server_policy import ServerPolicy
    from trl_vlprm.guidance.vllm_policy import VLLMPolicy
    from trl_vlprm.guidance.vllm_server import launch_vllm_server
    from trl_vlprm.testbed import generate_puzzles
    from trl_vlprm.testing import build_tiny_vlm

    torch.set_num_threads(args.threads)
    questions = [dict(row) for row in generate_puzzles(args.questions, seed=0, image_size=112)]
    sampling = {"step_separator": " ", "temperature": 1.0, "max_new_tokens": args.max_new_tokens, "seed": 0}
    rows = {}
    with tempfile.TemporaryDirectory() as folder:
        path = str(build_tiny_vlm(f"{folder}/policy", arch="qwen2_vl", hidden_size=128, seed=0))
        rows["transformers (HFPolicy)"] = label(
            HFPolicy.from_pretrained(path, dtype=torch.float32, **sampling), questions, args
        )
        engine = VLLMPolicy.from_pretrained(path, max_model_len=1024, dtype="float32", llm_kwargs=ENGINE, **sampling)
        rows["vLLM in-process (VLLMPolicy)"] = label(engine, questions, args)
        del engine
        with launch_vllm_server([path], SERVER_ARGS, f"{folder}/serve.log") as url:
            served = ServerPolicy(f"{url}/v1", max_concurrency=8, **sampling)
            rows["vLLM server (ServerPolicy)"] = label(served, questions, args)
    base = rows["transformers (HFPolicy)"]["rollouts/s"]
    print(machine())
    print(
        f"{args.questions} puzzles x {args.rollouts} rollouts, MC every step with K={args.completions}, "
        f"max_new_tokens {args.max_new_tokens}, step separator ' ', tiny Qwen2-VL width 128"
    )
    print("| policy | rollouts | seconds | rollouts/s | tokens/s | vs transformers |")
    print("|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(
            f"| {name} | {r['rollouts']} | {r['seconds']:.1f} | {r['rollouts/s']:.1f} | {r['tokens/s']:.0f} | "
            f"{r['rollouts/s'] / base:.2f} |"
        )


if __name__ == "__main__":
    main()
