"""Train a (vision-language) process reward model from one YAML recipe: `trl-vlprm train` as a script, so that
`accelerate launch` can run it on several processes.

    accelerate launch --config_file recipes/accelerate/zero2.yaml recipes/train.py \
        --config recipes/configs/vlprm_qwen2_5_vl_3b.yaml

Arguments and what is written: `trl_vlprm.scripts.train`.
"""

import sys

from trl_vlprm.cli import run
from trl_vlprm.scripts.train import PRMScriptArguments, main, make_parser  # noqa: F401 (the recipe's API)

if __name__ == "__main__":
    raise SystemExit(run("train", sys.argv[1:], prog="recipes/train.py"))
