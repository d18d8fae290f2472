"""Batch tokenized PRM rows: pad the text side, compute and concatenate the pixels of every image."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from trl_vlprm.data.schema import load_image
from trl_vlprm.modeling.families import family_of_processor
from trl_vlprm.modeling.processor import get_tokenizer
from trl_vlprm.trainer.tokenization import IGNORE_INDEX, STEP_TYPE_IDS

UNTYPED = STEP_TYPE_IDS[None]


def pad_right(sequences: Sequence[Sequence[Any]], value: float, dtype: torch.dtype) -> torch.Tensor:
    """Right-pad lists to one tensor [batch, longest]."""
    longest = max(len(s) for s in sequences)
    out = torch.full((len(sequences), longest), value, dtype=dtype)
    for i, s in enumerate(sequences):
        out[i, : len(s)] = torch.as_tensor(s, dtype=dtype)
    return out


def _step_type_ids(row: Mapping[str, Any]) -> list[int]:
    if row.get("step_type_ids") is not None:
        return row["step_type_ids"]
    return [IGNORE_INDEX if label == IGNORE_INDEX else UNTYPED for label in row["labels"]]


@dataclass
class DataCollatorForVLPRM:
    """Collate rows made by `tokenize_row`.

    Pads `input_ids` (pad token), `attention_mask`, `labels` and `step_type_ids` (-100), `label_weights` and
    `mm_token_type_ids` (0); the model family (`trl_vlprm.modeling.families`) turns the rows' images, in row order,
    into the model's image inputs. `mm_token_type_ids` must reach the model: without it a model with multimodal
    rope positions silently falls back to 1-D positions. Rows tokenized elsewhere (TRL's pretokenized `input_ids` +
    `labels` only) are untyped: their labelled positions get step type "untyped".

    Args:
        processing_class: the tokenizer or image-only processor used for tokenization.
    """

    processing_class: Any

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        tokenizer = get_tokenizer(self.processing_class)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        input_ids = [row["input_ids"] for row in rows]
        batch = {
            "input_ids": pad_right(input_ids, pad_id, torch.long),
            "attention_mask": pad_right([[1] * len(ids) for ids in input_ids], 0, torch.long),
            "labels": pad_right([row["labels"] for row in rows], IGNORE_INDEX, torch.float),
            "step_type_ids": pad_right([_step_type_ids(row) for row in rows], IGNORE_INDEX, torch.long),
        }
        if "label_weights" in rows[0]:
            batch["label_weights"] = pad_right([row["label_weights"] for row in rows], 0.0, torch.float)
        family = family_of_processor(self.processing_class)
        if family is None:
            return batch
        if family.token_types_input is not None:
            batch[family.token_types_input] = pad_right(
                [row.get("mm_token_type_ids") or [0] * len(row["input_ids"]) for row in rows], 0, torch.long
            )
        images = [
            load_image(image, row.get("id", i)) for i, row in enumerate(rows) for image in row.get("images") or []
        ]
        if images:
            batch.update(family.image_inputs(self.processing_class, images))
            expected = family.image_token_total(self.processing_class, images)
            found = int((batch["input_ids"] == family.image_token_id(self.processing_class)).sum())
            if expected != found:  # only if the image processor changed between tokenization and collation
                raise ValueError(
                    f"the batch has {found} image tokens but its images give {expected}: re-tokenize the dataset "
                    "with the current image processor settings (min_pixels/max_pixels)"
                )
        return batch
