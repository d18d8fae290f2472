"""What the vLLM scorers accept, checked without an engine: repo ids, recorded heads, presets, every layout."""

import json
import shutil

import pytest

from trl_vlprm.guidance.vllm_scorer import vllm_prm_config, vllm_prm_layout
from trl_vlprm.modeling.encoding import PRMLayout
from trl_vlprm.modeling.heads import MissingPRMMetadataError
from trl_vlprm.modeling.presets import get_preset


def _copy_with_config(source, target, **fields):
    shutil.copytree(source, target)
    config = json.loads((target / "config.json").read_text())
    config.update(fields)
    (target / "config.json").write_text(json.dumps(config))
    return target


def test_a_checkpoint_without_a_recorded_head_is_refused_not_given_a_random_value_head(tiny_qwen2_vl_path):
    with pytest.raises(MissingPRMMetadataError, match="records no prm_head.*head='value'"):
        vllm_prm_config(tiny_qwen2_vl_path)
    folder, config, head = vllm_prm_config(tiny_qwen2_vl_path, head="generative")
    assert folder == tiny_qwen2_vl_path and head == "generative" and config["model_type"] == "qwen2_vl"


def test_every_layout_is_read_from_the_checkpoint(tiny_qwen2_vl_path, tmp_path):
    steps = _copy_with_config(tiny_qwen2_vl_path, tmp_path / "steps", prm_head="value", prm_layout="steps")
    folder, config, head = vllm_prm_config(steps)
    assert head == "value" and vllm_prm_layout(steps, config) == (PRMLayout(name="steps"), None)
    multi_turn = _copy_with_config(
        tiny_qwen2_vl_path, tmp_path / "mt", prm_head="generative", prm_layout="multi_turn", prm_system_prompt="Judge."
    )
    folder, config, head = vllm_prm_config(multi_turn)
    layout, preset = vllm_prm_layout(multi_turn, config)
    assert head == "generative" and layout.name == "multi_turn" and layout.system_prompt == "Judge." and preset is None
    with pytest.raises(ValueError, match="head must be one of"):
        vllm_prm_config(steps, head="linear")


def test_a_published_prm_without_metadata_is_read_through_its_preset(tiny_qwen2_vl_path, tmp_path):
    bare = _copy_with_config(tiny_qwen2_vl_path, tmp_path / "bare")
    folder, config, head = vllm_prm_config(bare, preset="ob11/Qwen-VL-PRM-7B")
    layout, preset = vllm_prm_layout(bare, config, preset="ob11/Qwen-VL-PRM-7B")
    assert head == "generative" and preset is get_preset("ob11/Qwen-VL-PRM-7B") and layout == preset.layout
    assert layout.name == "multi_turn" and preset.max_pixels == 1280 * 28 * 28


def test_a_prm_is_found_by_repo_id_in_the_offline_cache(tiny_hub):
    folder, config, head = vllm_prm_config("ob11/Qwen-VL-PRM-7B")
    assert "models--ob11--Qwen-VL-PRM-7B" in str(folder) and (folder / "config.json").is_file()
    assert head == config["prm_head"]
