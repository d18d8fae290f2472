"""Tiny model factory, image-only processors, PRM heads and their loading checks."""

import json
import re

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import AutoModelForImageTextToText

from trl_vlprm.modeling.families.qwen_vl import ImageOnlyQwen2VLProcessor
from trl_vlprm.modeling.heads import (
    BackboneNotLoadedError,
    correct_probability,
    load_prm,
    prm_token_ids,
    step_logits,
    value_head_class,
)
from trl_vlprm.modeling.processor import get_tokenizer, load_processor
from trl_vlprm.testing import build_tiny_text_prm, build_tiny_tokenizer, build_tiny_vlm

ARCHS = {arch: value_head_class(arch) for arch in ("qwen2_vl", "qwen2_5_vl")}


@pytest.fixture(scope="module", params=list(ARCHS))
def tiny(request, tmp_path_factory):
    return request.param, build_tiny_vlm(tmp_path_factory.mktemp(request.param) / "model", arch=request.param)


def test_tiny_factory_is_deterministic_and_small(tmp_path):
    first = load_file(build_tiny_vlm(tmp_path / "a", seed=3) / "model.safetensors")
    second = load_file(build_tiny_vlm(tmp_path / "b", seed=3) / "model.safetensors")
    other = load_file(build_tiny_vlm(tmp_path / "c", seed=4) / "model.safetensors")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)
    assert sum(t.numel() for t in first.values()) < 400_000


def test_processor_saves_under_upstream_name_and_reloads(tiny):
    arch, path = tiny
    upstream = {"qwen2_vl": "Qwen2VLProcessor", "qwen2_5_vl": "Qwen2_5_VLProcessor"}[arch]
    assert json.loads((path / "processor_config.json").read_text())["processor_class"] == upstream
    processor = load_processor(path)
    encoded = processor(
        text=["<|vision_start|><|image_pad|><|vision_end|>hi"],
        images=[Image.new("RGB", (112, 112))],
        return_tensors="pt",
    )
    assert encoded["image_grid_thw"].tolist() == [[1, 8, 8]]
    assert int((encoded["input_ids"] == processor.image_token_id).sum()) == 16
    assert int(encoded["mm_token_type_ids"].sum()) == 16


def test_processor_pixel_overrides_change_image_tokens(tiny):
    _, path = tiny
    processor = load_processor(path, max_pixels=56 * 56)
    grid = processor.image_processor(images=[Image.new("RGB", (112, 112))])["image_grid_thw"]
    assert grid.tolist() == [[1, 4, 4]]


def test_text_folder_loads_a_tokenizer(tmp_path):
    processing_class = load_processor(build_tiny_text_prm(tmp_path / "text"))
    assert not hasattr(processing_class, "image_processor")
    assert get_tokenizer(processing_class) is processing_class


@pytest.mark.parametrize("head", ["value", "generative"])
def test_load_prm_loads_backbone_weights(tiny, head):
    arch, path = tiny
    base = AutoModelForImageTextToText.from_pretrained(path).state_dict()
    model = load_prm(path, head=head)
    if head == "value":
        assert isinstance(model, ARCHS[arch])
    state = model.state_dict()
    shared = [k for k in base if k in state]
    assert len(shared) == len(base) - (1 if head == "value" else 0)  # only lm_head is not part of a value PRM
    assert all(torch.equal(base[k], state[k]) for k in shared)


def test_value_head_from_hub_layout_keys(tiny, tmp_path):
    """Hub Qwen-VL checkpoints store `visual.*` and `model.layers.*`: the head class converts them."""
    _, path = tiny
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    for file in path.iterdir():
        if file.name != "model.safetensors":
            (legacy / file.name).write_bytes(file.read_bytes())
    base = AutoModelForImageTextToText.from_pretrained(path).state_dict()
    renamed = {re.sub(r"^model\.language_model\.", "model.", re.sub(r"^model\.visual\.", "visual.", k)): v
               for k, v in base.items()}  # fmt: skip
    save_file({k: v.contiguous() for k, v in renamed.items()}, str(legacy / "model.safetensors"), {"format": "pt"})
    state = load_prm(legacy, head="value").state_dict()
    assert all(torch.equal(base[k], state[k]) for k in base if k != "lm_head.weight")


def test_missing_backbone_tensor_is_an_error(tiny, tmp_path):
    _, path = tiny
    broken = tmp_path / "broken"
    broken.mkdir()
    for file in path.iterdir():
        (broken / file.name).write_bytes(file.read_bytes())
    tensors = load_file(str(path / "model.safetensors"))
    dropped = next(k for k in tensors if "layers.1.mlp" in k)
    del tensors[dropped]
    save_file(tensors, str(broken / "model.safetensors"), {"format": "pt"})
    with pytest.raises(BackboneNotLoadedError, match="1 backbone tensor"):
        load_prm(broken, head="value")


def test_prm_token_ids_and_step_probabilities():
    tokenizer = build_tiny_tokenizer()
    positive, negative = prm_token_ids(tokenizer)
    assert tokenizer.decode([positive]) == "+" and tokenizer.decode([negative]) == "-"
    logits = torch.zeros(1, 2, len(tokenizer))
    logits[0, 0, positive], logits[0, 1, negative] = 2.0, 2.0
    probabilities = correct_probability(step_logits(logits, "generative", (positive, negative)))
    expected = torch.sigmoid(torch.tensor([2.0, -2.0]))
    torch.testing.assert_close(probabilities[0], expected)
    torch.testing.assert_close(correct_probability(torch.tensor([[0.0]])), torch.tensor([0.5]))


def test_image_only_processor_has_no_video_slot():
    assert "video_processor" not in ImageOnlyQwen2VLProcessor.get_attributes()
