"""What differs between the transformers releases the project supports (5.19, pinned by vLLM 0.32, to the current 5.x).

The key/value cache is the `cache` keyword and output field from transformers 5.2x on; `past_key_values` (and
`cache_params`) still work there but warn, and are removed in 5.40. Earlier releases know only `past_key_values`.
"""

from __future__ import annotations

import inspect
from typing import Any

from transformers import Qwen2Model

# Read from a model class every supported release ships, so the choice follows the installed version.
CACHE_KEYWORD = "cache" if "cache" in inspect.signature(Qwen2Model.forward).parameters else "past_key_values"


def output_cache(outputs: Any) -> Any:
    """The key/value cache a forward with `use_cache=True` returned, under the installed version's name."""
    return outputs[CACHE_KEYWORD]
