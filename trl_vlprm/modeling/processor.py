"""Processors for Qwen-VL backbones that work without torchvision.

transformers 5.x makes the Qwen-VL processors require a video processor, and every video processor needs
torchvision, which cannot be installed beside a CPU torch here. A PRM only ever reads images, so these
subclasses drop the video slot. They save under the upstream class name, so a saved folder loads with
`AutoProcessor` on machines where torchvision exists, and with `load_processor` everywhere.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer, PreTrainedTokenizerBase, ProcessorMixin
from transformers.models.qwen2_5_vl.processing_qwen2_5_vl import Qwen2_5_VLProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.models.qwen2_vl.processing_qwen2_vl import Qwen2VLProcessor

from trl_vlprm.modeling.hub import ModelName, model_file, read_model_json, require_model

_PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json")


class _ImageOnlyMixin:
    """Removes the video processor from a Qwen-VL processor and saves under the upstream class name."""

    upstream_name: str

    def save_pretrained(self, save_directory, *args, **kwargs):
        saved = super().save_pretrained(save_directory, *args, **kwargs)
        for name in _PROCESSOR_FILES:
            path = Path(save_directory) / name
            if path.exists():
                config = json.loads(path.read_text())
                if config.get("processor_class") == type(self).__name__:
                    config["processor_class"] = self.upstream_name
                    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        return saved


class ImageOnlyQwen2VLProcessor(_ImageOnlyMixin, Qwen2VLProcessor):
    """`Qwen2VLProcessor` without the video processor (no torchvision needed)."""

    upstream_name = "Qwen2VLProcessor"

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


class ImageOnlyQwen2_5_VLProcessor(_ImageOnlyMixin, Qwen2_5_VLProcessor):
    """`Qwen2_5_VLProcessor` without the video processor (no torchvision needed)."""

    upstream_name = "Qwen2_5_VLProcessor"

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


IMAGE_ONLY_PROCESSORS: dict[str, type[ProcessorMixin]] = {
    "qwen2_vl": ImageOnlyQwen2VLProcessor,
    "qwen2_5_vl": ImageOnlyQwen2_5_VLProcessor,
}


SUPPORTED_VL_MODEL_TYPES = tuple(IMAGE_ONLY_PROCESSORS)
# Upstream checkpoints name their processing classes; the model type they belong to.
_CLASS_PREFIXES = {"Qwen2_5_VL": "qwen2_5_vl", "Qwen2VL": "qwen2_vl"}


class UnsupportedModelError(ValueError):
    """A model this library cannot read images with (its type has no image-only processor here)."""


def _from_class_name(name: str | None) -> str | None:
    for prefix, model_type in _CLASS_PREFIXES.items():
        if name and name.startswith(prefix):
            return model_type
    return None


def read_model_type(name_or_path: ModelName, revision: str | None = None) -> str | None:
    """The model type of a folder or repo id: `config.json`'s `model_type`, else the saved processor's class."""
    config = read_model_json(name_or_path, "config.json", revision)
    if config is not None and config.get("model_type"):
        return config["model_type"]
    for name in _PROCESSOR_FILES:
        saved = read_model_json(name_or_path, name, revision) or {}
        model_type = _from_class_name(saved.get("processor_class"))
        if model_type:
            return model_type
    return None


def unsupported_model_message(model_type: str | None, source: Any) -> str:
    return (
        f"{source}: model type {model_type!r} has no image processor in trl_vlprm, so it cannot read images; "
        f"supported vision-language model types: {', '.join(SUPPORTED_VL_MODEL_TYPES)} (text-only models work "
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
) -> ProcessorMixin:
    """An image-only processor for `model_type` ("qwen2_vl" or "qwen2_5_vl") around `tokenizer`."""
    if model_type not in IMAGE_ONLY_PROCESSORS:
        known = list(IMAGE_ONLY_PROCESSORS)
        raise ValueError(f"no image-only processor for model type {model_type!r}; known: {known}")
    image_kwargs = {k: v for k, v in {"min_pixels": min_pixels, "max_pixels": max_pixels}.items() if v is not None}
    image_processor = Qwen2VLImageProcessorPil(**image_kwargs)
    return IMAGE_ONLY_PROCESSORS[model_type](
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=chat_template or tokenizer.chat_template,
    )


def load_processor(
    name_or_path: ModelName,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    revision: str | None = None,
) -> ProcessorMixin | PreTrainedTokenizerBase:
    """Load the processing class of a model folder or Hub repo id.

    A Qwen2-VL / Qwen2.5-VL model gives an image-only processor (no torchvision needed), read alike from an upstream
    checkpoint (`preprocessor_config.json` of type `Qwen2VLImageProcessor` / `Qwen2_5_VLImageProcessor` with its
    `min_pixels` / `max_pixels`, `chat_template.json`) and from a folder this project saved. A model without an
    image processor gives its tokenizer, so text-only PRMs work unchanged.

    Args:
        name_or_path: a local model folder or a Hub repo id (resolved as transformers does: cache, `HF_HOME`,
            `HF_HUB_OFFLINE`).
        min_pixels: override the image processor's minimum image area (pixels).
        max_pixels: override the image processor's maximum image area (pixels); bounds image tokens per image.
        revision: branch, tag or commit of a repo id.

    Raises:
        UnsupportedModelError: the model has an image processor but its type is not one this library supports.
    """
    require_model(name_or_path, revision)  # first: names the model if it cannot be found
    model_type = read_model_type(name_or_path, revision)
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, revision=revision)
    image_config = _image_processor_config(name_or_path, revision)
    if model_type not in IMAGE_ONLY_PROCESSORS:
        if image_config is not None:
            raise UnsupportedModelError(unsupported_model_message(model_type, name_or_path))
        return tokenizer
    if image_config is None:
        raise OSError(f"{name_or_path}: a {model_type} model with no saved image processor")
    image_processor = Qwen2VLImageProcessorPil(**_image_processor_kwargs(image_config))
    if min_pixels is not None:
        image_processor.size["shortest_edge"] = min_pixels
        image_processor.min_pixels = min_pixels
    if max_pixels is not None:
        image_processor.size["longest_edge"] = max_pixels
        image_processor.max_pixels = max_pixels
    return IMAGE_ONLY_PROCESSORS[model_type](
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=_chat_template(name_or_path, revision) or tokenizer.chat_template,
    )


def _image_processor_config(name_or_path: ModelName, revision: str | None) -> dict[str, Any] | None:
    """The saved image processor settings: `preprocessor_config.json` (upstream checkpoints, transformers 4), else
    the `image_processor` entry of `processor_config.json` (where transformers 5 nests it)."""
    config = read_model_json(name_or_path, "preprocessor_config.json", revision)
    if config is not None:
        return config
    return (read_model_json(name_or_path, "processor_config.json", revision) or {}).get("image_processor")


def _image_processor_kwargs(config: dict[str, Any]) -> dict[str, Any]:
    """Constructor arguments of the PIL image processor from a saved `preprocessor_config.json`.

    Upstream Qwen-VL checkpoints give `min_pixels` / `max_pixels` at the top level (older ones inside `size`);
    transformers 5 saves `size: {shortest_edge, longest_edge}`. All three land in the same `size`.
    """
    kwargs = {k: v for k, v in config.items() if k not in ("image_processor_type", "processor_class", "auto_map")}
    size = dict(kwargs.pop("size", None) or {})
    for old, new in (("min_pixels", "shortest_edge"), ("max_pixels", "longest_edge")):
        if old in size:
            size[new] = size.pop(old)
    if size:
        kwargs["size"] = size
    return kwargs


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
