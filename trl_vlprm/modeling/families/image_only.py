"""Processors without their video processor: every video processor needs torchvision, which cannot be installed beside
a CPU torch, and a PRM reads images only. `image_only_processor_class(UpstreamProcessor)` gives such a processor for
a family's `processor()`; it saves under the upstream class name, so a saved folder still loads with `AutoProcessor`
where torchvision exists."""

from __future__ import annotations

import inspect
import json
from functools import cache
from pathlib import Path

from transformers import ProcessorMixin

PROCESSOR_FILES = (  # where a saved processor records its class
    "processor_config.json",
    "preprocessor_config.json",
    "tokenizer_config.json",
)


class ImageOnlyProcessorMixin:
    """For a processor subclass without the video processor (which would need torchvision): saves under the upstream
    class name, with an empty video processor entry, so a saved folder still loads with `AutoProcessor` where
    torchvision exists (`tools/processor_parity.py` checks it)."""

    upstream_name: str

    def save_pretrained(self, save_directory, *args, **kwargs):
        saved = super().save_pretrained(save_directory, *args, **kwargs)
        for name in PROCESSOR_FILES:
            path = Path(save_directory) / name
            if path.exists():
                config = json.loads(path.read_text())
                if config.get("processor_class") == type(self).__name__:
                    config["processor_class"] = self.upstream_name
                    if name == "processor_config.json":
                        # The upstream processor demands a video processor. transformers reads this nested entry
                        # before any video_preprocessor_config.json; empty, it builds the model type's default one
                        # (without it: "OSError: Can't load video processor"). A PRM reads no videos.
                        config.setdefault("video_processor", {})
                    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        return saved


@cache
def image_only_processor_class(processor_class: type[ProcessorMixin]) -> type[ProcessorMixin]:
    """`processor_class` without its video processor slot (every video processor needs torchvision; a PRM reads
    images only), saving under the upstream name: `ImageOnly<Name>`. A processor with no video slot is returned as
    it is."""
    if "video_processor" not in inspect.signature(processor_class.__init__).parameters:
        return processor_class

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        processor_class.__init__(
            self, image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
            chat_template=chat_template, **kwargs,
        )  # fmt: skip

    # The signature transformers reads to know the processor's attributes and what to save: the upstream one
    # without the video slot (so settings such as LLaVA-OneVision's `num_image_tokens` are saved and reloaded).
    upstream = inspect.signature(processor_class.__init__)
    __init__.__signature__ = upstream.replace(
        parameters=[p for name, p in upstream.parameters.items() if name != "video_processor"]
    )
    return type(
        f"ImageOnly{processor_class.__name__}",
        (ImageOnlyProcessorMixin, processor_class),
        {"__init__": __init__, "upstream_name": processor_class.__name__, "__module__": __name__,
         "__doc__": f"`{processor_class.__name__}` without the video processor (no torchvision needed)."},
    )  # fmt: skip
