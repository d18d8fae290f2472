"""Backends on OpenAI-compatible servers (`vllm serve`, SGLang, hosted APIs): the `server` policy (`ServerPolicy`) and
the `server` scorer (`ServerPRMScorer`, a PRM served by vLLM's pooling runner)."""

from __future__ import annotations

from typing import Any

from trl_vlprm.guidance.backends import policy_backend, scorer_backend


@policy_backend("server", takes_defaults=True, argument="urls")
def server_policy(args: list[str], kwargs: dict[str, Any], seed: int | None):
    """ "server:<base URL>,<base URL>,...,model=<name>,max_concurrency=16": `ServerPolicy` over one server or a
    fleet (keywords: `SamplingConfig` fields and the fleet's settings)."""
    from trl_vlprm.guidance.server_policy import ServerPolicy

    if not args:
        raise ValueError("a server policy needs at least one base URL, e.g. server:http://host:8000/v1,model=name")
    return ServerPolicy(args, **{"seed": seed, **kwargs})


@scorer_backend("server", takes_defaults=True, argument="urls")
def server_scorer(args: list[str], kwargs: dict[str, Any], seed: int | None):
    """ "server:<base URL>,...,prm=<PRM folder>": `ServerPRMScorer.from_pretrained` (the local folder gives the
    processor and the trained step separator; the server serves the same folder, see `prm_server_args`)."""
    from trl_vlprm.guidance.server_scorer import ServerPRMScorer

    if not args or "prm" not in kwargs:
        raise ValueError("a server scorer needs base URLs and the served PRM's folder: server:<url>,...,prm=<folder>")
    kwargs = dict(kwargs)
    return ServerPRMScorer.from_pretrained(args, kwargs.pop("prm"), **kwargs)
