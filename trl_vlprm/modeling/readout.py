"""PRM class logits read from the hidden states, at the positions that are scored, never `[batch, seq, vocab]`.

A generative PRM's score is a 2-way softmax over the LM logits of the verdict tokens ("-", "+") at each step end.
Computing those through the model's LM head costs a `[batch, seq, vocab]` tensor (at the paper's 7B recipe,
2 x 8192 x 152,064 logits a micro-batch, as much again for their gradient) to read two numbers a step. Here the
head module itself computes only what is read: while `class_logits_only(...)` is active, the generative head
multiplies the hidden states by the two verdict rows of its weight (`[..., 2]`), and the value head runs its
classifier on the scored positions only. The model is still called as a whole (`model(**inputs)`), so DDP,
DeepSpeed and PEFT wrappers see an ordinary forward; under DeepSpeed ZeRO-3 the head's partitioned weight is
gathered by the module's own hooks (and again for its backward), because the head module is still what runs.

The class logits are `[..., 2]` (wrong, correct) for a generative or two-label value head, `[..., 1]` for a
soft-label value head, exactly `heads.step_logits` of the full outputs (the same dot products).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from trl_vlprm.modeling.heads import NEGATIVE_TOKEN, POSITIVE_TOKEN

logger = logging.getLogger(__name__)

Positions = torch.Tensor | tuple[torch.Tensor, ...] | None


class VerdictTokensMissingError(ValueError):
    """Raised when a generative PRM's verdict tokens are not rows of its LM head (a checkpoint from another
    vocabulary, or ids recorded for another tokenizer)."""


def unwrap(model: nn.Module) -> nn.Module:
    """The model under DDP / DeepSpeed wrappers (which hold it as `.module`); PEFT models are kept (they forward
    attribute look-ups to the base model)."""
    while isinstance(getattr(model, "module", None), nn.Module):
        model = model.module
    return model


def head_module(model: nn.Module, head: str) -> nn.Module:
    """The module that turns the last hidden states into head outputs: the LM head (generative) or `score` (value)."""
    model = unwrap(model)
    if head == "generative":
        module = model.get_output_embeddings()
        if module is None:
            raise ValueError(f"{type(model).__name__} has no LM head (get_output_embeddings() is None)")
        return module
    module = getattr(model, "score", None)
    if not isinstance(module, nn.Module):
        raise ValueError(f"{type(model).__name__} has no value head (`score` module)")
    return module


def check_verdict_tokens(
    model: nn.Module,
    token_ids: tuple[int, int],
    tokens: tuple[str, str] = (POSITIVE_TOKEN, NEGATIVE_TOKEN),
    where: str = "the PRM",
) -> None:
    """Refuse a generative PRM whose LM head has no row for a verdict token (naming the tokens and ids)."""
    module = head_module(model, "generative")
    rows = getattr(module, "out_features", None)
    if rows is None:  # a wrapper (e.g. PEFT's): its base layer knows
        base = getattr(module, "get_base_layer", lambda: None)()
        rows = getattr(base, "out_features", None)
    if rows is None:
        return
    missing = [f"{token!r} (id {i})" for token, i in zip(tokens, token_ids) if not 0 <= int(i) < rows]
    if missing:
        raise VerdictTokensMissingError(
            f"{where}: the verdict token(s) {' and '.join(missing)} are not in the model's vocabulary of {rows} "
            f"LM-head rows: the checkpoint cannot score '{tokens[0]}'/'{tokens[1]}' verdicts (was it trained with "
            "another tokenizer, or its vocabulary resized?)"
        )


def _verdict_rows(module: nn.Module, forward, hidden: torch.Tensor, token_ids: tuple[int, int]) -> torch.Tensor:
    positive, negative = token_ids
    if type(module) is nn.Linear:  # the LM head as built (also under ZeRO-3, whose hooks gathered its weight)
        rows = torch.tensor([negative, positive], device=module.weight.device)
        bias = module.bias[rows] if module.bias is not None else None
        return F.linear(hidden, module.weight[rows], bias)
    # A wrapped head (e.g. a LoRA-adapted or PEFT-saved LM head): its output is not rows of one weight, so it runs
    # whole, but only on the positions it was given.
    logger.debug("LM head %s is wrapped: full-vocabulary logits at the read positions", type(module).__name__)
    logits = forward(hidden)
    return torch.stack([logits[..., negative], logits[..., positive]], dim=-1)


@contextmanager
def class_logits_only(
    model: nn.Module, head: str, token_ids: tuple[int, int] | None = None, positions: Positions = None
) -> Iterator[None]:
    """Within the block, `model(**inputs).logits` are PRM class logits, at `positions` only when given.

    Args:
        model: the PRM (possibly wrapped by PEFT, DDP or DeepSpeed).
        head: "generative" or "value".
        token_ids: the generative head's (positive, negative) token ids.
        positions: what to read: a boolean mask `[batch, seq]` (the logits are then `[K, classes]`, K = its true
            entries in row-major order) or index tensors `(rows, cols)` (`[K, classes]` in their order); None reads
            every position (`[batch, seq, classes]`).
    """
    if head == "generative" and token_ids is None:
        raise ValueError("the generative head needs its (positive, negative) token ids")
    module = head_module(model, head)
    own_forward = "forward" in module.__dict__  # an instance-level forward (e.g. set by another tool) to restore
    saved = module.__dict__.get("forward")
    original = module.forward

    def forward(hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if positions is not None:
            hidden_states = hidden_states[positions]
        if head == "generative":
            return _verdict_rows(module, original, hidden_states, token_ids)
        return original(hidden_states, *args, **kwargs)

    module.forward = forward
    try:
        yield
    finally:
        if own_forward:
            module.forward = saved
        else:
            del module.forward


def class_logits(
    model: nn.Module,
    inputs: dict[str, Any],
    head: str,
    token_ids: tuple[int, int] | None = None,
    positions: Positions = None,
) -> torch.Tensor:
    """`model(**inputs)` read as PRM class logits at `positions` (see `class_logits_only`), without the head's
    full output."""
    with class_logits_only(model, head, token_ids, positions):
        return model(**inputs).logits
