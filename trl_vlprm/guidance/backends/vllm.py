"""vLLM backends (in-process engines): the `vllm` policy (`VLLMPolicy`) and the `vllm` scorer (`VLLMScorer`)."""

from __future__ import annotations

from typing import Any

from trl_vlprm.guidance.backends import one_model, policy_backend, scorer_backend


@policy_backend("vllm", takes_defaults=True, argument="model")
def vllm_policy(args: list[str], kwargs: dict[str, Any], seed: int | None):
    """ "vllm:<model>,temperature=...,max_model_len=...": `VLLMPolicy.from_pretrained` (keywords: `SamplingConfig`
    fields and the engine's `max_model_len`, `max_images_per_prompt`, `dtype`, `revision`)."""
    from trl_vlprm.guidance.vllm_policy import VLLMPolicy

    return VLLMPolicy.from_pretrained(one_model(args, "vllm policy"), **{"seed": seed, **kwargs})


@scorer_backend("vllm", takes_defaults=True, argument="model")
def vllm_scorer(args: list[str], kwargs: dict[str, Any], seed: int | None):
    """ "vllm:<PRM folder>,max_model_len=...": `VLLMScorer.from_pretrained` (a pooling engine; same scores as
    the `prm` scorer)."""
    from trl_vlprm.guidance.vllm_scorer import VLLMScorer

    return VLLMScorer.from_pretrained(one_model(args, "vllm scorer"), **kwargs)
