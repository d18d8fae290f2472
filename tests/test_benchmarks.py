"""Every script in benchmarks/ runs at its smallest size (a smoke run: it finishes, its own agreement checks pass and
it prints its markdown table). No timing is asserted. `label_throughput.py` needs vLLM: tests/test_vllm_benchmarks.py.
"""

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
VLLM_ONLY = {"label_throughput.py"}  # smoke-run in the vLLM venv (tests/test_vllm_benchmarks.py)
# Smoke-run by another test file (named; checked to exist and to run the script).
ELSEWHERE = {"process_credit.py": "test_process_grpo.py"}
SMOKE_RUN_HERE = {
    "train_throughput.py",
    "score_throughput.py",
    "reward_cost.py",
    "label_quality.py",
    "eval_processes.py",
    "real_shapes.py",
    "viewer_scale.py",
    "gpu_check.py",
    "family_prefix_sharing.py",
}


def load_script(name: str):
    """Import benchmarks/<name> as a module (its `__main__` block does not run); its helper `_common` imports too."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"benchmark_{Path(name).stem}", BENCHMARKS / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def markdown_tables(text: str) -> int:
    """Number of markdown tables (a header row followed by a |---| separator row) in `text`."""
    lines = text.splitlines()
    return sum(1 for a, b in zip(lines, lines[1:]) if a.startswith("|") and b.startswith("|---"))


def test_every_benchmark_script_has_a_smoke_run():
    scripts = {p.name for p in BENCHMARKS.glob("*.py") if not p.name.startswith("_")}
    assert len(scripts) >= 6
    assert scripts == SMOKE_RUN_HERE | VLLM_ONLY | set(ELSEWHERE), "a benchmark script without a smoke test"
    for script, test_file in ELSEWHERE.items():
        assert script in (Path(__file__).parent / test_file).read_text()


def test_train_throughput_smoke(capsys):
    speeds = load_script("train_throughput.py").main(
        ["--puzzles", "2", "--steps", "2", "--warmup", "1", "--repeats", "1", "--batch_size", "2"]
    )
    out = capsys.readouterr().out
    assert set(speeds) == {"VLPRMTrainer", "Trainer"} and all(len(v) == 1 and v[0] > 0 for v in speeds.values())
    assert "Machine:" in out and markdown_tables(out) == 1


def test_score_throughput_smoke(capsys):
    script = load_script("score_throughput.py")
    script.main(["--num_candidates", "3", "--repeats", "1", "--image_size", "112", "--hidden_size", "64"])
    out = capsys.readouterr().out
    assert "Machine:" in out and markdown_tables(out) == 1
    row = [line for line in out.splitlines() if line.startswith("| 3 |")]
    assert len(row) == 1
    assert float(row[0].strip("|").split("|")[-1]) <= 1e-5  # max abs diff between PRMScorer and the baselines


def test_reward_cost_smoke(capsys):
    script = load_script("reward_cost.py")
    script.main(["--num_generations", "2", "--questions", "1", "--repeats", "1", "--image_size", "112"])
    out = capsys.readouterr().out
    assert markdown_tables(out) == 1
    row = [line for line in out.splitlines() if line.startswith("| 2 |")]
    assert len(row) == 1 and float(row[0].strip("|").split("|")[-1]) <= 1e-5


def test_label_quality_smoke():
    script = load_script("label_quality.py")
    args = script.parse_args(["--num_questions", "6", "--num_rollouts", "2", "--mc_num_completions", "2"])
    rows = script.run(args)
    table = script.format_table(rows)
    assert markdown_tables(table) == 1 and len(rows) >= 3
    assert all(0.0 <= r["accuracy"] <= 1.0 and 0.0 < r["coverage"] <= 1.0 for r in rows)
    # the batch judge's cost is spread over the labels a rule keeps: fewer kept labels, more dollars each
    judged = [r for r in rows if r["judge_per_step"] > 0]
    assert judged and all(r["judge_dollars_per_label"] > 0 for r in judged)
    by_coverage = sorted(judged, key=lambda r: r["coverage"])
    assert by_coverage[0]["judge_dollars_per_label"] >= by_coverage[-1]["judge_dollars_per_label"]


@pytest.mark.slow
def test_eval_processes_smoke(capsys):
    # Launches `accelerate launch --num_processes 2` as the script does; the script checks every question was
    # sampled exactly once in both runs.
    load_script("eval_processes.py").main(["--questions", "2", "--n_max", "2", "--max_new_tokens", "4"])
    out = capsys.readouterr().out
    assert markdown_tables(out) == 1
    assert [
        line.split("|")[1].strip() for line in out.splitlines() if line.startswith("| 1 ") or line.startswith("| 2 ")
    ] == ["1", "2"]


def test_real_shapes_smoke(capsys):
    # Toy widths with the real vocabularies: the full-vocabulary step must hold the [rows, tokens, vocab] logits,
    # the verdict-rows step must not; the losses and scores must agree (the script's own checks).
    results = load_script("real_shapes.py").main(["--tiny", "--threads", "1"])
    out = capsys.readouterr().out
    assert "Machine:" in out and markdown_tables(out) == 2
    assert len(results["train"]) == 4 and len(results["score"]) == 2
    assert all(r["image_tokens"] > 0 and r["max_diff"] <= 2e-2 for r in results["score"])


@pytest.mark.slow
def test_viewer_scale_smoke(capsys):
    """The page of a 30-question sweep opens in headless Chromium; the script's own checks (every question on the
    page, the first page drawn, the filter keeping what the sweep grades wrong) pass."""
    row = load_script("viewer_scale.py").main(["--questions", "30", "--samples", "4", "--page_size", "10"])
    assert row["questions"] == 30 and row["steps"] > 30 * 4 and row["page_mb"] > 0 and row["ready_s"] > 0
    assert markdown_tables(capsys.readouterr().out) == 1


def test_gpu_check_tiny_smoke(capsys):
    # The CPU smoke version of `make gpu-check`: every training row (both widths, full vocabulary and verdict rows)
    # and PRMScorer's row; the vLLM rows say vLLM is missing here (tests/test_vllm_benchmarks.py runs them).
    rows = load_script("gpu_check.py").main(["--tiny", "--threads", "1"])
    out = capsys.readouterr().out
    assert "Machine:" in out and markdown_tables(out) == 1
    train = [r for r in rows if r["what"] == "train"]
    assert len(train) == 4 and all("tokens/s" in r["value"] for r in train)
    assert [r["setting"] for r in rows if r["what"] == "score"] == ["PRMScorer", "VLLMScorer"]


def test_family_prefix_sharing_smoke(capsys):
    import torch

    threads = torch.get_num_threads()
    try:  # 2 threads, not the suite's 1, so the line below shows the option was applied
        rows = load_script("family_prefix_sharing.py").main(
            ["--model_types", "qwen3_5", "llava_next", "--num_candidates", "3", "--repeats", "1", "--image_size",
             "112", "--hidden_size", "64", "--threads", "2"]
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "Machine:" in out and "2 torch thread(s)" in out and markdown_tables(out) == 1
    assert [r["model_type"] for r in rows] == ["qwen3_5", "llava_next"]
    assert all(r["max_diff"] <= 1e-5 and r["P"] > 0 and r["speedup"] > 0 for r in rows)
