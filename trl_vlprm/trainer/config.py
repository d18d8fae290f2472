"""`VLPRMConfig`: TRL's former `PRMConfig` fields and meaning, plus what vision-language PRMs need."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from transformers import TrainingArguments

from trl_vlprm.modeling.encoding import LAYOUTS, PRMLayout
from trl_vlprm.modeling.heads import HEADS


@dataclass
class VLPRMConfig(TrainingArguments):
    r"""
    Configuration of [`VLPRMTrainer`]. Every [`~transformers.TrainingArguments`] field applies; parsed from YAML and
    the command line alike by `trl.TrlParser`.

    Fields kept from TRL's former `PRMConfig` (same names, same meaning):

    Args:
        max_length (`int` or `None`, *optional*, defaults to `1024`):
            Maximum tokens of a row (prompt, image tokens and steps). Steps that do not fit are dropped whole
            (never split) and the count of dropped steps is logged; a prompt that alone exceeds it is an error.
        max_completion_length (`int` or `None`, *optional*, defaults to `None`):
            Maximum tokens of the steps part; trailing steps beyond it are dropped whole.
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

    Model loading (when `VLPRMTrainer` gets a path):

    Args:
        model_init_kwargs (`dict` or `None`, *optional*, defaults to `None`):
            Keyword arguments for `load_prm` / `from_pretrained` (e.g. `{"dtype": "bfloat16",
            "attn_implementation": "flash_attention_2"}`).

    Defaults that differ from `TrainingArguments`: `remove_unused_columns=False` (the Trainer would drop
    `pixel_values`), `logging_steps=10`, `report_to="none"`, and `bf16=False` (TRL's `PRMConfig` defaulted to bf16,
    which fails on CPUs; set it on GPUs).
    """

    max_length: int | None = field(default=1024, metadata={"help": "Maximum tokens of a row; whole steps dropped."})
    max_completion_length: int | None = field(default=None, metadata={"help": "Maximum tokens of the steps part."})
    disable_dropout: bool = field(default=True, metadata={"help": "Disable dropout in the model."})
    step_separator: str = field(default="\n", metadata={"help": "Separator appended to each step."})
    train_on_last_step_only: bool = field(default=False, metadata={"help": "Label only the last step (training)."})
    dataset_num_proc: int | None = field(default=None, metadata={"help": "Processes for tokenization."})
    head: str = field(default="value", metadata={"help": "PRM head.", "choices": list(HEADS)})
    perception_loss_weight: float = field(default=1.0, metadata={"help": "Loss weight of perception steps."})
    freeze_vision_tower: bool = field(default=False, metadata={"help": "Freeze the vision encoder."})
    min_pixels: int | None = field(default=None, metadata={"help": "Image processor minimum area."})
    max_pixels: int | None = field(default=None, metadata={"help": "Image processor maximum area."})
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
    model_init_kwargs: dict[str, Any] | str | None = field(default=None, metadata={"help": "Kwargs for load_prm."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep image columns (must stay False)."})
    logging_steps: float = field(default=10, metadata={"help": "Log every X updates steps."})
    report_to: None | str | list[str] = field(default="none", metadata={"help": "Integrations to report to."})

    def __post_init__(self):
        if isinstance(self.model_init_kwargs, str):  # from the command line
            self.model_init_kwargs = json.loads(self.model_init_kwargs)
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
        if self.prm_layout not in LAYOUTS:
            raise ValueError(f"prm_layout must be one of {LAYOUTS}, got {self.prm_layout!r}")
        if self.perception_loss_weight < 0:
            raise ValueError(f"perception_loss_weight must be >= 0, got {self.perception_loss_weight}")
        super().__post_init__()

    @property
    def layout(self) -> PRMLayout:
        """The PRM input layout these arguments describe (saved in the checkpoint config by the trainer)."""
        return PRMLayout.named(self.prm_layout, self.step_separator, self.prm_system_prompt)
