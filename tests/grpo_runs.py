"""What the GRPO tests share: a tiny CPU GRPO run's settings and its left-padding policy processor.

A run is two steps of one or two questions x 4 completions, no checkpoints, no tracker; a test overrides only what it
is about (`tiny_grpo_args(path, learning_rate=1e-3)`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trl import GRPOConfig

from trl_vlprm.modeling.processor import load_processor

TINY_GRPO = {
    "per_device_train_batch_size": 8,  # two questions x 4 completions a step
    "num_generations": 4,
    "max_completion_length": 16,
    "max_steps": 2,
    "logging_steps": 1,
    "learning_rate": 1e-2,
    "beta": 0.04,
    "use_cpu": True,
    "bf16": False,  # GRPOConfig defaults to bf16, which a CPU run refuses
    "report_to": "none",
    "save_strategy": "no",
    "seed": 0,
}


def tiny_grpo_args(output_dir: str | Path, config_class: type[GRPOConfig] = GRPOConfig, **settings: Any) -> GRPOConfig:
    """`config_class` (`GRPOConfig` or a subclass) with `TINY_GRPO`, then `settings`, writing to `output_dir`."""
    return config_class(output_dir=str(output_dir), **{**TINY_GRPO, **settings})


def policy_processor(policy: str | Path) -> Any:
    """The policy's processor, padding on the left as generation needs."""
    processor = load_processor(policy)
    processor.tokenizer.padding_side = "left"
    return processor
