"""vLLM backends (in-process engines): the `vllm` policy (`VLLMPolicy`) and the `vllm` scorer (`VLLMScorer`)."""

from __future__ import annotations

import inspect
from typing import Any

from trl_vlprm.guidance.backends import one_model, policy_backend, scorer_backend
from trl_vlprm.guidance.sampling import SAMPLING_FIELDS


def _engine_keywords(kwargs: dict[str, Any], known: set[str]) -> dict[str, Any]:
    """`kwargs` with every keyword `known` does not hold moved into `llm_kwargs`, so a spec can set any `vllm.LLM`
    argument: "vllm:<model>,gpu_memory_utilization=0.9,tensor_parallel_size=2,enforce_eager=true"."""
    engine = {k: v for k, v in kwargs.items() if k not in known}
    kept = {k: v for k, v in kwargs.items() if k in known}
    if engine:
        kept["llm_kwargs"] = {**engine, **dict(kept.get("llm_kwargs") or {})}
    return kept


def _parameters(function) -> set[str]:
    return {name for name in inspect.signature(function).parameters if name not in ("cls", "self", "kwargs")}


@policy_backend("vllm", takes_defaults=True, argument="model")
def vllm_policy(args: list[str], kwargs: dict[str, Any], seed: int | None):
    """ "vllm:<model>,temperature=...,max_model_len=...": `VLLMPolicy.from_pretrained` (keywords: `SamplingConfig`
    fields, its `max_model_len`, `max_images_per_prompt`, `dtype`, `revision`, and any other `vllm.LLM` argument)."""
    from trl_vlprm.guidance.vllm_policy import VLLMPolicy

    known = _parameters(VLLMPolicy.from_pretrained) | _parameters(VLLMPolicy.__init__) | set(SAMPLING_FIELDS)
    kwargs = _engine_keywords({"seed": seed, **kwargs}, known)
    return VLLMPolicy.from_pretrained(one_model(args, "vllm policy"), **kwargs)


@scorer_backend("vllm", takes_defaults=True, argument="model")
def vllm_scorer(args: list[str], kwargs: dict[str, Any], seed: int | None):
    """ "vllm:<PRM folder>,max_model_len=...": `VLLMScorer.from_pretrained` (a pooling engine; same scores as
    the `prm` scorer; keywords it does not name go to `vllm.LLM`)."""
    from trl_vlprm.guidance.vllm_scorer import VLLMScorer

    known = _parameters(VLLMScorer.from_pretrained) | _parameters(VLLMScorer.__init__)
    return VLLMScorer.from_pretrained(one_model(args, "vllm scorer"), **_engine_keywords(kwargs, known))
