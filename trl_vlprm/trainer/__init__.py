"""Training stage: `VLPRMConfig` + `VLPRMTrainer`, tokenization and collation of stepwise-supervision records."""

from trl_vlprm.trainer.collator import DataCollatorForVLPRM
from trl_vlprm.trainer.config import VLPRMConfig
from trl_vlprm.trainer.metrics import compute_accuracy, compute_step_metrics
from trl_vlprm.trainer.tokenization import tokenize_row
from trl_vlprm.trainer.vlprm_trainer import VLPRMTrainer

__all__ = [
    "VLPRMConfig",
    "VLPRMTrainer",
    "DataCollatorForVLPRM",
    "compute_accuracy",
    "compute_step_metrics",
    "tokenize_row",
]
