"""Build a step-labelled VL-PRM dataset: rollouts, Monte-Carlo labels, a VLM judge, a combination rule
(`trl-vlprm label`).

    python recipes/build_dataset.py --config recipes/configs/label_testbed.yaml
    python recipes/build_dataset.py --config recipes/configs/label_testbed.yaml --rule consensus --output_dir out/c

Rerunning into the same `output_dir` resumes; see docs/labelling.md.
"""

import sys

from trl_vlprm.cli import run
from trl_vlprm.scripts.label import main, make_parser  # noqa: F401 (the recipe's API)

if __name__ == "__main__":
    raise SystemExit(run("label", sys.argv[1:], prog="recipes/build_dataset.py"))
