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
