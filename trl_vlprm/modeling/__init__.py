"""Modeling: PRM heads on vision-language backbones, model-family adapters, processors, model-folder helpers and the
offline tiny models.
Exports load lazily (they import torch and transformers)."""

from trl_vlprm.utils.lazy import lazy_getattr

_EXPORTS = {
    "load_prm": ".heads",
    "load_processor": ".processor",
    "build_tiny_vlm": ".tiny",
    "build_tiny_text_prm": ".tiny",
    "model_fingerprint": ".hub",
    "ModelFamily": ".families",
    "get_family": ".families",
}
__getattr__ = lazy_getattr(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
