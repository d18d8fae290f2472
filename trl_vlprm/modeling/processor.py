"""Processors for Qwen-VL backbones that work without torchvision.

transformers 5.x makes the Qwen-VL processors require a video processor, and every video processor needs
torchvision, which cannot be installed beside a CPU torch here. A PRM only ever reads images, so these
subclasses drop the video slot. They save under the upstream class name, so a saved folder loads with
`AutoProcessor` on machines where torchvision exists, and with `load_processor` everywhere.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase, ProcessorMixin
from transformers.models.qwen2_5_vl.processing_qwen2_5_vl import Qwen2_5_VLProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.models.qwen2_vl.processing_qwen2_vl import Qwen2VLProcessor

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


def _model_type(path: Path) -> str | None:
    config = path / "config.json"
    if config.exists():
        return json.loads(config.read_text()).get("model_type")
    for name in _PROCESSOR_FILES:
        if (path / name).exists():
            processor_class = json.loads((path / name).read_text()).get("processor_class", "")
            if processor_class.startswith("Qwen2_5_VL"):
                return "qwen2_5_vl"
            if processor_class.startswith("Qwen2VL"):
                return "qwen2_vl"
    return None


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
    path: str | Path, min_pixels: int | None = None, max_pixels: int | None = None
) -> ProcessorMixin | PreTrainedTokenizerBase:
    """Load the processing class saved in `path`.

    A Qwen2-VL / Qwen2.5-VL folder gives an image-only processor (no torchvision needed); any other folder gives its
    tokenizer, so text-only PRMs work unchanged.

    Args:
        path: a local model folder (the project never downloads: pass a path).
        min_pixels: override the image processor's minimum image area (pixels).
        max_pixels: override the image processor's maximum image area (pixels); bounds image tokens per image.
    """
    path = Path(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model_type = _model_type(path)
    if model_type not in IMAGE_ONLY_PROCESSORS:
        return tokenizer
    image_processor = Qwen2VLImageProcessorPil.from_pretrained(path)
    if min_pixels is not None:
        image_processor.size["shortest_edge"] = min_pixels
        image_processor.min_pixels = min_pixels
    if max_pixels is not None:
        image_processor.size["longest_edge"] = max_pixels
        image_processor.max_pixels = max_pixels
    chat_template = tokenizer.chat_template
    template_file = path / "chat_template.jinja"
    if template_file.exists():
        chat_template = template_file.read_text()
    return IMAGE_ONLY_PROCESSORS[model_type](
        image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template
    )


def get_tokenizer(processing_class: ProcessorMixin | PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """The tokenizer inside a processor, or the tokenizer itself."""
    return getattr(processing_class, "tokenizer", processing_class)
