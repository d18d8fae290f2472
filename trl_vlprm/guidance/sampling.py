"""`SamplingConfig`: the sampling settings every model-backed policy takes (`HFPolicy`, `VLLMPolicy`, `ServerPolicy`).

Declared once here, so the three backends cannot drift apart: each policy keeps one `SamplingConfig` as
`policy.sampling` and accepts either the dataclass or its fields as keywords (`HFPolicy(model, processor,
temperature=0)` is `HFPolicy(model, processor, SamplingConfig(temperature=0))`). The number of samples is not a
setting of the policy: every call names its own `n` (`sample_solutions(question, n)`), as the search strategy asks.
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
