"""`VLPRMConfig`: TRL's former `PRMConfig` fields, defaults and meaning, plus what vision-language PRMs need."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import TrainingArguments

from trl_vlprm.modeling.encoding import LAYOUTS, PRMLayout
from trl_vlprm.modeling.heads import HEADS
from trl_vlprm.types import DEFAULT_STEP_SEPARATOR

STEP_TRUNCATIONS = ("tokens", "whole_steps")
LONG_PROMPTS = ("truncate", "error")


def bf16_available() -> bool:
    """True where mixed bf16 training runs natively: a CUDA GPU with bf16, or an Intel XPU."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return hasattr(torch, "xpu") and torch.xpu.is_available()


@dataclass
class VLPRMConfig(TrainingArguments):
    r"""
    Configuration of [`VLPRMTrainer`]. Every [`~transformers.TrainingArguments`] field applies; parsed from YAML and
    the command line alike by `trl.TrlParser`.

    Fields kept from TRL's former `PRMConfig` (same names, defaults and meaning):

    Args:
        max_length (`int` or `None`, *optional*, defaults to `1024`):
            Maximum tokens of a row (prompt, image tokens and steps). How a longer row is cut: `step_truncation`.
        max_completion_length (`int` or `None`, *optional*, defaults to `None`):
            Maximum tokens of the steps part (the concatenation of the steps and their separators).
        disable_dropout (`bool`, *optional*, defaults to `True`):
            Disable dropout in the model (its token scores then depend on the input only).
        step_separator (`str`, *optional*, defaults to `"\n"`):
            Appended to every step; the label sits on its last token.
        train_on_last_step_only (`bool`, *optional*, defaults to `False`):
            Label only the last step of each training row (evaluation rows keep every label).
        dataset_num_proc (`int` or `None`, *optional*, defaults to `None`):
            Processes used to tokenize the dataset.

    Added for vision-language PRMs:

    Args:
        head (`str`, *optional*, defaults to `"value"`):
            `"value"`: a token-classification head (2 classes, or 1 with soft labels). `"generative"`: the LM head's
            logits of `"+"`/`"-"` at each step end, no new weights.
        perception_loss_weight (`float`, *optional*, defaults to `1.0`):
            Perception-focused supervision: the loss of a step tagged `"perception"` is multiplied by this weight
            (reasoning and untyped steps weigh 1). The loss is the weighted sum over labelled steps divided by the
            number of labelled steps, so a batch of perception steps only scales by exactly this factor.
        use_label_weights (`bool`, *optional*, defaults to `True`):
            When rows carry a `label_weights` column (one weight >= 0 per step, written by the labeller), multiply
            each step's loss by its weight, on top of `perception_loss_weight` (same normalisation: the sum of
            weighted step losses over the number of labelled steps). A weight of 0 removes a step from the loss.
        step_truncation (`str`, *optional*, defaults to `"tokens"`):
            How a row longer than `max_length` / `max_completion_length` is cut. `"tokens"`: at the token budget,
            exactly as TRL's `PRMTrainer.tokenize_row` did (a step cut before its last token loses its label with
            it). `"whole_steps"`: trailing steps that do not fit are dropped whole, so no partial step is left as
            unlabelled context. Either way the count of cut rows is logged.
        long_prompt (`str`, *optional*, defaults to `"truncate"`):
            A row whose prompt (image tokens included) alone exceeds `max_length`. `"truncate"`: as TRL, the row is
            cut, keeps no labelled step and is removed (the count is logged); a vision row is never cut inside its
            image tokens, it is removed whole. `"error"`: stop with an error naming the row.
        freeze_vision_tower (`bool`, *optional*, defaults to `False`):
            Keep the vision encoder's weights fixed (the merger/projector still trains).
        min_pixels (`int` or `None`, *optional*, defaults to `None`):
            Override the image processor's minimum image area.
        max_pixels (`int` or `None`, *optional*, defaults to `None`):
            Override the image processor's maximum image area; bounds image tokens per image and so memory.
        prm_layout (`str`, *optional*, defaults to `"steps"`):
            PRM input layout, saved with the checkpoint so scoring reads the same one. `"steps"`: the question through
            the chat template, then every step + `step_separator` in one assistant turn. `"multi_turn"`: the paper's
            layout (a system turn, the question and step 1 in the first user turn, each later step in its own user
            turn after an assistant turn holding the previous step's label `+`/`-`). `"text"`: prompt and steps as one
            raw string (text PRMs).
        prm_system_prompt (`str` or `None`, *optional*, defaults to `None`):
            System turn of the `"steps"` and `"multi_turn"` layouts. `None`: none for `"steps"`, the paper's
            `PRM_SYSTEM_PROMPT_NORMAL_TOK_V2` for `"multi_turn"`; `""`: no system turn.
        word_verdicts (`str` or `None`, *optional*, defaults to `None`):
            The step type (e.g. `"perception"`) whose steps the training data labels after every word
            (`trl_vlprm.testbed.label_every_word` cuts them with `trl_vlprm.types.word_pieces`). Saved with the
            checkpoint, so every scorer cuts such steps the same way and scores each by its lowest word verdict
            (`evaluate` reads every step at its end and warns: `trl_vlprm.eval.guardrails.scored_step_metrics`
            reports what the scorers score).

    Model loading (when `VLPRMTrainer` gets a path):

    Args:
        model_init_kwargs (`dict` or `None`, *optional*, defaults to `None`):
            Keyword arguments for `load_prm` / `from_pretrained` (e.g. `{"dtype": "bfloat16",
            "attn_implementation": "flash_attention_2"}`).

    > [!NOTE]
    > These parameters have default values different from [`~transformers.TrainingArguments`], as in TRL's
    > `PRMConfig`:
    > - `logging_steps`: `10` instead of `500`.
    > - `gradient_checkpointing` (`activation_checkpointing` in transformers 5): `True` instead of `False`.
    > - `learning_rate`: `1e-5` instead of `5e-5`.
    > - `bf16`: `True` if `fp16` is not set **and the hardware runs bf16** (a CUDA GPU with bf16, an Intel XPU),
    >   instead of `False`.
    >
    > Deliberate differences from TRL's `PRMConfig`:
    > - `bf16` is off on a CPU-only machine and on GPUs without bf16: TRL's unconditional `True` fails there.
    > - `remove_unused_columns=False`: the Trainer would otherwise drop `pixel_values` and the image columns.
    > - `report_to="none"`: nothing is sent to a tracking service unless asked.
    """

    learning_rate: float = field(default=1e-5, metadata={"help": "The initial learning rate for AdamW."})
    logging_steps: float = field(
        default=10,
        metadata={
            "help": "Log every X updates steps. Should be an integer or a float in range `[0,1)`. If smaller than 1, "
            "will be interpreted as ratio of total training steps."
        },
    )
    bf16: bool | None = field(
        default=None,
        metadata={
            "help": "Whether to use bf16 (mixed) precision instead of 32-bit. If not set, it is True when fp16 is not "
            "set and the hardware runs bf16 (a CUDA GPU with bf16 or an Intel XPU), False on a CPU-only machine."
        },
    )
    max_length: int | None = field(
        default=1024,
        metadata={"help": "Maximum tokens of a row (prompt, image tokens and steps), cut as `step_truncation` says."},
    )
    max_completion_length: int | None = field(
        default=None,
        metadata={"help": "Maximum tokens of the steps part (the concatenation of the steps and their separators)."},
    )
    disable_dropout: bool = field(default=True, metadata={"help": "Whether to disable dropout in the model."})
    step_separator: str = field(
        default=DEFAULT_STEP_SEPARATOR,
        metadata={"help": "Separator appended to each step; the step's label sits on its last token."},
    )
    train_on_last_step_only: bool = field(
        default=False, metadata={"help": "Whether to label only the last step of each training row."}
    )
    dataset_num_proc: int | None = field(
        default=None, metadata={"help": "Number of processes to use for tokenizing the dataset."}
    )
    head: str = field(
        default="value",
        metadata={
            "help": "PRM head: a token-classification value head or the generative +/- head.",
            "choices": list(HEADS),
        },
    )
    perception_loss_weight: float = field(
        default=1.0, metadata={"help": "Loss weight of steps tagged perception (other steps weigh 1)."}
    )
    use_label_weights: bool = field(
        default=True,
        metadata={"help": "Whether to multiply each step's loss by the row's `label_weights` when the column exists."},
    )
    step_truncation: str = field(
        default="tokens",
        metadata={
            "help": "How a row longer than the token budget is cut: at the budget as TRL did (tokens) or by dropping "
            "trailing steps whole (whole_steps).",
            "choices": list(STEP_TRUNCATIONS),
        },
    )
    long_prompt: str = field(
        default="truncate",
        metadata={
            "help": "A row whose prompt alone exceeds max_length is cut and removed with a count in the log "
            "(truncate, as TRL) or stops the run with an error naming it (error).",
            "choices": list(LONG_PROMPTS),
        },
    )
    freeze_vision_tower: bool = field(
        default=False, metadata={"help": "Whether to keep the vision encoder's weights fixed (the merger trains)."}
    )
    min_pixels: int | None = field(
        default=None, metadata={"help": "Minimum image area in pixels, overriding the image processor's."}
    )
    max_pixels: int | None = field(
        default=None, metadata={"help": "Maximum image area in pixels, overriding the image processor's."}
    )
    prm_layout: str = field(
        default="steps",
        metadata={
            "help": "PRM input layout, saved with the checkpoint so scoring reads the same one: 'steps' (question "
            "through the chat template, then every step + step_separator in one assistant turn), 'multi_turn' (the "
            "paper's layout: system turn, question + step 1 in the first user turn, each later step in its own user "
            "turn after an assistant turn holding the previous step's label) or 'text' (one raw string, text PRMs).",
            "choices": list(LAYOUTS),
        },
    )
    prm_system_prompt: str | None = field(
        default=None,
        metadata={
            "help": "System turn of the 'steps' and 'multi_turn' layouts. None: none for 'steps', the paper's "
            "PRM_SYSTEM_PROMPT_NORMAL_TOK_V2 for 'multi_turn'; an empty string: no system turn."
        },
    )
    word_verdicts: str | None = field(
        default=None,
        metadata={
            "help": "The step type (e.g. 'perception') whose steps the training data labels after every word "
            "(trl_vlprm.testbed.label_every_word). Saved with the checkpoint, so every scorer cuts such steps the "
            "same way and scores each by its lowest word verdict (`evaluate` reads step ends and warns); None: every "
            "step is scored at its end."
        },
    )
    model_init_kwargs: dict[str, Any] | str | None = field(
        default=None,
        metadata={
            "help": "Keyword arguments for loading the model from a path (a dict, or JSON on the command line)."
        },
    )
    remove_unused_columns: bool = field(
        default=False,
        metadata={"help": "Whether to drop dataset columns the model does not take; must stay False (images)."},
    )
    report_to: None | str | list[str] = field(
        default="none", metadata={"help": "The integrations to report results and logs to."}
    )

    def __post_init__(self):
        if isinstance(self.model_init_kwargs, str):  # from the command line
            self.model_init_kwargs = json.loads(self.model_init_kwargs)
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
        if self.prm_layout not in LAYOUTS:
            raise ValueError(f"prm_layout must be one of {LAYOUTS}, got {self.prm_layout!r}")
        if self.perception_loss_weight < 0:
            raise ValueError(f"perception_loss_weight must be >= 0, got {self.perception_loss_weight}")
        if self.step_truncation not in STEP_TRUNCATIONS:
            raise ValueError(f"step_truncation must be one of {STEP_TRUNCATIONS}, got {self.step_truncation!r}")
        if self.long_prompt not in LONG_PROMPTS:
            raise ValueError(f"long_prompt must be one of {LONG_PROMPTS}, got {self.long_prompt!r}")
        if self.bf16 is None:
            self.bf16 = not self.fp16 and not self.use_cpu and bf16_available()
        # TRL's PRMConfig default (gradient checkpointing on), set only when neither name was given, so a TRL user's
        # `gradient_checkpointing=False` is honoured (transformers 5 reads the old name only if the new one is unset).
        names = {f.name for f in dataclasses.fields(TrainingArguments)}
        new_name = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
        if getattr(self, new_name) is None and getattr(self, "gradient_checkpointing", None) is None:
            setattr(self, new_name, True)
        super().__post_init__()

    @property
    def layout(self) -> PRMLayout:
        """The PRM input layout these arguments describe (saved in the checkpoint config by the trainer)."""
        return PRMLayout.named(self.prm_layout, self.step_separator, self.prm_system_prompt, self.word_verdicts)
