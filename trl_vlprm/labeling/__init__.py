"""Hybrid step labelling: Monte-Carlo rollout labels, a VLM judge, and rules that combine them (docs/labelling.md)."""

from trl_vlprm.labeling.builder import build_dataset, run
from trl_vlprm.labeling.combine import RULES, Combined, combine
from trl_vlprm.labeling.config import LabelConfig
from trl_vlprm.labeling.judge import JudgeClient, JudgeConfig, JudgeResult
from trl_vlprm.labeling.judge_prompts import parse_verdicts
from trl_vlprm.labeling.labeler import BatchStats, JudgeFailureError, LabelQuality, label_batch, step_label_quality
from trl_vlprm.labeling.mc import MCConfig, MCResult, Rollout, label_rollout, mc_score, sample_rollouts
from trl_vlprm.labeling.shards import load_labelled

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
