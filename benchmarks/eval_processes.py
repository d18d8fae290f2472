"""Evaluation wall time with 1 process vs `accelerate launch --num_processes 2` (the same sweep, fresh outputs).

    python benchmarks/eval_processes.py                      # 24 testbed puzzles, tiny transformers policy, N <= 4
    python benchmarks/eval_processes.py --questions 48 --max_new_tokens 64 --repeats 2

The sweep samples with a tiny random Qwen2-VL through the transformers policy (`HFPolicy`), so generation, not the
scripted testbed's microseconds, is what the processes share; the random scorer keeps scoring free. Each process
gets `--threads` torch threads (default 1: one core per process, the fair comparison on a 2-core machine). The wall
time is the whole command, start-up included (a launch pays its imports once per process, in parallel), from the
shell's point of view. Both runs must sample every question exactly once; the script checks it.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(processes: int, config: Path, output_dir: Path, threads: int) -> float:
    """Wall seconds of one evaluation run into a fresh `output_dir`."""
    script = [str(REPO / "recipes" / "eval_tts.py"), "--config", str(config), "--output_dir", str(output_dir)]
    if processes == 1:
        command = [sys.executable, *script]
    else:
        command = [
            sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(free_port()), *script,
        ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env.update(HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    start = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode:
        raise SystemExit(f"{processes}-process run failed:\n{(result.stdout + result.stderr)[-3000:]}")
    return seconds


def sampled_ids(output_dir: Path) -> list[str]:
    from trl_vlprm.utils.resume import read_results

    return [str(r["id"]) for path in (output_dir / "samples").glob("*.jsonl") for r in read_results(path)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=24, help="testbed puzzles evaluated")
    parser.add_argument("--n_max", type=int, default=4, help="solutions sampled per question")
    parser.add_argument("--max_new_tokens", type=int, default=32, help="token budget of a solution")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each process")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each setting, interleaved; best kept")
    args = parser.parse_args(argv)

    from trl_vlprm.testing import build_tiny_vlm

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = build_tiny_vlm(tmp / "tiny", arch="qwen2_vl", seed=0)
        config = tmp / "eval.yaml"
        config.write_text(
            f"benchmarks: ['testbed:0,limit={args.questions}']\n"
            f"policies: ['tiny@hf:{model},max_new_tokens={args.max_new_tokens}']\n"
            "scorers: [random]\nselections: [first, majority, 'best_of_n:min', 'pass@n']\n"
            f"n_values: [1, {args.n_max}]\nnum_subsamples: 2\n"
        )
        times: dict[int, list[float]] = {1: [], 2: []}
        for repeat in range(args.repeats):
            for processes in (1, 2):
                output_dir = tmp / f"out-{processes}-{repeat}"
                times[processes].append(run(processes, config, output_dir, args.threads))
                ids = sampled_ids(output_dir)
                if len(ids) != args.questions or len(set(ids)) != args.questions:
                    raise SystemExit(f"{processes} processes sampled {len(ids)} lines, {len(set(ids))} questions")
    load = os.getloadavg()[0]
    best = {processes: min(values) for processes, values in times.items()}
    print(f"load average {load:.1f}; {args.questions} questions x {args.n_max} samples, {args.threads} thread(s) each")
    print("| processes | wall s (best) | all runs | speed-up vs 1 |")
    print("|---|---|---|---|")
    for processes, seconds in best.items():
        runs = ", ".join(f"{s:.1f}" for s in times[processes])
        print(f"| {processes} | {seconds:.1f} | {runs} | {best[1] / seconds:.2f} |")


if __name__ == "__main__":
    main()
