"""Model-family adapters: one module per family of vision-language backbones (see `base.ModelFamily`).

Every module of this package is imported before the first lookup in `MODEL_FAMILIES` (`Registry(discover=...)`, as
backends and strategies are found), so a family registers itself (`@register_model_family`) just by being a file in
it: adding a family is one file plus its tests.
"""

from __future__ import annotations

from trl_vlprm.modeling.families.base import (
    MODEL_FAMILIES,
    ModelFamily,
    UnsupportedModelError,
    family_of_model,
    family_of_processor,
    find_family,
    get_family,
    model_type_from_class_name,
    register_model_family,
    supported_families_text,
    supported_model_types,
)
from trl_vlprm.modeling.families.image_only import ImageOnlyProcessorMixin, image_only_processor_class

__all__ = [
    "MODEL_FAMILIES",
    "ImageOnlyProcessorMixin",
    "ModelFamily",
    "UnsupportedModelError",
    "family_of_model",
    "family_of_processor",
    "find_family",
    "get_family",
    "image_only_processor_class",
    "model_type_from_class_name",
    "register_model_family",
    "supported_families_text",
    "supported_model_types",
]
