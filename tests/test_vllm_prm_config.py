"""What the vLLM scorers accept, checked without an engine: repo ids, recorded heads, and only layouts they encode."""

import json
import shutil

import pytest

from trl_vlprm.guidance.vllm_scorer import vllm_prm_config
from trl_vlprm.modeling.heads import MissingPRMMetadataError


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


def test_layouts_the_vllm_encoding_cannot_build_are_refused(tiny_qwen2_vl_path, tmp_path):
    steps = _copy_with_config(tiny_qwen2_vl_path, tmp_path / "steps", prm_head="value", prm_layout="steps")
    assert vllm_prm_config(steps)[2] == "value"
    multi_turn = _copy_with_config(tiny_qwen2_vl_path, tmp_path / "mt", prm_head="generative", prm_layout="multi_turn")
    with pytest.raises(NotImplementedError, match="layout 'multi_turn' is not supported by the vLLM scorers"):
        vllm_prm_config(multi_turn)
    with pytest.raises(ValueError, match="head must be one of"):
        vllm_prm_config(steps, head="linear")


def test_a_prm_is_found_by_repo_id_in_the_offline_cache(tiny_hub):
    folder, config, head = vllm_prm_config("ob11/Qwen-VL-PRM-7B")
    assert "models--ob11--Qwen-VL-PRM-7B" in str(folder) and (folder / "config.json").is_file()
    assert head == config["prm_head"]
