"""trl_vlprm: vision-language process reward models for the TRL ecosystem.

Data flows `data` -> `labeling` -> `trainer` (+ `modeling`) -> `guidance` -> `eval`, with `testbed` (data whose step
truth is known) for tests and demos, and one command line, `trl-vlprm` (`trl_vlprm.cli`). Imports run in another order,
lowest first: `types`/`registry`/`utils`, `data`, `testbed`, `modeling`, `trainer`, `guidance`, `labeling`, `eval`,
then the command line (`tests/test_layering.py`): labelling reuses guidance's backends and the trainer's metrics.
"""

from importlib import import_module
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# Heavy imports (torch, transformers) are deferred so `trl_vlprm.data` stays light for data-only users.
_LAZY = {
    "VLPRMConfig": "trl_vlprm.trainer.config",
    "VLPRMTrainer": "trl_vlprm.trainer.vlprm_trainer",
    "PRMScorer": "trl_vlprm.guidance.scorer",
    "Candidate": "trl_vlprm.types",
    "VLPRMReward": "trl_vlprm.guidance.rewards",
    "VLPRMGRPOConfig": "trl_vlprm.guidance.process_grpo",
    "VLPRMGRPOTrainer": "trl_vlprm.guidance.process_grpo",
    "load_prm": "trl_vlprm.modeling.heads",
}

if TYPE_CHECKING:
    from trl_vlprm.guidance.process_grpo import VLPRMGRPOConfig, VLPRMGRPOTrainer
    from trl_vlprm.guidance.rewards import VLPRMReward
    from trl_vlprm.guidance.scorer import PRMScorer
    from trl_vlprm.modeling.heads import load_prm
    from trl_vlprm.trainer.config import VLPRMConfig
    from trl_vlprm.trainer.vlprm_trainer import VLPRMTrainer
    from trl_vlprm.types import Candidate


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'trl_vlprm' has no attribute {name!r}")


__all__ = [
    "VLPRMConfig",
    "VLPRMTrainer",
    "PRMScorer",
    "Candidate",
    "VLPRMReward",
    "VLPRMGRPOConfig",
    "VLPRMGRPOTrainer",
    "load_prm",
    "__version__",
]
