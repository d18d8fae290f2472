"""LLaVA-style models: a processor that expands one image token per image, a model taking `pixel_values` (and, for
LLaVA-NeXT / OneVision, `image_sizes`) and reading plain 1-D positions.

Registered for LLaVA, LLaVA-NeXT, LLaVA-OneVision and Mistral 3, and the **generic adapter** of any other
vision-language model transformers ships that fits the same shape: `get_family` hands a model type no family
registers to `generic_family`, which serves it when transformers has its processor (with an `image_token`), a PIL
image processor (no torchvision), an image-text-to-text class taking `pixel_values` and no multi-axis rope, and
otherwise raises `UnsupportedModelError` naming what is missing.

Everything comes from transformers' own classes of the model type: the image processor (its PIL variant), the
processor (without its video slot), and the image-token count of an image of a given size
(`processor._get_num_multimodal_tokens`, computed without pixels, as vLLM does). Positions are 1-D, so a shared
prefix is exact: the defaults of `ModelFamily` apply.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any, ClassVar

from transformers import PreTrainedTokenizerBase, ProcessorMixin

from trl_vlprm.modeling.families.base import (
    MODEL_FAMILIES,
    ModelFamily,
    UnsupportedModelError,
    register_model_family,
    set_generic_family,
    supported_families_text,
)
from trl_vlprm.modeling.families.image_only import image_only_processor_class

logger = logging.getLogger(__name__)

_SAVED_ONLY = ("image_processor_type", "processor_class", "auto_map", "_processor_class")


def _transformers_class(name: str, what: str, model_type: str) -> type:
    """A transformers class by name, or `UnsupportedModelError` saying why it cannot be imported here."""
    import transformers

    try:
        found = getattr(transformers, name)
        backends = list(getattr(found, "_backends", None) or [])  # a placeholder for a class whose backend is missing
        if type(found).__name__ == "DummyObject":
            raise ImportError(f"missing backend(s): {', '.join(backends)}")
    except (ImportError, AttributeError) as err:
        missing = "torchvision, which this machine cannot install" if "torchvision" in str(err).lower() else str(err)
        raise UnsupportedModelError(f"model type {model_type!r}: its {what} {name} needs {missing}") from err
    return found


def _processor_class(model_type: str) -> type[ProcessorMixin]:
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    name = PROCESSOR_MAPPING_NAMES.get(model_type)
    if name is None:
        raise UnsupportedModelError(f"model type {model_type!r}: transformers names no processor for it")
    return _transformers_class(name, "processor", model_type)


def _pil_image_processor_class(model_type: str) -> type:
    from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING_NAMES

    names = IMAGE_PROCESSOR_MAPPING_NAMES.get(model_type) or {}
    if "pil" not in names:
        found = ", ".join(f"{backend}: {name}" for backend, name in names.items()) or "none"
        raise UnsupportedModelError(
            f"model type {model_type!r}: no PIL image processor (transformers has {found}; the torchvision one needs "
            "torchvision, which this machine cannot install)"
        )
    return _transformers_class(names["pil"], "image processor", model_type)


class LlavaStyleFamily(ModelFamily):
    """The shared adapter of LLaVA-style model types (see the module docstring)."""

    token_types_input = None  # LLaVA-style models read no per-token multimodal types
    vision_tower_description = "vision tower (`vision_tower`)"
    _warned_pixels: ClassVar[set[str]] = set()

    # ---- processing

    def image_processor(
        self, saved: Mapping[str, Any] | None = None, min_pixels: int | None = None, max_pixels: int | None = None
    ) -> Any:
        if (min_pixels is not None or max_pixels is not None) and self.model_type not in self._warned_pixels:
            self._warned_pixels.add(self.model_type)
            logger.warning(
                "model type %s resizes images to the sizes its image processor's settings give; min_pixels / "
                "max_pixels (pixel bounds of the Qwen-VL image processors) do not apply and are not used",
                self.model_type,
            )
        settings = {k: v for k, v in (saved or {}).items() if k not in _SAVED_ONLY}
        return _pil_image_processor_class(self.model_type)(**settings)

    def processor(
        self,
        tokenizer: PreTrainedTokenizerBase,
        image_processor: Any,
        chat_template: str | None,
        processor_kwargs: Mapping[str, Any] | None = None,
    ) -> ProcessorMixin:
        processor_class = image_only_processor_class(_processor_class(self.model_type))
        accepted = inspect.signature(_processor_class(self.model_type).__init__).parameters
        kwargs = {k: v for k, v in (processor_kwargs or {}).items() if k in accepted}
        try:
            return processor_class(
                image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template, **kwargs
            )
        except ImportError as err:  # e.g. SmolVLM's processor needs the num2words package
            raise UnsupportedModelError(
                f"model type {self.model_type!r}: its processor needs a package: {err}"
            ) from err

    # ---- encoding

    def image_token_counts(self, processing_class: Any, images: Sequence[Any], row: Any = "?") -> list[int]:
        sizes = [[image.size[1], image.size[0]] for image in images]  # (height, width)
        return list(processing_class._get_num_multimodal_tokens(image_sizes=sizes).num_image_tokens)


def expand_as_the_processor_does(
    processing_class: Any, text: str, images: Sequence[Any], row: Any = "?", **image_kwargs: Any
) -> str:
    """`text` with each `image_token` placeholder replaced by what the processor puts there for that image
    (`replace_image_token` on the image processor's output for `images`): for processors whose expansion depends on
    the image beyond a token count (Idefics3's tile grid, InternVL's tiles framed by `<img>` / `</img>`).

    Raises:
        RecordError: the number of placeholders differs from the number of images (naming `row`).
    """
    from trl_vlprm.data.schema import RecordError

    pieces = text.split(processing_class.image_token)
    if len(pieces) - 1 != len(images):
        raise RecordError(
            row, "images", f"{len(images)} image(s) but {len(pieces) - 1} image slot(s) after the chat template"
        )
    if not images:
        return text
    layout = processing_class.image_processor(images=list(images), **image_kwargs)
    return pieces[0] + "".join(
        processing_class.replace_image_token(layout, i) + piece for i, piece in enumerate(pieces[1:])
    )


@register_model_family
class LlavaFamily(LlavaStyleFamily):
    """LLaVA, LLaVA-NeXT (`image_sizes`, any-resolution tiles), LLaVA-OneVision and Mistral 3 (Pixtral vision)."""

    name = "llava"
    model_types = ("llava", "llava_next", "llava_onevision", "mistral3")
    class_name_prefixes = {
        "LlavaOnevision": "llava_onevision",
        "LlavaNext": "llava_next",
        "Llava": "llava",
        "Pixtral": "mistral3",
    }


@cache
def _generic_class(model_type: str) -> type[LlavaStyleFamily]:
    return type(
        f"Generic_{model_type}_Family",
        (LlavaStyleFamily,),
        {"name": f"generic ({model_type})", "model_types": (model_type,), "__module__": __name__},
    )


def generic_family(model_type: str) -> LlavaStyleFamily | None:
    """The generic LLaVA-style adapter of `model_type`, None for a model type that is no vision-language model.

    Raises:
        UnsupportedModelError: a vision-language model the adapter cannot serve, naming every missing piece.
    """
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    if model_type in MODEL_FAMILIES or model_type not in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        return None
    missing = []
    for check in (_processor_class, _pil_image_processor_class):
        try:
            processor_class = check(model_type)
        except UnsupportedModelError as err:
            missing.append(str(err).split(": ", 1)[1])
        else:
            if (
                check is _processor_class
                and "image_token" not in inspect.signature(processor_class.__init__).parameters
            ):
                missing.append(f"its processor {processor_class.__name__} takes no image_token (one token per image)")
    model_class = _transformers_class(
        MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES[model_type], "model class", model_type
    )
    if "pixel_values" not in inspect.signature(model_class.forward).parameters:
        missing.append(f"{model_class.__name__}.forward takes no pixel_values")
    if any(hasattr(klass, "get_rope_index") for klass in _base_model_classes(model_class)):
        missing.append("its positions are not 1-D (the model computes multi-axis rope positions, get_rope_index)")
    if missing:
        raise UnsupportedModelError(
            f"model type {model_type!r} belongs to no model family of trl_vlprm and the generic LLaVA-style adapter "
            f"cannot serve it: {'; '.join(missing)}. Supported vision-language model types: "
            f"{supported_families_text()}, and LLaVA-style models transformers ships"
        )
    return _generic_class(model_type)(model_type)


def _base_model_classes(model_class: type) -> list[type]:
    """`model_class` and its base model class (transformers' `<Prefix>Model` beside `<Prefix>ForConditionalGeneration`
    in the same module), found without building either."""
    import sys

    module = sys.modules[model_class.__module__]
    base = getattr(module, model_class.__name__.split("For")[0] + "Model", None)
    return [model_class] if base is None else [model_class, base]


set_generic_family(generic_family)
