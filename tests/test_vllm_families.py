"""The model families vLLM 0.32 runs on this CPU (vLLM venv, transformers 5.19): only Idefics3 of the families added
for issue 21. Qwen3-VL / Qwen3.5 stop at vLLM building the video processor, LLaVA / LLaVA-NeXT / Gemma 3 / InternVL
at vLLM's model modules importing torchvision (docs/models.md, "vLLM"); no test pretends otherwise.
"""

import gc

import pytest
from PIL import Image

from trl_vlprm.guidance.vllm_policy import VLLMPolicy
from trl_vlprm.testing import build_tiny_vlm

ENGINE_KWARGS = {"enforce_eager": True, "gpu_memory_utilization": 0.05, "kv_cache_memory_bytes": 32 << 20,
                 "max_num_seqs": 8, "seed": 0}  # fmt: skip


@pytest.mark.vllm
def test_vllm_policy_on_idefics3(tmp_path, monkeypatch):
    """A real vLLM engine on a tiny Idefics3 (tiles with row/column markers): steps stop at the separator, the image
    is expanded by vLLM's own Idefics3 processing, the token budget holds and the stats count what was generated."""
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # engine in this process
    path = build_tiny_vlm(tmp_path / "idefics3", arch="idefics3", hidden_size=128)
    policy = VLLMPolicy.from_pretrained(
        str(path), max_model_len=512, dtype="float32", llm_kwargs=ENGINE_KWARGS, seed=0, temperature=1.0,
        max_step_tokens=8, max_new_tokens=16, step_separator=" ",
    )  # fmt: skip
    question = {"id": "q1", "prompt": "<image>How many circles?", "images": [Image.new("RGB", (100, 90), "red")]}
    steps = policy.sample_next_steps(question, ["First"], 3)
    assert len(steps) == 3 and all(len(c.steps) <= 1 and 0 < c.num_tokens <= 8 for c in steps)
    solutions = policy.sample_solutions(question, 2)
    assert len(solutions) == 2 and all(0 < s.num_tokens <= 16 for s in solutions)
    assert policy.stats.calls == 2 and policy.stats.sequences == 5
    del policy
    gc.collect()
