"""`VLPRMGRPOTrainer`: TRL's `GRPOTrainer` with per-step credit from a VL-PRM (docs/rl.md, "Per-step credit").

TRL computes one advantage per completion; its loss already accepts one per token (`_compute_loss` keeps a
`(B, T)` advantage tensor as it is). So the subclass overrides two hooks and nothing else:

- `_calculate_rewards`: after TRL has called every reward function, read the step scores `VLPRMReward` kept from
  that call, find each step's last token in the policy's own tokens (`step_token_ends`), and gather both from every
  rank (a group's completions may sit on several ranks);
- `_generate_and_score_completions`: after TRL has computed its advantages (the outcome advantage, from
  `reward_funcs` and `reward_weights`, exactly as in `GRPOTrainer`), replace this rank's rows with per-token
  advantages (`process_token_advantages`) and log the per-step statistics.

Generation, rewards, KL, clipping, loss types, vLLM, PEFT and every other `GRPOConfig` option are TRL's. With
`process_advantages="outcome"` (the default) the trainer is `GRPOTrainer`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from accelerate.utils import gather_object
from trl import GRPOConfig, GRPOTrainer

from trl_vlprm.data.schema import PERCEPTION, REASONING
from trl_vlprm.guidance.process_advantages import (
    PROCESS_ADVANTAGES,
    CompletionSteps,
    process_token_advantages,
    step_token_ends,
)
from trl_vlprm.guidance.reward_inputs import completion_text
from trl_vlprm.guidance.rewards import VLPRMReward


@dataclass
class VLPRMGRPOConfig(GRPOConfig):
    r"""`trl.GRPOConfig` plus per-step credit assignment from a process reward.

    Parameters that control the credit assignment:

    Args:
        process_advantages (`str`, *optional*, defaults to `"outcome"`):
            How advantages are computed: "outcome" (TRL's, one per completion), "process" (DeepSeekMath's process
            supervision: group-normalised step scores summed over the steps ending at or after each token) or
            "min_form" (PURE's min-form credit assignment).
        outcome_weight (`float`, *optional*, defaults to `0.0`):
            Weight of the outcome advantage (TRL's, from `reward_funcs` and `reward_weights`) added to every token's
            process advantage; completions without a scored step take the outcome advantage alone.
        min_form_temperature (`float`, *optional*, defaults to `0.1`):
            Temperature T of min_form's step weights softmax(-score / T); the weighted sum tends to the minimum as T
            goes to 0 (PURE's default is 0.1).
        flag_threshold (`float`, *optional*, defaults to `0.5`):
            A step scored below this is flagged in the logs (`process/first_flagged_perception`); credit assignment
            does not read it.
    """

    process_advantages: str = field(
        default="outcome",
        metadata={
            "help": "How advantages are computed: outcome (TRL's, one per completion), process (DeepSeekMath's "
            "process supervision) or min_form (PURE's min-form credit assignment).",
            "choices": list(PROCESS_ADVANTAGES),
        },
    )
    outcome_weight: float = field(
        default=0.0,
        metadata={
            "help": "Weight of the outcome advantage added to every token's process advantage; completions "
            "without a scored step take the outcome advantage alone."
        },
    )
    min_form_temperature: float = field(
        default=0.1,
        metadata={
            "help": "Temperature T of min_form's step weights softmax(-score / T); the weighted sum tends to the "
            "minimum as T goes to 0 (PURE's default is 0.1)."
        },
    )
    flag_threshold: float = field(
        default=0.5,
        metadata={"help": "A step scored below this is flagged in the logs; credit assignment does not read it."},
    )

    def __post_init__(self):
        super().__post_init__()
        if self.process_advantages not in PROCESS_ADVANTAGES:
            raise ValueError(
                f"VLPRMGRPOConfig.process_advantages must be one of {list(PROCESS_ADVANTAGES)}, "
                f"got {self.process_advantages!r}"
            )
        if not self.min_form_temperature > 0:
            raise ValueError(f"VLPRMGRPOConfig.min_form_temperature must be > 0, got {self.min_form_temperature}")
        if self.outcome_weight < 0:
            raise ValueError(f"VLPRMGRPOConfig.outcome_weight must be >= 0, got {self.outcome_weight}")


def first_step_perception(index: int, step: str) -> str:
    """The testbed's solution layout: the first step reads the image (perception), the others reason."""
    return PERCEPTION if index == 0 else REASONING


class VLPRMGRPOTrainer(GRPOTrainer):
    """`trl.GRPOTrainer` with per-token advantages from a `VLPRMReward`'s step scores (`VLPRMGRPOConfig`).

    Takes `GRPOTrainer`'s arguments. With `args.process_advantages` "process" or "min_form", `reward_funcs` must
    hold exactly one `VLPRMReward` (any `StepScorer`: a `PRMScorer`, a served PRM, a testbed scorer); its steps and
    scores give the credit, the other rewards and `reward_weights` give the outcome advantage.

    Args:
        step_type: `(step index, step text) -> "perception" | "reasoning" | None`, for the per-type logs;
            default `first_step_perception`.
    """

    _tag_names = ["trl", "grpo", "trl-vlprm", "process-reward"]
    _name = "VL-PRM GRPO"

    def __init__(self, *args: Any, step_type: Callable[[int, str], str | None] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.process_advantages = getattr(self.args, "process_advantages", "outcome")
        self.step_type = step_type or first_step_perception
        self.process_reward: VLPRMReward | None = None
        if self.process_advantages != "outcome":
            found = [func for func in self.reward_funcs if isinstance(func, VLPRMReward)]
            if len(found) != 1:
                raise ValueError(
                    f"process_advantages={self.process_advantages!r} needs exactly one VLPRMReward in reward_funcs "
                    f"(it gives the step scores); got {len(found)} among {self.reward_func_names}"
                )
            self.process_reward = found[0]
        self._batch_steps: list[CompletionSteps] | None = None
        self.last_credit: dict[str, Any] | None = None
        self._credit_seconds = 0.0

    # ---- the two hooks -------------------------------------------------------------------------------------

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        if self.process_reward is not None:
            started = time.perf_counter()
            local = self._completion_steps(completions, completion_ids_list, self.process_reward.last_step_scores)
            self._batch_steps = gather_object(local)  # rank order, as TRL gathers the rewards
            self._credit_seconds = time.perf_counter() - started
        return rewards_per_func

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        if self.process_reward is None:
            return output
        started = time.perf_counter()
        batch_steps, self._batch_steps = self._batch_steps, None
        mode = "train" if self.model.training else "eval"
        num_generations = self.num_generations if mode == "train" else self.num_generations_eval
        outcome = self.accelerator.gather(output["advantages"]).tolist()
        rows = process_token_advantages(
            batch_steps,
            outcome,
            num_generations,
            mode=self.process_advantages,
            outcome_weight=self.args.outcome_weight,
            scale_rewards=self.scale_rewards,
            temperature=self.args.min_form_temperature,
        )
        local = len(output["advantages"])
        start = self.accelerator.process_index * local
        completion_ids = output["completion_ids"]
        advantages = torch.zeros(completion_ids.shape, dtype=torch.float32)
        for i, row in enumerate(rows[start : start + local]):
            advantages[i, : len(row)] = row
        output["advantages"] = advantages.to(completion_ids.device)
        # For inspection (tests, notebooks): the whole batch's steps, TRL's outcome advantages and the token rows.
        self.last_credit = {"steps": batch_steps, "outcome": outcome, "rows": rows}
        self._log_process_metrics(mode, batch_steps, rows)
        # The credit assignment's own cost (step ends, gathers, advantages, logs), beside TRL's step_time.
        self._metrics[mode]["process/credit_seconds"].append(self._credit_seconds + time.perf_counter() - started)
        return output

    # ---- helpers -------------------------------------------------------------------------------------------

    def _completion_steps(
        self,
        completions: Sequence[Any],
        completion_ids_list: Sequence[Sequence[int]],
        step_scores: Sequence[list[float] | None],
    ) -> list[CompletionSteps]:
        """Steps and step ends of this rank's completions, from the reward's last call."""
        if len(step_scores) != len(completions):
            raise RuntimeError(
                f"{self.process_reward.__name__} kept {len(step_scores)} step-score lists for {len(completions)} "
                "completions: it was not called on this batch"
            )

        def decode(ids: Sequence[int]) -> str:
            return self._tokenizer.decode(list(ids), skip_special_tokens=True)

        out = []
        for completion, ids, scores in zip(completions, completion_ids_list, step_scores):
            item = CompletionSteps(length=len(ids))
            if scores:
                steps = self.process_reward.split_steps(completion_text(completion))
                ends = step_token_ends(ids, decode, steps) if len(steps) == len(scores) else None
                if ends is None:
                    item.unmapped = True  # the text's steps are not found in the tokens: fall back, counted
                else:
                    item.scores, item.ends = list(scores), ends
                    item.step_types = [self.step_type(j, step) for j, step in enumerate(steps)]
            out.append(item)
        return out

    def _log_process_metrics(self, mode: str, batch: Sequence[CompletionSteps], rows: Sequence[torch.Tensor]) -> None:
        metrics = self._metrics[mode]
        scored = [c for c in batch if c.has_steps]
        metrics["process/fallback"].append(float(len(batch) - len(scored)))
        metrics["process/unmapped"].append(float(sum(c.unmapped for c in batch)))
        if scored:
            metrics["process/steps_per_completion"].append(sum(len(c.scores) for c in scored) / len(scored))
        by_type: dict[str, list[float]] = {}
        first_flagged = []
        for completion in scored:
            for kind, score in zip(completion.step_types, completion.scores):
                by_type.setdefault(kind or "untyped", []).append(score)
            flagged = [k for k, s in zip(completion.step_types, completion.scores) if s < self.args.flag_threshold]
            if flagged:
                first_flagged.append(flagged[0] == PERCEPTION)
        for kind, scores in sorted(by_type.items()):
            values = torch.tensor(scores, dtype=torch.float64)
            metrics[f"process/step_score/{kind}/mean"].append(float(values.mean()))
            metrics[f"process/step_score/{kind}/std"].append(float(values.std()) if len(scores) > 1 else 0.0)
        if first_flagged:
            metrics["process/first_flagged_perception"].append(sum(first_flagged) / len(first_flagged))
        tokens = torch.cat(list(rows)) if rows else torch.zeros(0)
        if tokens.numel():
            metrics["process/token_advantage/mean"].append(float(tokens.mean()))
            metrics["process/token_advantage/std"].append(float(tokens.std()) if tokens.numel() > 1 else 0.0)
