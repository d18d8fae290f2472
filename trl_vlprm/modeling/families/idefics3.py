"""Idefics3 and SmolVLM: an image split into a grid of tiles plus a global view, each tile's tokens introduced by
`<fake_token_around_image><row_i_col_j>`, the global view by `<global-img>`.

The expansion of an image's placeholder depends on the grid its image processor picks for the image's size, so it is
built the way the processor builds it (`replace_image_token` on the image processor's rows and columns), and counted
by the processor's own `_get_num_multimodal_tokens` (tiles + 1 global view, `image_seq_len` tokens each). Everything
else is the LLaVA-style adapter's: 1-D positions, no multimodal token types, the vision tower under `vision_model`
(the `connector` projecting into the language model lies outside it and trains).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import SimpleNamespace
from typing import Any

from transformers import PreTrainedTokenizerBase, ProcessorMixin

from trl_vlprm.modeling.families.base import register_model_family
from trl_vlprm.modeling.families.llava import LlavaStyleFamily, expand_as_the_processor_does


@register_model_family
class Idefics3Family(LlavaStyleFamily):
    """Idefics3 and SmolVLM."""

    name = "idefics3"
    model_types = ("idefics3", "smolvlm")
    class_name_prefixes = {"Idefics3": "idefics3", "SmolVLM": "smolvlm"}
    vision_marker_tokens = ("<fake_token_around_image>", "<global-img>")
    vision_tower_description = "vision tower (`vision_model`)"
    # vLLM's Idefics3 keeps `lm_head` beside `model.text_model`, where its generative-to-classifier conversion does not
    # look (the rows it reads would be uninitialised: scores of NaN); a two-row view serves it instead.
    vllm_reads_lm_head_rows = False

    def processor(
        self,
        tokenizer: PreTrainedTokenizerBase,
        image_processor: Any,
        chat_template: str | None,
        processor_kwargs: Mapping[str, Any] | None = None,
    ) -> ProcessorMixin:
        processor = super().processor(tokenizer, image_processor, chat_template, processor_kwargs)
        if self.model_type == "smolvlm":
            # SmolVLM's apply_chat_template reads the video processor's frame settings even for a conversation
            # without videos; the image-only processor has none, so it gets a stand-in holding no settings (they
            # only ever reach video inputs, which a PRM never has). Not saved: the signature lacks the slot.
            processor.video_processor = SimpleNamespace(num_frames=None, fps=None)
        return processor

    def vision_token_ids(self, processing_class: Any) -> set[int]:
        # the tile markers `<row_i_col_j>` too: a step holding one would be read as part of an image
        tokenizer = processing_class.tokenizer
        tiles = {
            token_id for token_id in getattr(processing_class, "row_col_ids", ()) if token_id != tokenizer.unk_token_id
        }
        return super().vision_token_ids(processing_class) | (tiles - {None})

    def expand_image_tokens(self, processing_class: Any, text: str, images: Sequence[Any], row: Any = "?") -> str:
        return expand_as_the_processor_does(processing_class, text, images, row, return_row_col_info=True)
