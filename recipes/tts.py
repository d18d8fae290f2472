"""Test-time scaling: run one search strategy over a dataset with a policy and a step scorer (`trl-vlprm tts`).

    python recipes/tts.py --config recipes/configs/tts_testbed.yaml
    python recipes/tts.py --config recipes/configs/tts_qwen2_5_vl.yaml --strategy dvts --n 16

Arguments, resume and refusals: `trl_vlprm.scripts.tts`.
"""

import sys

from trl_vlprm.cli import run
from trl_vlprm.scripts.tts import main, make_parser  # noqa: F401 (the recipe's API)

if __name__ == "__main__":
    raise SystemExit(run("tts", sys.argv[1:], prog="recipes/tts.py"))
