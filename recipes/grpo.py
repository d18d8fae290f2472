"""Train a vision-language policy with GRPO, rewarded by a trained VL-PRM: `trl-vlprm grpo` as a script, so that
`accelerate launch` can run it on several processes.

    accelerate launch --config_file recipes/accelerate/zero2.yaml --num_processes 8 recipes/grpo.py \
        --config recipes/configs/grpo_qwen2_5_vl_3b.yaml

Arguments and what is written: `trl_vlprm.scripts.grpo`.
"""

import sys

from trl_vlprm.cli import run
from trl_vlprm.scripts.grpo import GRPOScriptArguments, main, make_parser  # noqa: F401 (the recipe's API)

if __name__ == "__main__":
    raise SystemExit(run("grpo", sys.argv[1:], prog="recipes/grpo.py"))
