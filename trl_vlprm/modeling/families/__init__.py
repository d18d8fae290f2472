"""Model-family adapters: one module per family of vision-language backbones (see `base.ModelFamily`).

Every module of this package is imported here, so a family registers itself (`@register_model_family`) just by being a
file in it: adding a family is one file plus its tests.
"""

from __future__ import annotations

import importlib
import pkgutil

from trl_vlprm.modeling.families.base import (
    MODEL_FAMILIES,
    ImageOnlyProcessorMixin,
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

for _module in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "MODEL_FAMILIES",
    "ImageOnlyProcessorMixin",
    "ModelFamily",
    "UnsupportedModelError",
    "family_of_model",
    "family_of_processor",
    "find_family",
    "get_family",
    "model_type_from_class_name",
    "register_model_family",
    "supported_families_text",
    "supported_model_types",
]
