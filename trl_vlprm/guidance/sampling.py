"""`SamplingConfig`: the sampling settings every model-backed policy takes (`HFPolicy`, `VLLMPolicy`, `ServerPolicy`).

Each policy keeps one `SamplingConfig` as `policy.sampling` and accepts either the dataclass or its fields as keywords
(`HFPolicy(model, processor, temperature=0)` is `HFPolicy(model, processor, SamplingConfig(temperature=0))`). The
number of samples is not a setting of the policy: every call names its own `n` (`sample_solutions(question, n)`), as
the search strategy asks.

Run configs take the same settings from `SamplingArguments` (`TTSArguments` and `LabelConfig` extend it; a config with
fewer declares them with `sampling_argument(name)`), whose fields are `SamplingConfig`'s: one default and one help
sentence per setting.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

from trl_vlprm.types import DEFAULT_POLICY_STEP_SEPARATOR, Continuation, Question


@dataclass(frozen=True)
class SamplingConfig:
    """How a policy samples a solution or a step.

    Args:
        step_separator: text that ends a step (a stop string while sampling one step; steps are split on it).
        temperature: sampling temperature; 0 means greedy decoding (the n samples of a call are one sample repeated).
        top_p: nucleus sampling threshold.
        top_k: keep only the k likeliest tokens before sampling; 0 or None keeps all (the paper's Qwen2.5-VL protocol
            uses 20).
        repetition_penalty: divides the logits of tokens already in the sequence; 1.0 is off (the paper uses 1.05,
            the Qwen2.5-VL generation default).
        max_new_tokens: token budget of a whole solution (`complete`, `sample_solutions`).
        max_step_tokens: token budget of one step (`sample_next_steps`).
        seed: when set, every call samples under a seed derived from it and the call's index, so two policies built
            alike give the same outputs.
        system_prompt: optional system message put before every question without a system turn of its own.
    """

    step_separator: str = field(
        default=DEFAULT_POLICY_STEP_SEPARATOR, metadata={"help": "Text that ends a step of the policy's output."}
    )
    temperature: float = field(
        default=0.7, metadata={"help": "Sampling temperature; 0 means greedy decoding (the n samples are one)."}
    )
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling threshold."})
    top_k: int | None = field(
        default=None, metadata={"help": "Keep only the k likeliest tokens before sampling; 0 or None keeps all."}
    )
    repetition_penalty: float = field(
        default=1.0, metadata={"help": "Divides the logits of tokens already in the sequence; 1.0 is off."}
    )
    max_new_tokens: int = field(default=512, metadata={"help": "Token budget of a whole solution."})
    max_step_tokens: int = field(default=128, metadata={"help": "Token budget of one step."})
    seed: int | None = field(
        default=None, metadata={"help": "Seed the sampling of every call derives from; None samples unseeded."}
    )
    system_prompt: str | None = field(
        default=None, metadata={"help": "Optional system message put before every question without one."}
    )

    def __post_init__(self):
        if not self.step_separator:
            raise ValueError("SamplingConfig: step_separator must be a non-empty string")
        if self.repetition_penalty <= 0:
            raise ValueError(f"SamplingConfig: repetition_penalty must be > 0, got {self.repetition_penalty}")
        if self.temperature < 0:
            raise ValueError(f"SamplingConfig: temperature must be >= 0, got {self.temperature}")
        for name in ("max_new_tokens", "max_step_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"SamplingConfig: {name} must be >= 1, got {getattr(self, name)}")

    @classmethod
    def of(cls, sampling: SamplingConfig | None = None, owner: str = "policy", **settings: Any) -> SamplingConfig:
        """`sampling` (default: the defaults) with `settings` replaced; an unknown setting raises TypeError naming
        `owner` and the known ones."""
        unknown = set(settings) - set(SAMPLING_FIELDS)
        if unknown:
            raise TypeError(f"{owner}: unknown sampling setting(s) {sorted(unknown)}; known: {list(SAMPLING_FIELDS)}")
        return replace(sampling or cls(), **settings)


SAMPLING_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(SamplingConfig))


def sampling_argument(name: str) -> Any:
    """A run config's field for the `SamplingConfig` setting `name`: the same default and help sentence."""
    declared = SamplingConfig.__dataclass_fields__[name]
    return field(default=declared.default, metadata=dict(declared.metadata))


@dataclass
class PolicyTextArguments:
    """The two sampling settings a policy spec cannot hold (a newline, free text), so a run config gives them to every
    model policy it builds; each a `SamplingConfig` field (same default and help).

    Args:
        step_separator: text that ends a step of the policy's output.
        system_prompt: optional system message put before every question without one.
    """

    step_separator: str = sampling_argument("step_separator")
    system_prompt: str | None = sampling_argument("system_prompt")


@dataclass
class SamplingArguments(PolicyTextArguments):
    """The policy sampling settings of a run config, each a `SamplingConfig` field (same default and help); they reach
    a model-backed policy as defaults its spec's own keywords override. The run's `seed` is the run config's own.

    Args:
        step_separator: text that ends a step of the policy's output.
        system_prompt: optional system message put before every question without one.
        temperature: sampling temperature; 0 means greedy decoding (the n samples are one).
        top_p: nucleus sampling threshold.
        top_k: keep only the k likeliest tokens before sampling; 0 or None keeps all.
        repetition_penalty: divides the logits of tokens already in the sequence; 1.0 is off.
        max_new_tokens: token budget of a whole solution.
        max_step_tokens: token budget of one step.
    """

    temperature: float = sampling_argument("temperature")
    top_p: float = sampling_argument("top_p")
    top_k: int | None = sampling_argument("top_k")
    repetition_penalty: float = sampling_argument("repetition_penalty")
    max_new_tokens: int = sampling_argument("max_new_tokens")
    max_step_tokens: int = sampling_argument("max_step_tokens")

    def sampling_settings(self) -> dict[str, Any]:
        """These settings by name, as `SamplingConfig` keywords (a policy spec's defaults)."""
        return {name: getattr(self, name) for name in SAMPLING_ARGUMENTS}


SAMPLING_ARGUMENTS: tuple[str, ...] = tuple(f.name for f in fields(SamplingArguments))


class SamplingPolicy:
    """What the model-backed policies share: their settings in `self.sampling`, a whole solution as the completion of
    an empty prefix, and steps joined back with the step separator. Subclasses implement `complete` and
    `sample_next_steps`."""

    sampling: SamplingConfig

    @property
    def step_separator(self) -> str:
        """The text ending a step (strategies read it to join steps back into a solution)."""
        return self.sampling.step_separator

    def sample_solutions(self, question: Question, n: int) -> list[Continuation]:
        return self.complete(question, [], n)

    def complete(self, question: Question, prefix: Sequence[str], n: int) -> list[Continuation]:
        raise NotImplementedError

    def _solution(self, prefix: Sequence[str], steps: Sequence[str]) -> str:
        return self.sampling.step_separator.join([*prefix, *steps])
