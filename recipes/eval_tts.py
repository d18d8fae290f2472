"""Test-time-scaling evaluation: benchmarks x policies x outcome selections x N from one generation per question
(`trl-vlprm eval`).

    python recipes/eval_tts.py --config recipes/configs/eval_tts_testbed.yaml
    python recipes/eval_tts.py --config recipes/configs/eval_tts_paper.yaml --output_dir outputs/eval_paper

Rerunning into the same `output_dir` resumes (finished questions are not sampled again); see docs/evaluation.md.
"""

import sys

from trl_vlprm.cli import run
from trl_vlprm.scripts.eval import main, make_parser  # noqa: F401 (the recipe's API)

if __name__ == "__main__":
    raise SystemExit(run("eval", sys.argv[1:], prog="recipes/eval_tts.py"))
