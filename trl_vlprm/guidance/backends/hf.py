"""transformers backends: the `hf` policy (`HFPolicy`) and the `prm` scorer (`PRMScorer`)."""

from __future__ import annotations

from typing import Any

from trl_vlprm.guidance.backends import one_model, policy_backend, scorer_backend

# Keywords that configure a vLLM engine, not the policy: dropped when a spec written for vLLM runs on transformers
# (the evaluation sweep's `policy_backend: hf` on a machine without vLLM).
VLLM_ENGINE_KEYWORDS = ("max_model_len", "max_images_per_prompt", "llm_kwargs")
VLLM_PREFIX = "vllm:"  # "prm:vllm:<folder>": the PRM on a vLLM pooling engine


@policy_backend("hf", takes_defaults=True, argument="model")
def hf_policy(args: list[str], kwargs: dict[str, Any], seed: int | None):
    """ "hf:<model>,temperature=...,revision=...": `HFPolicy.from_pretrained` (keywords: `SamplingConfig` fields,
    `revision`, `dtype`, `device`: "auto" is this process's accelerator, e.g. `cuda:$LOCAL_RANK` under a launcher)."""
    from trl_vlprm.guidance.hf_policy import HFPolicy

    kwargs = {k: v for k, v in kwargs.items() if k not in VLLM_ENGINE_KEYWORDS}
    return HFPolicy.from_pretrained(one_model(args, "hf policy"), **{"seed": seed, **kwargs})


@scorer_backend("prm", takes_defaults=True, argument="model")
def prm_scorer(args: list[str], kwargs: dict[str, Any], seed: int | None):
    """ "prm:<PRM folder or repo id>,batch_size=...,device=cuda:1": `PRMScorer.from_pretrained` (`device` default
    "auto": this process's accelerator). "prm:vllm:<folder>" is the `vllm` scorer of that folder (a pooling engine,
    same scores), so a config's `prm_model_path` can name either."""
    from trl_vlprm.guidance.scorer import PRMScorer

    if len(args) != 1:
        raise ValueError(f"a prm scorer needs one model folder, got {args}")
    if args[0].startswith(VLLM_PREFIX):
        from trl_vlprm.guidance.backends.vllm import vllm_scorer

        if kwargs.get("revision") is not None:
            raise ValueError(f"prm:{args[0]}: a vLLM-backed PRM is read from a local folder; revision is unused")
        if kwargs.get("device", "auto") != "auto":  # the engine takes its GPUs from CUDA_VISIBLE_DEVICES
            raise ValueError(
                f"prm:{args[0]}: device={kwargs['device']!r}; a vLLM-backed PRM places itself (use 'auto')"
            )
        kwargs = {k: v for k, v in kwargs.items() if k not in ("revision", "device")}
        return vllm_scorer([args[0].removeprefix(VLLM_PREFIX)], kwargs, seed)
    return PRMScorer.from_pretrained(args[0], **kwargs)
