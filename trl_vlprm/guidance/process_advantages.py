"""Per-token advantages from per-step PRM scores: the credit assignment behind `VLPRMGRPOTrainer` (docs/rl.md).

TRL's GRPO gives every token of a completion the same advantage, computed from one scalar reward per completion. A
process reward model scores every step, so a token can be credited by the steps it belongs to. Three modes
(`PROCESS_ADVANTAGES`), each computed for a whole generation batch (all ranks' completions, in TRL's gathered order,
`num_generations` consecutive completions forming one group):

- `outcome`: TRL's own advantage, unchanged (this module is not used).
- `process`: DeepSeekMath's process supervision (Shao et al., 2024, section 4.1.3). The step scores of all
  completions of a group are normalised together, `r~ = (r - mean(R)) / std(R)`, and a token's advantage is the sum
  of the normalised scores of the steps ending at or after it: `A_t = sum_{j: end(j) >= t} r~_j`.
- `min_form`: PURE's min-form credit assignment (Cheng et al., 2025, "Stop Summation"; CJReinforce/PURE). Each
  completion's step scores are reweighted by `softmax(-r / T)` (`r*_j = w_j r_j`, so `sum_j r*_j` tends to
  `min_j r_j` as `T -> 0`); the leave-one-out token baseline of PURE's published run (`reward_baseline=token`:
  `b_ij = n_ij * sum_{k != i} sum_j r*_kj / sum_{k != i} L_k`, with `n_ij` the tokens of step j and `L_k` a
  completion's length) is subtracted at each step end; returns are summed backwards as above; the token advantages are
  whitened over every completion token of the batch (PURE's replay-buffer normalisation). Unlike PURE, whose step
  rewards sit on separator tokens that then get advantage 0, a step here ends at its own last token (below), so no
  token is zeroed.

Then `A_t += outcome_weight * A_outcome` (TRL's advantage of the completion, from `reward_funcs` and
`reward_weights`). A completion with no scored step (blank, over the step cap, unreadable image, or steps that cannot
be found in its tokens) takes `A_outcome` on every token: the fallback the trainer counts and logs.

Conventions shared with TRL's outcome advantages: standard deviations are unbiased (Bessel) and get `+1e-4` before
dividing; `scale_rewards="batch"` takes the standard deviation over the steps of the whole batch, `"none"` does not
divide (the mean is still subtracted per group).

Step boundaries: `step_token_ends` maps each step's text span to the index of the completion token holding its last
character, by decoding token prefixes (never by re-tokenising the text, which may tokenise differently from what the
policy sampled). A token holding the end of one step and the start of the next (a separator merged into a token, a
step ending mid-token) belongs to the earlier step; the separator tokens after a step belong to the next step; tokens
after the last step (a trailing separator, end of sequence) get no process credit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

PROCESS_ADVANTAGES = ("outcome", "process", "min_form")
ProcessAdvantages = Literal["outcome", "process", "min_form"]
STD_EPSILON = 1e-4  # TRL's `std_rewards + 1e-4` in GRPO
WHITEN_VARIANCE_FLOOR = 1e-8  # OpenRLHF's `clamp(min=1e-8).rsqrt()` in PURE's advantage normalisation


@dataclass
class CompletionSteps:
    """What the credit assignment needs of one completion.

    Args:
        length: number of completion tokens (the advantage row's length).
        scores: the PRM's score of each step, None when the completion has no scored step (it falls back).
        ends: index of the completion token holding each step's last character (same length as `scores`).
        step_types: each step's type ("perception", "reasoning" or None), for the logs only.
        unmapped: the PRM scored the steps, but they could not be found in the completion's tokens (it falls back).
    """

    length: int
    scores: list[float] | None = None
    ends: list[int] | None = None
    step_types: list[str | None] | None = None
    unmapped: bool = False

    @property
    def has_steps(self) -> bool:
        return bool(self.scores)


def _common_prefix_length(a: str, b: str) -> int:
    if b.startswith(a):
        return len(a)
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def step_token_ends(
    token_ids: Sequence[int], decode: Callable[[Sequence[int]], str], steps: Sequence[str]
) -> list[int] | None:
    """Index of the token holding each step's last character, or None when a step is not found in the text.

    `decode` turns token ids into the completion text the steps were split from (TRL decodes completions with
    `skip_special_tokens=True`). Steps are located in order, each after the previous one. A token prefix "covers" the
    characters its decoded text shares with the full text, so a token that decodes to half a UTF-8 character (shown
    as U+FFFD) covers nothing new until the token completing it; coverage only grows with the prefix, which lets the
    end of each step be found by bisection (O(steps x log tokens) decodes).

    >>> ids = ["The ", "grid\\n", "So ", "blue.\\nAns", "wer: blue"]  # stand-ins for token ids
    >>> step_token_ends(range(5), lambda idx: "".join(ids[i] for i in idx), ["The grid", "So blue.", "Answer: blue"])
    [1, 3, 4]
    """
    token_ids = list(token_ids)
    text = decode(token_ids)
    char_ends = []
    cursor = 0
    for step in steps:
        start = text.find(step, cursor)
        if start < 0 or not step:
            return None
        cursor = start + len(step)
        char_ends.append(cursor)

    covered_cache: dict[int, int] = {}

    def covered(count: int) -> int:  # characters of `text` the first `count` tokens decode to
        if count not in covered_cache:
            covered_cache[count] = _common_prefix_length(decode(token_ids[:count]), text)
        return covered_cache[count]

    ends = []
    low = 1
    for char_end in char_ends:
        high = len(token_ids)
        while low < high:  # smallest prefix covering the step's last character
            middle = (low + high) // 2
            if covered(middle) >= char_end:
                high = middle
            else:
                low = middle + 1
        if covered(low) < char_end:
            return None
        ends.append(low - 1)
    return ends


def _std(values: torch.Tensor) -> float:
    return float(values.std(unbiased=True)) if values.numel() > 1 else 0.0


def _suffix_sums(length: int, ends: Sequence[int], rewards: Sequence[float]) -> torch.Tensor:
    """`A_t = sum_{j: ends[j] >= t} rewards[j]` for t in [0, length)."""
    at_ends = torch.zeros(length, dtype=torch.float64)
    for end, reward in zip(ends, rewards):
        at_ends[end] += reward
    return at_ends.flip(0).cumsum(0).flip(0)


def _check(completions: Sequence[CompletionSteps], outcome: Sequence[float], num_generations: int) -> None:
    if len(completions) != len(outcome):
        raise ValueError(f"{len(completions)} completions but {len(outcome)} outcome advantages")
    if num_generations < 1 or len(completions) % num_generations:
        raise ValueError(f"{len(completions)} completions do not form groups of num_generations={num_generations}")
    for i, completion in enumerate(completions):
        if completion.has_steps:
            ends = completion.ends or []
            if len(ends) != len(completion.scores) or any(not 0 <= e < completion.length for e in ends):
                raise ValueError(
                    f"completion {i}: {len(completion.scores)} step scores but step ends {ends} "
                    f"(must be one per step, within its {completion.length} tokens)"
                )
            if list(ends) != sorted(ends):
                raise ValueError(f"completion {i}: step ends {ends} are not in order")


def process_token_advantages(
    completions: Sequence[CompletionSteps],
    outcome_advantages: Sequence[float],
    num_generations: int,
    mode: ProcessAdvantages = "process",
    outcome_weight: float = 0.0,
    scale_rewards: str = "group",
    temperature: float = 0.1,
) -> list[torch.Tensor]:
    """One float32 advantage per token of each completion (see the module docstring for the formulas).

    Args:
        completions: every completion of the generation batch, groups of `num_generations` consecutive ones.
        outcome_advantages: TRL's advantage of each completion (the fallback, and what `outcome_weight` mixes in).
        num_generations: completions per group.
        mode: "process" or "min_form" ("outcome" broadcasts `outcome_advantages`).
        outcome_weight: weight of the outcome advantage added to every token of a completion with steps.
        scale_rewards: TRL's `GRPOConfig.scale_rewards`: "group", "batch" or "none".
        temperature: `min_form`'s softmax temperature T (PURE's default 0.1).
    """
    _check(completions, outcome_advantages, num_generations)
    if mode not in PROCESS_ADVANTAGES:
        raise ValueError(f"process_advantages must be one of {PROCESS_ADVANTAGES}, got {mode!r}")
    if scale_rewards not in ("group", "batch", "none"):
        raise ValueError(f"scale_rewards must be 'group', 'batch' or 'none', got {scale_rewards!r}")
    if mode == "min_form" and not temperature > 0:
        raise ValueError(f"min_form needs a temperature > 0, got {temperature}")
    rows: list[torch.Tensor | None] = [None] * len(completions)
    groups = [range(start, start + num_generations) for start in range(0, len(completions), num_generations)]
    if mode == "process":
        _process(completions, groups, scale_rewards, rows)
    elif mode == "min_form":
        _min_form(completions, groups, scale_rewards, temperature, rows)
    out = []
    for completion, row, outcome in zip(completions, rows, outcome_advantages):
        if row is None:  # no scored step (or mode "outcome"): the outcome advantage on every token
            out.append(torch.full((completion.length,), float(outcome), dtype=torch.float32))
        else:
            out.append((row + outcome_weight * float(outcome)).to(torch.float32))
    return out


def _process(completions, groups, scale_rewards, rows) -> None:
    scored = [i for i, c in enumerate(completions) if c.has_steps]
    batch_std = _std(torch.tensor([s for i in scored for s in completions[i].scores], dtype=torch.float64))
    for group in groups:
        members = [i for i in group if completions[i].has_steps]
        if not members:
            continue
        scores = torch.tensor([s for i in members for s in completions[i].scores], dtype=torch.float64)
        mean = float(scores.mean())
        std = {"group": _std(scores), "batch": batch_std}.get(scale_rewards)
        for i in members:
            normalised = [
                (s - mean) / (std + STD_EPSILON) if std is not None else s - mean for s in completions[i].scores
            ]
            rows[i] = _suffix_sums(completions[i].length, completions[i].ends, normalised)


def _min_form(completions, groups, scale_rewards, temperature, rows) -> None:
    transformed: dict[int, torch.Tensor] = {}
    for i, completion in enumerate(completions):
        if completion.has_steps:
            scores = torch.tensor(completion.scores, dtype=torch.float64)
            transformed[i] = torch.softmax(-scores / temperature, dim=0) * scores
    for group in groups:
        members = [i for i in group if i in transformed]
        total_reward = sum(float(transformed[i].sum()) for i in members)
        total_length = sum(completions[i].length for i in members)
        for i in members:
            completion = completions[i]
            other_length = total_length - completion.length
            # Leave-one-out reward per token of the other completions; none in a group of one: no baseline.
            rate = (total_reward - float(transformed[i].sum())) / other_length if other_length > 0 else 0.0
            step_tokens = [end - previous for end, previous in zip(completion.ends, [-1, *completion.ends[:-1]])]
            rewards = [float(r) - rate * n for r, n in zip(transformed[i], step_tokens)]
            rows[i] = _suffix_sums(completion.length, completion.ends, rewards)
    if scale_rewards != "none" and transformed:
        tokens = torch.cat([rows[i] for i in transformed])
        mean = float(tokens.mean())
        variance = float(((tokens - mean) ** 2).mean())
        scale = 1.0 / math.sqrt(max(variance, WHITEN_VARIANCE_FLOOR))
        for i in transformed:
            rows[i] = (rows[i] - mean) * scale
