"""Guidance: step scorers (a trained PRM on transformers, vLLM or a server), policies, search strategies, step-score
aggregation, the test-time-scaling runner, the PRM as a GRPO reward and per-step credit in GRPO (docs/guidance.md,
docs/rl.md). Exports load lazily."""

from trl_vlprm.utils.lazy import lazy_getattr

_EXPORTS = {
    "PRMScorer": ".scorer",
    "VLLMScorer": ".vllm_scorer",
    "ServerPRMScorer": ".server_scorer",
    "HFPolicy": ".hf_policy",
    "VLLMPolicy": ".vllm_policy",
    "ServerPolicy": ".server_policy",
    "SearchConfig": ".strategies",
    "get_strategy": ".strategies",
    "aggregate": ".aggregation",
    "TTSArguments": ".tts",
    "run_tts": ".tts",
    "VLPRMReward": ".rewards",
    "VLPRMGRPOConfig": ".process_grpo",
    "VLPRMGRPOTrainer": ".process_grpo",
}
__getattr__ = lazy_getattr(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
