"""The commands of `trl-vlprm` (`trl_vlprm.cli`), one module each, in TRL's script layout (`trl/scripts/*.py`).

Every module has `make_parser(subparsers=None, prog=None)`, which returns a `trl.TrlParser` over the command's
argument dataclasses (so `--config file.yaml` and `--field value` flags work alike), and `main(...)`, which takes
the parsed dataclasses and runs. `recipes/*.py` are thin wrappers around the same `main`. A module's
`EXPECTED_ERRORS` are the failures a user causes (bad records, a rerun with other settings, a locked output): the
CLI prints them as one line and exits 1 instead of a traceback.
"""

# name -> one-line help, in pipeline order; the module is `trl_vlprm.scripts.<name>`.
COMMANDS = {
    "puzzles": "write procedural testbed puzzles in the stepwise-supervision schema",
    "label": "build a step-labelled dataset: rollouts, Monte-Carlo labels, a VLM judge, a combination rule",
    "train": "train a (vision-language) process reward model",
    "grpo": "reinforcement learning: GRPO of a vision-language policy with a trained VL-PRM as its reward",
    "tts": "test-time scaling: run one search strategy over a dataset with a policy and a step scorer",
    "eval": "test-time-scaling evaluation: benchmarks x policies x scorers x strategies x N",
    "check": "guard-rails for a trained PRM: image-swap sensitivity and best-of-N vs a random pick",
    "view": "one HTML page of every question, solution and step score of a run, a labelled dataset or a bench",
}

__all__ = ["COMMANDS"]
