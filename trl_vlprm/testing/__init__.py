"""Helpers to test code built on trl_vlprm, offline, on a CPU (as `transformers.testing_utils` serves transformers).

- Tiny random models of every supported model family (`build_tiny_vlm`, `tiny_vlm_config`, `build_tiny_tokenizer`),
  a tiny text-only PRM (`build_tiny_text_prm`) and a tiny generative-head PRM saved as `VLPRMTrainer` saves one
  (`build_tiny_prm`): real transformers classes with shrunk configs, a byte-level BPE tokenizer trained on a little
  text and an image-only processor, written in a few seconds. `python -m trl_vlprm.testing.tiny OUT --arch qwen2_vl`
  writes one from the shell.
- A Hugging Face hub cache laid out as a download leaves it (`save_to_hub_cache`, `write_upstream_layout`,
  `build_tiny_hub`), and `offline_hub`, which points this process and its subprocesses at it with `HF_HUB_OFFLINE=1`,
  so code that takes a repo id is tested by repo id.
- The per-family recipe of each tiny model (`TinySpec`, registered with `register_tiny` in `tiny_models/<family>.py`).
- `warm_up_vision_tower`: a stand-in for a pretrained vision tower, trained in seconds on rendered images to tell
  which colours each holds (`vision_warmup.py`), so a tiny PRM on top of it can learn to read the image.

What is here and what stays in `trl_vlprm.modeling`: the modeling stage holds what loads and runs a real checkpoint
(family adapters, processors, heads), which every pipeline stage needs. Making a stand-in checkpoint (training a
tokenizer, shrinking a config, faking a hub download) serves only tests, benchmarks and the CPU demo, so it lives
here, above the pipeline in tests/test_layering.py: no trainer, guidance, labelling or evaluation module may import
it. `trl_vlprm.cpu_recipe` (the demo's VL-PRM that learns on a CPU) is such a user: it trains a tiny model from this
package, and sits at the top stage beside the demo.

Example (pytest):

    from trl_vlprm.testing import build_tiny_hub, build_tiny_vlm, offline_hub

    def test_my_scorer(tmp_path):
        folder = build_tiny_vlm(tmp_path / "model", arch="qwen2_5_vl", seed=0)
        ...
        build_tiny_hub(tmp_path / "hf" / "hub")
        with offline_hub(tmp_path / "hf"):
            ...  # "Qwen/Qwen2.5-VL-3B-Instruct" and "ob11/Qwen-VL-PRM-7B" load by id

Exports load lazily (they import torch and transformers).
"""

from trl_vlprm.utils.lazy import lazy_getattr

_EXPORTS = {
    "DEFAULT_ARCH": ".tiny",
    "build_tiny_tokenizer": ".tiny",
    "tiny_vlm_config": ".tiny",
    "build_tiny_vlm": ".tiny",
    "build_tiny_text_prm": ".tiny",
    "build_tiny_prm": ".tiny_hub",
    "save_to_hub_cache": ".tiny_hub",
    "write_upstream_layout": ".tiny_hub",
    "build_tiny_hub": ".tiny_hub",
    "offline_hub": ".tiny_hub",
    "TINY_HUB_BASE_MODELS": ".tiny_hub",
    "TINY_HUB_PRMS": ".tiny_hub",
    "TinySpec": ".tiny_models",
    "TINY_SPECS": ".tiny_models",
    "get_tiny_spec": ".tiny_models",
    "register_tiny": ".tiny_models",
    "warm_up_vision_tower": ".vision_warmup",
    "VisionWarmup": ".vision_warmup",
}
__getattr__ = lazy_getattr(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
