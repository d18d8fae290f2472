"""One factory for policies and step scorers: a spec names a backend, the backend builds the object.

A spec is `"kind:positional,...,key=value,..."` (numbers and true/false converted, `revision` and `model` kept as
text), e.g.
`"vllm:Qwen/Qwen2.5-VL-7B-Instruct,temperature=0.7,max_model_len=8192"`, `"server:http://a:8000/v1,http://b:8000/v1,
model=qwen"`, `"scripted:perception_error_rate=0.3"`, `"prm:outputs/prm,batch_size=8"` or `"oracle"`. TTS
(`recipes/tts.py`), the evaluation sweep (`recipes/eval_tts.py`) and labelling (`trl-vlprm label`) all build their
policy and scorer here, so a backend added once is usable by all three.

Every backend lives in one module of this package and registers itself at its definition site:

    @policy_backend("mine", takes_defaults=True)
    def mine(args: list[str], kwargs: dict[str, Any], seed: int | None) -> Policy:
        return MinePolicy(args[0], **{"seed": seed, **kwargs})

The registries import every module of this package before their first lookup (`Registry(discover=...)`; the builders
import their heavy dependencies, torch, vLLM, openai, only when called), so a new file in
`trl_vlprm/guidance/backends/` is the whole change. Code outside the package may register too
(`POLICY_BACKENDS.register(name)(Backend(...))`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from trl_vlprm.registry import Registry
from trl_vlprm.types import Policy, StepScorer

Builder = Callable[[list[str], dict[str, Any], "int | None"], Any]


@dataclass(frozen=True)
class Backend:
    """A way to build a policy or a scorer from the parts of a spec.

    Attributes:
        build: `(positional args, keyword args, run seed) -> object`.
        takes_defaults: the caller's defaults reach it (a spec's own keywords win): for a policy, the sampling
            settings of the run (`SamplingConfig` fields); for a scorer, the run's PRM settings. Its spec then also
            names what it runs on (a model or servers), which resume pins fingerprint.
        argument: what the positional part of its spec names: "model" (one folder or Hub repo id), "urls" (one or
            more server base URLs) or None (nothing).
    """

    build: Builder
    takes_defaults: bool = False
    argument: str | None = None


POLICY_BACKENDS: Registry[Backend] = Registry("policy backend", base=Backend, discover=__name__)
SCORER_BACKENDS: Registry[Backend] = Registry("scorer backend", base=Backend, discover=__name__)


def _registrar(registry: Registry[Backend]):
    def register(name: str, *aliases: str, takes_defaults: bool = False, argument: str | None = None):
        def decorator(build: Builder) -> Builder:
            registry.register(name, *aliases)(Backend(build, takes_defaults, argument))
            return build

        return decorator

    return register


policy_backend = _registrar(POLICY_BACKENDS)
policy_backend.__doc__ = "Decorator: registers a policy builder `(args, kwargs, seed) -> Policy` under `name`."
scorer_backend = _registrar(SCORER_BACKENDS)
scorer_backend.__doc__ = "Decorator: registers a scorer builder `(args, kwargs, seed) -> StepScorer` under `name`."

# ---- the spec grammar ------------------------------------------------------------------------------------------

# Keywords whose values stay text even when they look like numbers (a revision "2024" is a tag, not an int).
TEXT_KEYWORDS = frozenset({"revision", "model"})


def split_label(spec: str) -> tuple[str, str]:
    """ "label@kind:..." -> (label, "kind:..."); a spec without a label is its own label."""
    head, sep, rest = spec.partition(":")
    if "@" in head:
        label, _, kind = head.partition("@")
        return label.strip(), kind + sep + rest
    return spec, spec


def parse_spec(spec: str) -> tuple[str, list[str], dict[str, Any]]:
    """ "kind:arg,key=value,..." -> (kind, positional args, keyword args); numbers are converted."""
    kind, _, rest = spec.partition(":")
    args, kwargs = [], {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = part.partition("=")
        if not eq:
            args.append(part)
            continue
        kwargs[key.strip()] = value if key.strip() in TEXT_KEYWORDS else _scalar(value)
    return kind.strip(), args, kwargs


def _scalar(value: str) -> Any:
    """ "3" -> 3, "0.5" -> 0.5, "true"/"false" -> True/False, anything else stays text."""
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def make_spec(kind: str, args: list[str] | tuple[str, ...] = (), **kwargs: Any) -> str:
    """The spec of `kind` with these parts (None values left out): the inverse of `parse_spec`."""
    parts = [str(arg) for arg in args] + [f"{key}={value}" for key, value in kwargs.items() if value is not None]
    for part in parts:
        if "," in part:
            raise ValueError(f"{kind} spec: {part!r} holds a comma, which the spec grammar reads as a separator")
    return f"{kind}:{','.join(parts)}" if parts else kind


def spec_of(kind_or_spec: str, model: str | None = None, **keywords: Any) -> str:
    """The spec a config's fields name: `kind_or_spec` itself when it is a spec already ("vllm:<model>,top_k=20"),
    else the kind with `model` (None: none) and `keywords` (None values left out). Raises ValueError when a full spec
    is given together with a separate model."""
    if ":" in kind_or_spec:
        if model:
            raise ValueError(
                f"{kind_or_spec!r} is a full spec; name its model in the spec, not separately ({model!r})"
            )
        return kind_or_spec
    return make_spec(kind_or_spec, [model] if model else [], **keywords)


def config_policy_spec(config: Any) -> str:
    """The policy spec of a run config (`TTSArguments`, `LabelConfig`): its `policy`, a kind or a full spec, with
    `policy_model_path`/`policy_model_revision` for a model-backed kind, or the testbed policy's error rates for
    "scripted"."""
    if config.policy == "scripted":
        rates = {"perception_error_rate": config.perception_error_rate}
        return make_spec("scripted", **rates, reasoning_error_rate=config.reasoning_error_rate)
    return spec_of(config.policy, config.policy_model_path, revision=config.policy_model_revision)


class MissingModelError(ValueError):
    """A spec of a model-backed kind names no model."""


def check_spec(spec: str, backends: Backends, what: str) -> Backend:
    """The backend of `spec`, after checking its kind is known (ValueError) and that a model-backed kind names its
    model (`MissingModelError`)."""
    kind, args, _ = parse_spec(spec)
    backend = get_backend(backends, kind, what, spec)
    if backend.argument == "model" and not args:
        raise MissingModelError(f"{what} spec {spec!r}: a {kind} {what} needs a model (a folder or a Hub repo id)")
    return backend


# ---- building --------------------------------------------------------------------------------------------------

Backends = Registry[Backend] | Mapping[str, Backend]


def get_backend(backends: Backends, kind: str, what: str = "policy", spec: str | None = None) -> Backend:
    """The backend `kind` names; an unknown kind raises `UnknownNameError` naming the spec and the available kinds."""
    if not isinstance(backends, Registry):  # a run's own table (`eval_tts.policy_backends`)
        table: Registry[Backend] = Registry(f"{what} backend")
        for name, backend in backends.items():
            table.register(name)(backend)
        backends = table
    return backends.get(kind, f"{what} spec {kind if spec is None else spec!r}")


def build_from_spec(
    spec: str,
    backends: Backends,
    seed: int | None,
    what: str,
    defaults: Mapping[str, Any] | None = None,
):
    """Build the policy or scorer a spec names; `defaults` reach only backends that take them (`takes_defaults`),
    under the spec's own keywords."""
    kind, args, kwargs = parse_spec(spec)
    backend = get_backend(backends, kind, what, spec)
    if backend.takes_defaults and defaults:
        kwargs = {**defaults, **kwargs}
    return backend.build(args, kwargs, seed)


def build_policy(spec: str, seed: int | None = None, defaults: Mapping[str, Any] | None = None) -> Policy:
    """The policy `spec` names (see the module docstring); `defaults`: sampling settings a spec may override."""
    return build_from_spec(spec, POLICY_BACKENDS, seed, "policy", defaults)


def build_scorer(spec: str, seed: int | None = None, defaults: Mapping[str, Any] | None = None) -> StepScorer:
    """The step scorer `spec` names (see the module docstring); `defaults`: PRM settings a spec may override."""
    return build_from_spec(spec, SCORER_BACKENDS, seed, "scorer", defaults)


def one_model(args: list[str], what: str) -> str:
    """The one positional argument of a model-backed spec (a folder or a Hub repo id)."""
    if len(args) != 1:
        raise ValueError(f"a {what} needs one model (a folder or a Hub repo id), got {args}")
    return args[0]


__all__ = [
    "POLICY_BACKENDS",
    "SCORER_BACKENDS",
    "Backend",
    "MissingModelError",
    "build_from_spec",
    "build_policy",
    "build_scorer",
    "check_spec",
    "config_policy_spec",
    "get_backend",
    "make_spec",
    "one_model",
    "parse_spec",
    "policy_backend",
    "scorer_backend",
    "spec_of",
    "split_label",
]
