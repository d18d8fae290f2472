"""The processing class of a model: an image-only processor for a vision-language model, its tokenizer otherwise.

transformers 5.x makes vision-language processors require a video processor, and every video processor needs
torchvision, which cannot be installed beside a CPU torch here. A PRM only ever reads images, so each model family
(`trl_vlprm.modeling.families`) gives a processor without the video slot, saved under the upstream class name: a saved
folder loads with `AutoProcessor` on machines where torchvision exists, and with `load_processor` everywhere.
"""

from __future__ import annotations

from typing import Any

from transformers import AutoTokenizer, PreTrainedTokenizerBase, ProcessorMixin

from trl_vlprm.modeling.families import (
    UnsupportedModelError,
    find_family,
    get_family,
    model_type_from_class_name,
    supported_families_text,
)
from trl_vlprm.modeling.families.image_only import PROCESSOR_FILES
from trl_vlprm.modeling.hub import ModelName, model_file, read_model_json, refuse_remote_code, require_model


class MissingImageProcessorError(ValueError):
    """A vision-language model folder (or repo) without its saved image processor settings."""


def read_model_type(name_or_path: ModelName, revision: str | None = None) -> str | None:
    """The model type of a folder or repo id: `config.json`'s `model_type`, else the saved processor's class."""
    config = read_model_json(name_or_path, "config.json", revision)
    if config is not None and config.get("model_type"):
        return config["model_type"]
    for name in PROCESSOR_FILES:
        saved = read_model_json(name_or_path, name, revision) or {}
        model_type = model_type_from_class_name(saved.get("processor_class"))
        if model_type:
            return model_type
    return None


def unsupported_model_message(model_type: str | None, source: Any) -> str:
    return (
        f"{source}: model type {model_type!r} belongs to no model family of trl_vlprm, so it cannot read images; "
        f"supported vision-language model types: {supported_families_text()} (text-only models of transformers work "
        "with text rows)"
    )


def require_image_support(processing_class: Any, model_type: str | None, source: Any) -> None:
    """Raise `UnsupportedModelError` (naming the model type) unless `processing_class` can read images."""
    if not hasattr(processing_class, "image_processor"):
        raise UnsupportedModelError(unsupported_model_message(model_type, source))


def build_processor(
    model_type: str,
    tokenizer: PreTrainedTokenizerBase,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    chat_template: str | None = None,
    image_processor_settings: dict[str, Any] | None = None,
    processor_kwargs: dict[str, Any] | None = None,
) -> ProcessorMixin:
    """An image-only processor of `model_type` (a model type of a registered family) around `tokenizer`.

    `image_processor_settings` are the image processor's (as a saved `preprocessor_config.json` holds them; default
    the family's defaults), `processor_kwargs` the processor's own (e.g. LLaVA's `patch_size`).

    Raises:
        UnsupportedModelError: no model family covers `model_type`.
    """
    family = get_family(model_type)
    image_processor = family.image_processor(image_processor_settings, min_pixels=min_pixels, max_pixels=max_pixels)
    return family.processor(tokenizer, image_processor, chat_template or tokenizer.chat_template, processor_kwargs)


def load_processor(
    name_or_path: ModelName,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    revision: str | None = None,
) -> ProcessorMixin | PreTrainedTokenizerBase:
    """Load the processing class of a model folder or Hub repo id.

    A model of a registered family (`trl_vlprm.modeling.families`) gives its image-only processor (no torchvision
    needed), read alike from an upstream checkpoint (`preprocessor_config.json` with the family's pixel bounds,
    `chat_template.json`) and from a folder this project saved. A model without an image processor gives its
    tokenizer, so text-only PRMs work unchanged.

    Args:
        name_or_path: a local model folder or a Hub repo id (resolved as transformers does: cache, `HF_HOME`,
            `HF_HUB_OFFLINE`).
        min_pixels: override the image processor's minimum image area (pixels).
        max_pixels: override the image processor's maximum image area (pixels); bounds image tokens per image.
        revision: branch, tag or commit of a repo id.

    Raises:
        UnsupportedModelError: the model has an image processor but no registered model family covers its type.
        MissingImageProcessorError: a model of a registered family whose image processor settings are not saved.
    """
    require_model(name_or_path, revision)  # first: names the model if it cannot be found
    refuse_remote_code(name_or_path, revision)
    model_type = read_model_type(name_or_path, revision)
    image_config = _image_processor_config(name_or_path, revision)
    family = find_family(model_type)
    # Before the tokenizer: transformers fails on an unknown or uncovered model with a message about tokenizers or
    # configs that names neither the model type nor what is supported.
    if family is None and (image_config is not None or not _known_to_transformers(model_type)):
        raise UnsupportedModelError(unsupported_model_message(model_type, name_or_path))
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, revision=revision)
    if family is None:
        return tokenizer
    if image_config is None:
        raise MissingImageProcessorError(
            f"{name_or_path}: a {model_type} model with no saved image processor (neither preprocessor_config.json "
            "nor an image_processor entry in processor_config.json); save the base model's processor there "
            "(`processor.save_pretrained(folder)`)"
        )
    image_processor = family.image_processor(image_config, min_pixels, max_pixels)
    chat_template = _chat_template(name_or_path, revision) or tokenizer.chat_template
    return family.processor(tokenizer, image_processor, chat_template, _processor_kwargs(name_or_path, revision))


def _known_to_transformers(model_type: str | None) -> bool:
    """Whether transformers has a config class for `model_type` (a text-only PRM needs nothing more)."""
    from transformers import CONFIG_MAPPING

    return model_type is not None and model_type in CONFIG_MAPPING


def _image_processor_config(name_or_path: ModelName, revision: str | None) -> dict[str, Any] | None:
    """The saved image processor settings: `preprocessor_config.json` (upstream checkpoints, transformers 4), else
    the `image_processor` entry of `processor_config.json` (where transformers 5 nests it)."""
    config = read_model_json(name_or_path, "preprocessor_config.json", revision)
    if config is not None:
        return config
    return (read_model_json(name_or_path, "processor_config.json", revision) or {}).get("image_processor")


# Entries of processor_config.json that are not the processor's own settings.
_NOT_PROCESSOR_KWARGS = {
    "image_processor",
    "video_processor",
    "feature_extractor",
    "processor_class",
    "auto_map",
    "chat_template",
}


def _processor_kwargs(name_or_path: ModelName, revision: str | None) -> dict[str, Any]:
    """The processor's own saved settings (e.g. LLaVA's `patch_size`, `vision_feature_select_strategy`)."""
    saved = read_model_json(name_or_path, "processor_config.json", revision) or {}
    return {key: value for key, value in saved.items() if key not in _NOT_PROCESSOR_KWARGS}


def _chat_template(name_or_path: ModelName, revision: str | None) -> str | None:
    """The processor's chat template as transformers looks for it: chat_template.jinja, then chat_template.json."""
    path = model_file(name_or_path, "chat_template.jinja", revision)
    if path is not None:
        return path.read_text()
    saved = read_model_json(name_or_path, "chat_template.json", revision)
    return saved.get("chat_template") if saved else None


def get_tokenizer(processing_class: ProcessorMixin | PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """The tokenizer inside a processor, or the tokenizer itself."""
    return getattr(processing_class, "tokenizer", processing_class)
