"""PRM heads on vision-language (and text) backbones.

Two heads, chosen by `VLPRMConfig.head`:

- **value**: a linear classifier on every token's last hidden state (`num_labels=2` for hard labels, 1 for soft
  labels); the step score is read at each step's last token. transformers has no token-classification class for
  most vision-language models, so `as_token_classification_model` makes one from any model family's class (as
  vLLM's `as_seq_cls_model` wraps any model): transformers' generic token-classification mixin on that class's
  backbone, with that class's checkpoint-key conversions, registered with `AutoModelForTokenClassification`.
- **generative**: the backbone's own LM head; the step score is P("+") / (P("+") + P("-")) of the next token at each
  step's last token. No new weights, so it keeps the VLM's language prior (the paper's VL-PRMs are generative).

Both save with `save_pretrained`; `load_prm` loads either and *checks the load report*: a head class without a
checkpoint-key conversion would otherwise leave the backbone randomly initialised without a word. It also refuses a
checkpoint that records no PRM head and is no known published PRM (`trl_vlprm.modeling.presets`), rather than score
with a randomly initialised value head. Published text PRMs with their own head class (Qwen2.5-Math-PRM's
`Qwen2ForProcessRewardModel`) load through a local implementation of that class, no remote code.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from functools import cache
from pathlib import Path

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForTokenClassification,
    PreTrainedModel,
    Qwen2Model,
    Qwen2PreTrainedModel,
)
from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping
from transformers.modeling_layers import GenericForTokenClassification
from transformers.modeling_outputs import TokenClassifierOutput

from trl_vlprm.modeling.families import find_family
from trl_vlprm.modeling.hub import refuse_remote_code, require_model
from trl_vlprm.modeling.presets import PRESETS, PRMPreset, find_preset, get_preset
from trl_vlprm.utils.errors import UsageError

logger = logging.getLogger(__name__)

HEADS = ("value", "generative")
POSITIVE_TOKEN = "+"
NEGATIVE_TOKEN = "-"


class Qwen2ForProcessRewardModel(Qwen2PreTrainedModel):
    """Qwen2.5-Math-PRM's head class (its `modeling_qwen2_rm.py`, same module names, so its weights load as saved):
    the Qwen2 backbone and a 2-layer MLP (`score.0`, ReLU, `score.2`) giving per-token class logits."""

    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = Qwen2Model(config)
        hidden = config.hidden_size
        self.score = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, config.num_labels))
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, **kwargs):
        kwargs.pop("logits_to_keep", None)
        # The key/value cache passes through under whichever name the installed transformers reads (`modeling.compat`).
        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kwargs)
        return TokenClassifierOutput(logits=self.score(outputs.last_hidden_state))


# Value-head classes of published PRMs, picked by the architecture their config names.
ARCHITECTURE_CLASSES: dict[str, type[PreTrainedModel]] = {"Qwen2ForProcessRewardModel": Qwen2ForProcessRewardModel}


class BackboneNotLoadedError(RuntimeError):
    """Raised when `from_pretrained` left backbone weights at random initialisation."""


class HeadNotLoadedError(BackboneNotLoadedError):
    """Raised when a saved value PRM's folder holds no head weights (they would be drawn at random on every load)."""


class MissingPRMMetadataError(ValueError):
    """Raised when a checkpoint records no PRM head and is no known published PRM: nothing says how to score it."""


@cache
def as_token_classification_model(model_class: type[PreTrainedModel]) -> type[PreTrainedModel]:
    """The value-head class of `model_class`'s architecture: its backbone plus a per-token linear `score`.

    Made once per class, like vLLM's `as_seq_cls_model`: transformers' `GenericForTokenClassification` on
    `model_class`'s pretrained base (so the backbone is the same `AutoModel` under the same `model.` prefix), named
    `<Arch>ForTokenClassification` (the name saved in `config.architectures`), registered with
    `AutoModelForTokenClassification` for the config class. transformers looks checkpoint-key conversions up by
    class name first: the ones of `model_class` (e.g. Qwen2-VL hub checkpoints' `visual.*` / `model.layers.*`) are
    registered under the new name too, since without them `from_pretrained` would silently leave the backbone random
    (`load_prm` checks the load report). A class transformers already ships for the config is used as it is.

    Args:
        model_class: a concrete model class of the architecture, e.g. `Qwen3VLForConditionalGeneration`.
    """
    config_class = model_class.config_class
    existing = AutoModelForTokenClassification._model_mapping.get(config_class, None)
    if existing is not None:
        return existing
    pretrained_base = next(base for base in model_class.__mro__[1:] if issubclass(base, PreTrainedModel))
    name = model_class.__name__.replace("ForConditionalGeneration", "") + "ForTokenClassification"
    head_class = type(
        name,
        (GenericForTokenClassification, pretrained_base),
        {
            "config_class": config_class,
            "__module__": __name__,
            "__doc__": f"{model_class.__name__}'s backbone + "
            "a per-token classifier (`score`): the value-head PRM (`as_token_classification_model`).",
        },
    )
    conversions = get_checkpoint_conversion_mapping(model_class.__name__)
    if conversions is not None:
        register_checkpoint_conversion_mapping(name, conversions, overwrite=True)
    AutoModelForTokenClassification.register(config_class, head_class, exist_ok=True)
    return head_class


def value_head_class(model_type: str) -> type:
    """The value-head class of `model_type`: made from its model family's class, else transformers' own."""
    family = find_family(model_type)
    if family is None:
        return AutoModelForTokenClassification
    return as_token_classification_model(family.model_class())


def _model_class(model_type: str, head: str, architectures: list[str] | None = None):
    for architecture in architectures or ():
        if head == "value" and architecture in ARCHITECTURE_CLASSES:
            return ARCHITECTURE_CLASSES[architecture]
    if head == "value":
        return value_head_class(model_type)
    family = find_family(model_type)
    return family.generative_class() if family is not None else AutoModelForCausalLM


def _head_keys(head: str) -> tuple[str, ...]:
    # Weights a freshly added head legitimately lacks; anything else missing means the backbone did not load.
    return ("score.",) if head == "value" else ()


def resolve_preset(path: str | Path, preset: str | PRMPreset | None = None) -> PRMPreset | None:
    """The preset to read `path` with: `preset` (an id or a preset), else the one `path` names (hub id or hub cache
    folder), else None."""
    if isinstance(preset, PRMPreset):
        return preset
    return get_preset(preset) if preset is not None else find_preset(path)


class _HoldLoadReport(logging.Filter):
    """Holds back transformers' LOAD REPORT warning while a base model gets a new value head."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if "LOAD REPORT" in record.getMessage():
            self.held.append(record)
            return False
        return True


@contextlib.contextmanager
def _expected_load_report(path: str | os.PathLike, new_value_head: bool):
    """A base model loaded with a new value head makes transformers print a LOAD REPORT table (`lm_head.weight`
    UNEXPECTED, `score.*` MISSING) that reads like a failure but is what starting a value head means: say so in one
    line instead. A report naming anything else (a backbone tensor) is shown as transformers wrote it."""
    if not new_value_head:
        yield
        return
    report_logger = logging.getLogger("transformers.modeling_utils")
    hold = _HoldLoadReport()
    report_logger.addFilter(hold)
    try:
        yield
    finally:
        report_logger.removeFilter(hold)
    for record in hold.held:
        listed = re.findall(r"^(\S+)\s+\|\s+(?:\x1b\[[0-9;]*m)?(UNEXPECTED|MISSING)", record.getMessage(), re.M)
        if listed and all(key.startswith(("lm_head.", "score.")) for key, _ in listed):
            logger.warning(
                "load_prm: %s is a base model: its LM head (lm_head.weight) is left out and a new value head "
                "(score.*) starts random, to be trained; transformers' LOAD REPORT of these keys is expected",
                path,
            )
        else:
            report_logger.handle(record)


def load_prm(
    name_or_path: str | os.PathLike,
    head: str | None = None,
    num_labels: int = 2,
    dtype: torch.dtype | str | None = None,
    revision: str | None = None,
    preset: str | PRMPreset | None = None,
    **kwargs,
) -> PreTrainedModel:
    """Load a PRM (or a base VLM to turn into one) from a local folder or a Hub repo id.

    Args:
        name_or_path: a checkpoint folder or repo id (resolved as transformers does: cache, `HF_HOME`,
            `HF_HUB_OFFLINE`): a trained PRM (its config records `prm_head`), a published PRM (found in
            `trl_vlprm.modeling.presets` by its repo id or hub cache folder), or a base model (then pass `head`).
        head: "value" or "generative"; defaults to the head recorded in the checkpoint, else the preset's. A base
            model with `head="value"` gets a new, randomly initialised value head (to train).
        num_labels: classes of a new value head (2 for hard labels, 1 for soft labels); ignored when the
            checkpoint already is a value-head PRM.
        dtype: parameter dtype (e.g. "bfloat16" on GPUs); default float32.
        revision: branch, tag or commit of a repo id (default "main").
        preset: a published PRM's id (or `PRMPreset`) to read `name_or_path` as, e.g. a local copy of
            the paper's ob11 7B PRM. Its layout is recorded on the loaded config unless the checkpoint records one.
        **kwargs: passed to `from_pretrained` (e.g. `attn_implementation`).

    Raises:
        MissingPRMMetadataError: no head given, none recorded, no preset: nothing says how to score the checkpoint.
        BackboneNotLoadedError: a backbone tensor was missing from the checkpoint (it would stay random).
    """
    path = name_or_path
    require_model(path, revision)  # resolves (or fails naming the model) the way from_pretrained will
    refuse_remote_code(path, revision)
    config = AutoConfig.from_pretrained(path, revision=revision, trust_remote_code=False)
    saved_head = getattr(config, "prm_head", None)
    preset = resolve_preset(path, preset)
    head = head or saved_head or (preset.head if preset is not None else None)
    if head is None:
        known = PRESETS.names()
        raise MissingPRMMetadataError(
            f"{path} is not a PRM saved by trl_vlprm (its config has no prm_head) nor a known published PRM "
            f"({', '.join(known)}). "
            "Pass head='generative' (scores from the LM's '+'/'-' logits) or head='value' (adds a new, randomly "
            "initialised value head: only to train it), or preset='<hub id>' when the folder is a copy of a "
            "published PRM."
        )
    if head not in HEADS:
        raise UsageError(f"head must be one of {HEADS}, got {head!r}")
    if saved_head is not None and head != saved_head:
        # Loading a value-head PRM as generative would read an LM head it does not have, and a generative PRM as
        # value would score with a new, random value head: refuse both, naming what the checkpoint says.
        raise UsageError(
            f"{path} is a {saved_head}-head PRM (its config.json records prm_head={saved_head!r}) but head={head!r} "
            f"was asked for; leave the head unset (or set head={saved_head!r}) to score with the head it was trained"
        )
    is_value_prm = saved_head == "value" or (preset is not None and preset.head == "value")
    new_value_head = head == "value" and not is_value_prm
    if new_value_head:
        config.num_labels = num_labels
        logger.info("load_prm: %s gets a new, randomly initialised value head (%d labels)", path, num_labels)
    model_class = _model_class(config.model_type, head, getattr(config, "architectures", None))
    with _expected_load_report(path, new_value_head):
        model, info = model_class.from_pretrained(
            path, config=config, dtype=dtype, revision=revision, output_loading_info=True, **kwargs
        )
    # A new head (a base model given head="value") legitimately lacks its weights; a saved value PRM must have them,
    # else from_pretrained draws a random head, a different one on every load.
    missing_head = [k for k in info["missing_keys"] if k.startswith(_head_keys(head))]
    if missing_head and is_value_prm:
        raise HeadNotLoadedError(
            f"{path} records a trained value head (prm_head: value) but its value head weights "
            f"{sorted(missing_head)} were not found in {path}: they would be drawn at random, differently on every "
            "load. The folder holds a base model's (or a vLLM export's) weights; point at the folder the trainer "
            "saved, or load it as a base model with head='value' to train a head"
        )
    missing = [k for k in info["missing_keys"] if not k.startswith(_head_keys(head))]
    if missing:
        raise BackboneNotLoadedError(
            f"{len(missing)} backbone tensor(s) were not found in {path} and would stay random, e.g. {missing[:3]}"
        )
    model.config.prm_head = head
    if preset is not None and getattr(model.config, "prm_layout", None) is None:
        preset.layout.save_to_config(model.config)
    return model


def prm_token_ids(tokenizer, positive: str = POSITIVE_TOKEN, negative: str = NEGATIVE_TOKEN) -> tuple[int, int]:
    """Ids of the single tokens `positive` (step correct) and `negative` (step wrong) the generative head reads."""
    ids = []
    for token in (positive, negative):
        encoded = tokenizer.encode(token, add_special_tokens=False)
        if len(encoded) != 1:
            raise ValueError(f"the generative head needs {token!r} to be one token; the tokenizer gives {encoded}")
        ids.append(encoded[0])
    return ids[0], ids[1]


def step_logits(logits: torch.Tensor, head: str, token_ids: tuple[int, int] | None = None) -> torch.Tensor:
    """Per-token logits of the PRM's classes: [..., 2] (wrong, correct) or [..., 1] (soft value head).

    For the generative head, class logits are the LM logits of "-" and "+": a 2-way softmax over them is
    P(correct) among the two verdict tokens.
    """
    if head == "generative":
        positive, negative = token_ids
        return torch.stack([logits[..., negative], logits[..., positive]], dim=-1)
    return logits


def correct_probability(class_logits: torch.Tensor) -> torch.Tensor:
    """P(step correct) from class logits: sigmoid for one class, softmax's class 1 for two."""
    if class_logits.shape[-1] == 1:
        return torch.sigmoid(class_logits[..., 0].float())
    return torch.softmax(class_logits.float(), dim=-1)[..., 1]
