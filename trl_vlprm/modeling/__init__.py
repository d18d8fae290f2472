"""Modeling: PRM heads on vision-language backbones, model-family adapters, processors and model-folder helpers.
Tiny stand-in models for tests are in `trl_vlprm.testing`.
Exports load lazily (they import torch and transformers)."""

from trl_vlprm.utils.lazy import lazy_getattr

_EXPORTS = {
    "load_prm": ".heads",
    "load_processor": ".processor",
    "model_fingerprint": ".hub",
    "ModelFamily": ".families",
    "get_family": ".families",
}
__getattr__ = lazy_getattr(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
