"""TRL's former stepwise-supervision format (`"trl_stepwise"`): `{"prompt", "completions", "labels"}`, text only."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..schema import RecordError
from .base import CONVERTERS, OPTIONAL_FIELDS, require, schema_record


@CONVERTERS.register("trl_stepwise")
def from_trl_stepwise(record: Mapping[str, Any], row: int | str = "?") -> dict[str, Any]:
    """A record of TRL's former stepwise-supervision format (text only) as a schema record.

    Source layout: `{"prompt": str, "completions": list[str], "labels": list[bool]}`; `id`, `answer`, `options`
    and `category` are carried over when present. The result has no images and no step types.
    """
    prompt = require(record, "prompt", row)
    if not isinstance(prompt, str):
        raise RecordError(row, "prompt", f"must be a string, got {type(prompt).__name__}")
    completions = require(record, "completions", row)
    labels = require(record, "labels", row)
    optional = {name: record.get(name) for name in OPTIONAL_FIELDS}
    return schema_record(prompt, [], list(completions), list(labels), None, **optional)
