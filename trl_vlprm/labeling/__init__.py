"""Hybrid step labelling: Monte-Carlo rollout labels, a VLM judge, and rules that combine them (docs/labelling.md)."""

from trl_vlprm.labeling.builder import JudgeFailureError, LabelConfig, build_dataset, load_labelled, run
from trl_vlprm.labeling.combine import RULES, Combined, combine
from trl_vlprm.labeling.judge import JudgeClient, JudgeConfig, JudgeResult
from trl_vlprm.labeling.judge_prompts import parse_verdicts
from trl_vlprm.labeling.labeler import BatchStats, LabelQuality, label_batch, step_label_quality
from trl_vlprm.labeling.mc import MCConfig, MCResult, Rollout, label_rollout, mc_score, sample_rollouts

__all__ = [
    "RULES",
    "BatchStats",
    "Combined",
    "JudgeClient",
    "JudgeConfig",
    "JudgeFailureError",
    "JudgeResult",
    "LabelConfig",
    "LabelQuality",
    "MCConfig",
    "MCResult",
    "Rollout",
    "build_dataset",
    "combine",
    "label_batch",
    "label_rollout",
    "load_labelled",
    "run",
    "mc_score",
    "parse_verdicts",
    "sample_rollouts",
    "step_label_quality",
]
