"""`ModelFamily`: every question the pipeline asks of a vision-language backbone, answered in one class per family.

A family covers one or more transformers `model_type`s that share a processor, a position scheme and a weight layout
(Qwen2-VL and Qwen2.5-VL are one family). The pipeline never tests for a model type; it asks the family:

- **processing**: an image-only processor (transformers 5's VLM processors demand a video processor, which needs
  torchvision; `image_only.py` drops it) built around a tokenizer, and the image processor read back from a
  checkpoint's saved settings;
- **encoding**: how many tokens each image becomes, which tokens are vision markers (never allowed inside a step),
  and the per-token multimodal type ids the model's forward reads;
- **batching**: the image tensors the model takes (`image_inputs`) and how many image tokens they stand for;
- **positions**: the rope positions of a question prefix and of text continuing after it (the scorer's prefix cache
  must place them exactly where a full forward would);
- **training**: which parameters form the vision tower (`freeze_vision_tower`);
- **models**: the concrete transformers class that loads the family's checkpoints with their LM head
  (`model_class`); the value head is not written per family but made from it (`heads.as_token_classification_model`,
  as vLLM's `as_seq_cls_model` wraps any model);
- **scoring**: whether a shared question prefix gives exactly the scores of whole forwards (`exact_prefix_sharing`);
- **vLLM**: where vLLM's classifier looks for a value head's weights.

Tiny random models of each family (tests, demo) are built in `trl_vlprm.testing.tiny_models`, not here: nothing in
an adapter exists only for tests.

A family registers itself with `@register_model_family` in its own module of `trl_vlprm.modeling.families` (every
module of that package is imported before the first lookup, `Registry(discover=...)`), so adding a family is one file
plus its tests.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any, ClassVar

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase, ProcessorMixin

from trl_vlprm.registry import Registry


class UnsupportedModelError(ValueError):
    """A model this library cannot read images with (its type belongs to no registered model family)."""


class ModelFamily(abc.ABC):
    """The adapter of one family of vision-language models, bound to one of its `model_types`.

    Subclasses set the class attributes, implement the abstract methods and keep or override the rest (their defaults
    suit a processor with `image_token` / `image_token_id` and a model reading 1-D positions).

    Class attributes:
        name: the family's name (e.g. "qwen_vl").
        model_types: the transformers `model_type`s it covers, e.g. ("qwen2_vl", "qwen2_5_vl").
        class_name_prefixes: processing-class name prefix -> model type, to recognise a saved or live processor
            (`preprocessor_config.json`'s `processor_class`, the class of a processor passed in).
        vision_marker_tokens: tokens framing an image in the chat template, rejected inside a step.
        vllm_value_head_renames: value-head weight names as saved -> the names vLLM's classifier of the family loads.
        vllm_reads_lm_head_rows: whether vLLM 0.32's online conversion of a generative PRM (`classifier_from_token`)
            finds the family's LM head; it looks on the inner language model, so a family whose vLLM model keeps the
            LM head outside it sets False and is served through a two-row view
            (`trl_vlprm.guidance.vllm_checkpoints.vllm_generative_view`).
    """

    name: ClassVar[str]
    model_types: ClassVar[tuple[str, ...]]
    class_name_prefixes: ClassVar[Mapping[str, str]] = {}
    vision_marker_tokens: ClassVar[tuple[str, ...]] = ()
    vllm_value_head_renames: ClassVar[Mapping[str, str]] = {}
    vllm_reads_lm_head_rows: ClassVar[bool] = True

    def __init__(self, model_type: str):
        if model_type not in self.model_types:
            raise ValueError(f"{type(self).__name__} covers {self.model_types}, not {model_type!r}")
        self.model_type = model_type

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.model_type!r})"

    # ---- processing -------------------------------------------------------------------------------------------

    @abc.abstractmethod
    def image_processor(
        self, saved: Mapping[str, Any] | None = None, min_pixels: int | None = None, max_pixels: int | None = None
    ) -> Any:
        """An image processor (no torchvision) from a checkpoint's saved settings (`preprocessor_config.json`, or
        the `image_processor` entry of `processor_config.json`; None: the defaults), with pixel bounds overridden."""

    @abc.abstractmethod
    def processor(
        self,
        tokenizer: PreTrainedTokenizerBase,
        image_processor: Any,
        chat_template: str | None,
        processor_kwargs: Mapping[str, Any] | None = None,
    ) -> ProcessorMixin:
        """The image-only processor of `model_type` around `tokenizer` and `image_processor`; `processor_kwargs`: the
        processor's own saved settings (`processor_config.json` beside its sub-processors, e.g. LLaVA's
        `patch_size`)."""

    # ---- encoding ---------------------------------------------------------------------------------------------

    @abc.abstractmethod
    def image_token_counts(self, processing_class: Any, images: Sequence[Any], row: Any = "?") -> list[int]:
        """Image tokens each (PIL) image will occupy after the image processor resizes it, computed without pixels.

        Raises:
            RecordError: an image the image processor would refuse (naming `row` and the image).
        """

    def image_token_id(self, processing_class: Any) -> int:
        """Id of the token each image's features replace, as many times as `image_token_counts` says (the
        processor's `image_token_id`; Gemma 3's processor names its begin-of-image marker so)."""
        return processing_class.image_token_id

    def vision_token_ids(self, processing_class: Any) -> set[int]:
        """Ids of the tokens that mean "an image is here" (image/video placeholders and `vision_marker_tokens`)."""
        tokenizer = getattr(processing_class, "tokenizer", processing_class)
        found = {getattr(processing_class, name, None) for name in ("image_token_id", "video_token_id")}
        found.add(self.image_token_id(processing_class))
        found |= {tokenizer.convert_tokens_to_ids(token) for token in self.vision_marker_tokens}
        return found - {None, tokenizer.unk_token_id}  # a token the vocabulary lacks maps to unk (or None)

    # The model input that carries the per-token multimodal types (transformers 5's `mm_token_type_ids`; Gemma 3
    # reads them as `token_type_ids`), or None when the family's models read none.
    token_types_input: ClassVar[str | None] = "mm_token_type_ids"

    def mm_token_type_ids(self, processing_class: Any, ids: Sequence[int]) -> list[int] | None:
        """Per-token multimodal types of a sequence (1: image token, 0: text) as the model reads them
        (`token_types_input`), or None when the family's models read none."""
        if self.token_types_input is None:
            return None
        image_token_id = self.image_token_id(processing_class)
        return [1 if token == image_token_id else 0 for token in ids]

    def expand_image_tokens(self, processing_class: Any, text: str, images: Sequence[Any], row: Any = "?") -> str:
        """`text` (a rendered chat template) with each image's placeholder expanded into the tokens the processor puts
        there: by default the `image_token` repeated `image_token_counts` times (as LLaVA and Qwen-VL processors do).

        Raises:
            RecordError: the number of placeholders differs from the number of images (naming `row`).
        """
        from trl_vlprm.data.schema import RecordError

        image_token = processing_class.image_token
        pieces = text.split(image_token)
        if len(pieces) - 1 != len(images):
            raise RecordError(
                row, "images", f"{len(images)} image(s) but {len(pieces) - 1} image slot(s) after the chat template"
            )
        counts = self.image_token_counts(processing_class, images, row)
        return pieces[0] + "".join(image_token * n + piece for n, piece in zip(counts, pieces[1:]))

    def image_placeholder(self, processing_class: Any) -> str:
        """The text the chat template writes for one image and `expand_image_tokens` expands (the processor's
        `image_token` by default)."""
        return processing_class.image_token

    def collapse_image_tokens(self, processing_class: Any, ids: Sequence[int], images: Sequence[Any]) -> list[int]:
        """`ids` with each image's expansion put back to the placeholder the chat template writes: the token prompt
        an engine that expands images itself (vLLM) takes, and expands back into exactly `ids`.

        Each image's expansion is found in order (Idefics3's tiles carry row/column markers around their image tokens,
        so dropping repeated image tokens alone would leave markers vLLM adds again).

        Raises:
            ValueError: an image's expansion is not in `ids` (the ids were encoded with other images or settings).
        """
        tokenizer = getattr(processing_class, "tokenizer", processing_class)
        placeholder = self.image_placeholder(processing_class)
        placeholder_ids = tokenizer(placeholder, add_special_tokens=False)["input_ids"]
        collapsed, start = [], 0
        for i, image in enumerate(images):
            expanded = self.expand_image_tokens(processing_class, placeholder, [image])
            span = tokenizer(expanded, add_special_tokens=False)["input_ids"]
            at = next((j for j in range(start, len(ids) - len(span) + 1) if ids[j : j + len(span)] == span), None)
            if at is None:
                raise ValueError(f"image {i}'s {len(span)} tokens are not in the sequence after position {start}")
            collapsed += list(ids[start:at]) + placeholder_ids
            start = at + len(span)
        return collapsed + list(ids[start:])

    # ---- batching ---------------------------------------------------------------------------------------------

    def image_inputs(self, processing_class: Any, images: Sequence[Any]) -> dict[str, torch.Tensor]:
        """The model's image inputs of `images` (in order), as the processor would put them in a batch."""
        return dict(processing_class.image_processor(images=list(images), return_tensors="pt"))

    def image_token_total(self, processing_class: Any, images: Sequence[Any]) -> int:
        """How many image tokens the batch's text must hold for `images` under the current image processor settings
        (the collator checks the tokenization is current)."""
        return sum(self.image_token_counts(processing_class, images))

    # ---- positions --------------------------------------------------------------------------------------------

    def prefix_positions(
        self,
        backbone: torch.nn.Module,
        input_ids: torch.Tensor,
        mm_token_type_ids: torch.Tensor | None,
        image_inputs: Mapping[str, torch.Tensor],
    ) -> torch.Tensor:
        """Rope positions of a one-row prefix `input_ids` [1, P] (its images given by `image_inputs`), in the shape
        the model's `position_ids` takes."""
        return torch.arange(input_ids.shape[1], device=input_ids.device)[None]

    def text_positions(self, start: int, length: int, batch: int) -> torch.Tensor:
        """Rope positions of `batch` rows of `length` text tokens continuing a prefix whose next position is `start`
        (a full forward places text after the prefix exactly so)."""
        return torch.arange(start, start + length)[None].expand(batch, -1)

    # ---- training ---------------------------------------------------------------------------------------------

    vision_tower_description: ClassVar[str] = "vision tower"
    # Submodules of the backbone that hold the vision encoder in transformers' VLMs, and the parts inside them that
    # project into the language model (those train with the language model).
    vision_tower_modules: ClassVar[tuple[str, ...]] = ("vision_tower", "vision_model")
    projector_modules: ClassVar[tuple[str, ...]] = ()

    def is_vision_tower_parameter(self, name: str) -> bool:
        """Whether the parameter called `name` belongs to the vision encoder `freeze_vision_tower` keeps fixed (the
        projector into the language model stays trainable)."""
        parts = name.split(".")
        return any(part in self.vision_tower_modules for part in parts) and not any(
            part in self.projector_modules for part in parts
        )

    # ---- models -----------------------------------------------------------------------------------------------

    def model_class(self) -> type[PreTrainedModel]:
        """The concrete class that loads `model_type`'s checkpoints with the LM head (transformers' image-text-to-text
        class of the model type); the value head wraps it (`heads.as_token_classification_model`)."""
        from transformers import CONFIG_MAPPING
        from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING

        return MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING[CONFIG_MAPPING[self.model_type]]

    def generative_class(self) -> type:
        """The class that loads the model with its LM head (the generative PRM head and the transformers policy)."""
        from transformers import AutoModelForImageTextToText

        return AutoModelForImageTextToText

    # ---- scoring ----------------------------------------------------------------------------------------------

    # Whether a forward of the question prefix alone leaves exactly the cache a whole forward builds for it (true
    # for causal attention). A family whose prefix forward differs sets it False with the reason; the scorer then
    # runs whole forwards for it, saying so once.
    exact_prefix_sharing: ClassVar[bool] = True
    inexact_prefix_reason: ClassVar[str] = ""


# Model type -> family class; each family registers under every model type it covers.
MODEL_FAMILIES: Registry[type[ModelFamily]] = Registry(
    "model family", base=ModelFamily, discover="trl_vlprm.modeling.families"
)
_REGISTERED: list[type[ModelFamily]] = []  # registration order, for error messages that list what is supported


def register_model_family(cls: type[ModelFamily]) -> type[ModelFamily]:
    """Class decorator: registers a family under each of its model types."""
    MODEL_FAMILIES.register(*cls.model_types)(cls)
    _REGISTERED.append(cls)
    return cls


def supported_model_types() -> tuple[str, ...]:
    """Every model type a registered family covers, in registration order."""
    MODEL_FAMILIES.discover_entries()
    return tuple(model_type for cls in _REGISTERED for model_type in cls.model_types)


def supported_families_text() -> str:
    """ "qwen2_vl, qwen2_5_vl (family qwen_vl)"-style list of what is supported, for error messages."""
    MODEL_FAMILIES.discover_entries()
    return "; ".join(f"{', '.join(cls.model_types)} (family {cls.name})" for cls in _REGISTERED)


# A function giving the generic adapter of a model type no family registers (`families/llava.py` sets it): the family,
# None for a model type that is no vision-language model, or UnsupportedModelError naming what the model lacks.
_GENERIC: list[Any] = []


def set_generic_family(make: Any) -> None:
    """Install the generic adapter (`make(model_type) -> ModelFamily | None`, raising `UnsupportedModelError`)."""
    _GENERIC[:] = [make]


@cache
def _generic_family(model_type: str | None) -> ModelFamily | None:
    MODEL_FAMILIES.discover_entries()  # families/llava.py installs the generic adapter
    return _GENERIC[0](model_type) if _GENERIC and model_type else None


@cache
def get_family(model_type: str | None) -> ModelFamily:
    """The family adapter of `model_type`: its registered family, else the generic LLaVA-style adapter where the model
    fits it.

    Raises:
        UnsupportedModelError: no family covers it (the message names what the generic adapter found missing, and
            lists the supported model types).
    """
    if model_type in MODEL_FAMILIES:
        return MODEL_FAMILIES.get(model_type)(model_type)
    family = _generic_family(model_type)
    if family is None:
        raise UnsupportedModelError(
            f"model type {model_type!r} belongs to no model family of trl_vlprm; supported vision-language model "
            f"types: {supported_families_text()}"
        )
    return family


def find_family(model_type: str | None) -> ModelFamily | None:
    """The family adapter of `model_type`, or None (a text-only model, or a type transformers does not know).

    Raises:
        UnsupportedModelError: a vision-language model the generic adapter cannot serve (naming what is missing).
    """
    return get_family(model_type) if model_type in MODEL_FAMILIES else _generic_family(model_type)


def model_type_from_class_name(name: str | None) -> str | None:
    """The model type a processing class name (e.g. a saved `processor_class`) belongs to, or None."""
    MODEL_FAMILIES.discover_entries()
    for cls in _REGISTERED:
        for prefix, model_type in cls.class_name_prefixes.items():
            if name and name.startswith(prefix):
                return model_type
    if name and _GENERIC:  # a processor transformers names for some model type: the generic adapter may serve it
        from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

        return next((model_type for model_type, cls in PROCESSOR_MAPPING_NAMES.items() if cls == name), None)
    return None


def family_of_processor(processing_class: Any) -> ModelFamily | None:
    """The family of a processor (recognised by its class or a base class), None for a text tokenizer.

    Raises:
        UnsupportedModelError: a processor with an image processor that no registered family recognises.
    """
    if not hasattr(processing_class, "image_processor"):
        return None
    for klass in type(processing_class).__mro__:
        model_type = model_type_from_class_name(klass.__name__)
        if model_type is not None:
            return get_family(model_type)
    raise UnsupportedModelError(
        f"processor {type(processing_class).__name__} belongs to no model family of trl_vlprm nor to a model type "
        f"transformers names; supported "
        f"vision-language model types: {supported_families_text()}"
    )


def family_of_model(model: Any) -> ModelFamily | None:
    """The family of a model (or config) by its `model_type`, None for a text-only model."""
    config = getattr(model, "config", model)
    return find_family(getattr(config, "model_type", None))
