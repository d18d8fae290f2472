"""Converters from the process-supervision formats people already have to the record schema (`schema.py`).

Three source layouts are supported, each a converter in the `CONVERTERS` registry (see `docs/data_format.md` for each
one field by field):

- `"trl_stepwise"`: TRL's former stepwise-supervision format, `{"prompt", "completions", "labels"}`
  (e.g. `trl-lib/math_shepherd`, `trl-lib/prm800k`). Text only.
- `"vlprm300k"`: the VL-PRM300K records published with Ong et al. 2025 (`ob11/VL-PRM300K`): a judged rollout with
  per-step Monte Carlo scores and `conversations` whose `+`/`-` turns are the consensus step labels, split into a
  perception section (`[Visual Elements]`) and a `[Reasoning]` section.
- `"visualprm400k"`: VisualPRM400K raw records (`OpenGVLab/VisualPRM400K-v1.1-Raw`, InternVL's
  `visualprm_data_pieline.py` output): `image`, `question`, `answer`, `response`, `steps_with_score`, with the
  expected accuracy `score` of every step prefix.

Each `from_*` function turns one source record into one schema record and raises `RecordError` naming the row and
the source field when something is missing or malformed. `convert_dataset` maps one of them over a whole dataset;
a row the source itself got inconsistent (`SkippedRecord`: a VL-PRM300K `first_incorrect_step` that names no `-`
turn) is left out and listed in a `ConversionReport` instead of stopping the conversion.

Each format is one module of this package, named after it; `base.py` holds the registry, the helpers a converter
builds its record with, and `convert_records` / `convert_dataset`. The registry imports every module of the package
before its first lookup, so a new format is one more module that registers itself.
"""

from __future__ import annotations

from .base import (
    CONVERTERS,
    OPTIONAL_FIELDS,
    ConversionReport,
    SkippedRecord,
    convert_dataset,
    convert_records,
    with_image_placeholders,
)
from .trl_stepwise import from_trl_stepwise
from .visualprm400k import from_visualprm400k
from .vlprm300k import from_vlprm300k

__all__ = [
    "CONVERTERS",
    "OPTIONAL_FIELDS",
    "ConversionReport",
    "SkippedRecord",
    "convert_dataset",
    "convert_records",
    "from_trl_stepwise",
    "from_visualprm400k",
    "from_vlprm300k",
    "with_image_placeholders",
]
