"""The vLLM benchmark scripts at their smallest size, on real CPU engines and a real server on loopback (vLLM venv).

A smoke run: the script finishes, its own checks pass and it prints its markdown table; no timing is asserted.
"""

from test_benchmarks import load_script, markdown_tables


def test_label_throughput_smoke(capsys):
    script = load_script("label_throughput.py")
    script.main(["--questions", "1", "--rollouts", "2", "--completions", "2", "--max_new_tokens", "4"])
    out = capsys.readouterr().out
    assert markdown_tables(out) == 1
    rows = [line for line in out.splitlines() if line.startswith("| ") and "policy" not in line]
    assert len(rows) == 3  # transformers, in-process vLLM, served vLLM
    assert all(int(row.split("|")[2]) > 0 for row in rows)  # each policy sampled at least one rollout


def test_gpu_check_tiny_runs_its_vllm_rows(capsys):
    # With vLLM installed, --tiny also runs VLLMPolicy and VLLMScorer (real CPU engines) on the tiny-width PRM (the
    # training rows need `datasets`, which this venv lacks: tests/test_benchmarks.py runs them).
    rows = load_script("gpu_check.py").main(
        ["--tiny", "--threads", "1", "--sizes", "7B", "--parts", "policy", "score"]
    )
    assert markdown_tables(capsys.readouterr().out) == 1
    policy = [r for r in rows if r["what"] == "vLLM policy"]
    vllm = [r for r in rows if r["setting"] == "VLLMScorer"]
    assert len(policy) == 1 and "tokens/s" in policy[0]["value"]
    assert len(vllm) == 1 and "candidates/s" in vllm[0]["value"]


def test_score_throughput_vllm_smoke(capsys):
    # The VLLMScorer column of benchmarks/vllm_results.md (a real CPU engine in process) beside PRMScorer; the script
    # itself checks every score list agrees to 1e-5. (`--served` adds a server start, ~50 s here: the served scorer's
    # parity is tested in tests/test_vllm_paper_prm.py and tests/test_vllm_scorer.py.)
    script = load_script("score_throughput.py")
    script.main(["--num_candidates", "3", "--repeats", "1", "--image_size", "112", "--hidden_size", "128", "--vllm"])
    out = capsys.readouterr().out
    assert markdown_tables(out) == 1 and "VLLMScorer cand/s" in out
    (row,) = [line.strip("|").split("|") for line in out.splitlines() if line.startswith("| 3 |")]
    assert float(row[9]) <= 1e-5 and float(row[10]) > 0  # max diff of all scorers; VLLMScorer's rate
