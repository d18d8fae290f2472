"""`trl_vlprm.testing`: the offline hub cache a user's test points at, and that it leaves nothing behind."""

from __future__ import annotations

import os

from huggingface_hub import constants
from transformers import AutoConfig

from trl_vlprm.testing import build_tiny_text_prm, offline_hub, save_to_hub_cache


def test_offline_hub_loads_by_repo_id_and_restores_the_settings(tmp_path, monkeypatch):
    home = tmp_path / "hf"
    save_to_hub_cache(build_tiny_text_prm(tmp_path / "prm", hidden_size=32), "org/tiny-prm", home / "hub")
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "elsewhere"))
    before = (constants.HF_HOME, constants.HF_HUB_CACHE, constants.HF_HUB_OFFLINE)

    with offline_hub(home):
        assert os.environ["HF_HUB_OFFLINE"] == "1"
        assert os.environ["HF_HUB_CACHE"] == str(home / "hub")
        config = AutoConfig.from_pretrained("org/tiny-prm")
        assert (config.model_type, config.hidden_size) == ("qwen2", 32)

    assert os.environ["HF_HOME"] == str(tmp_path / "elsewhere")
    assert "HF_HUB_CACHE" not in os.environ
    assert (constants.HF_HOME, constants.HF_HUB_CACHE, constants.HF_HUB_OFFLINE) == before
