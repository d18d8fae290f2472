"""One vLLM engine per rank: a 2-process `accelerate launch` of a search over the testbed with `VLLMPolicy` (the CPU
vLLM venv, `.ci/vllm_test.sh`), as `recipes/slurm/label_multinode.sbatch` runs one engine per GPU.

Each rank builds its own in-process engine beside the gloo group the rank protocol (`trl_vlprm.utils.ranks`) joins;
the ranks share the questions, and rank 0 merges the other's part file into one results file.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from collections import Counter

import pytest
from test_ranks import free_port  # test_launch needs `datasets`, which this venv lacks
from test_vllm_policy import ENGINE_KWARGS

from trl_vlprm.testing import build_tiny_vlm
from trl_vlprm.utils.ranks import part_files
from trl_vlprm.utils.resume import read_results

WORKER = textwrap.dedent(
    """
    import json, os, sys

    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the engine in the rank's own process: starts in seconds


    def main():
        from trl_vlprm.guidance.strategies import SearchConfig
        from trl_vlprm.guidance.tts import run_tts, summary_line
        from trl_vlprm.guidance.vllm_policy import VLLMPolicy
        from trl_vlprm.testbed import generate_puzzles
        from trl_vlprm.testbed.scorers import RandomScorer
        from trl_vlprm.utils.ranks import Ranks

        ranks = Ranks.from_environment()
        model, output, engine = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
        policy = VLLMPolicy.from_pretrained(
            model, max_model_len=512, dtype="float32", llm_kwargs=engine, seed=0, temperature=1.0,
            max_new_tokens=16, max_step_tokens=8, step_separator=" ",
        )
        questions = list(generate_puzzles(6, seed=0))
        summary = run_tts(questions, "best_of_n", policy, RandomScorer(0), SearchConfig(n=2), output,
                          show_progress=False, ranks=ranks)
        print(f"rank {ranks.rank} sampled {policy.stats.sequences} sequences;", summary_line(summary, "best_of_n"))


    if __name__ == "__main__":
        main()
    """
)


@pytest.mark.slow
def test_two_ranks_each_with_its_own_vllm_engine_share_a_search(tmp_path):
    model = build_tiny_vlm(tmp_path / "tiny", arch="qwen2_vl", hidden_size=128)
    output = tmp_path / "results.jsonl"
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(free_port()), str(script), str(model), str(output), json.dumps(ENGINE_KWARGS),
    ]  # fmt: skip
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    assert "[rank 0/2] tts best_of_n: 3 of the 6 questions left" in log
    assert "[rank 1/2] tts best_of_n: 3 of the 6 questions left" in log
    # Both engines generated: each rank sampled 2 solutions for each of its 3 questions.
    assert sorted(int(n) for n in re.findall(r"rank \d sampled (\d+) sequences", log)) == [6, 6]
    ids = Counter(record["id"] for record in read_results(output))
    assert len(ids) == 6 and set(ids.values()) == {1} and part_files(output) == []
