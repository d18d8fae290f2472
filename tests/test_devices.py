"""Where the transformers policy and the PRM scorer are placed: the one resolver (`trl_vlprm.modeling.devices`) and
the `device` argument of both `from_pretrained`s, of their specs and of the GRPO reward.

These machines have no GPU: the resolver's accelerator branches are checked with `torch.cuda.is_available` /
`device_count` (and mps/xpu availability) monkeypatched, the one thing here that cannot run for real. Models are
loaded for real, on the CPU.
"""

from pathlib import Path

import numpy as np
import pytest
import torch

from trl_vlprm.guidance.backends import build_policy, build_scorer
from trl_vlprm.guidance.hf_policy import HFPolicy
from trl_vlprm.guidance.policy import Candidate
from trl_vlprm.guidance.rewards import VLPRMReward
from trl_vlprm.guidance.scorer import PRMScorer
from trl_vlprm.modeling.devices import accelerator_device, inference_dtype, resolve_device
from trl_vlprm.modeling.heads import load_prm
from trl_vlprm.modeling.processor import load_processor
from trl_vlprm.testing import build_tiny_vlm

QUESTION = {"id": "q1", "prompt": "Which number is missing? 2, 4, ?, 8"}
CANDIDATES = [Candidate(steps=["The numbers grow by 2.", "So 6."]), Candidate(steps=["Guess 5."])]


@pytest.fixture
def gpus(monkeypatch):
    """A machine with `count` CUDA devices (0: none), and neither mps nor xpu."""

    def machine(count: int, local_rank: int | None = None):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
        if hasattr(torch, "xpu"):
            monkeypatch.setattr(torch.xpu, "is_available", lambda: False)
        monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
        if local_rank is None:
            monkeypatch.delenv("LOCAL_RANK", raising=False)
        else:
            monkeypatch.setenv("LOCAL_RANK", str(local_rank))

    return machine


@pytest.fixture(scope="module")
def prm_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("device_prm")
    base = build_tiny_vlm(folder / "base", arch="qwen2_vl", seed=3)
    model = load_prm(base, head="generative")
    model.save_pretrained(folder / "prm")
    load_processor(base).save_pretrained(folder / "prm")
    return folder


def test_auto_is_the_launchers_gpu(gpus):
    gpus(4, local_rank=2)  # rank 2 of a node with 4 GPUs, all visible (accelerate launch)
    assert resolve_device("auto") == resolve_device(None) == accelerator_device() == torch.device("cuda", 2)
    gpus(4)  # no launcher
    assert resolve_device("auto") == torch.device("cuda", 0)
    gpus(1, local_rank=3)  # one_gpu_per_rank.sh: CUDA_VISIBLE_DEVICES=$LOCAL_RANK leaves that GPU only
    assert resolve_device("auto") == torch.device("cuda", 0)


def test_auto_follows_accelerate_launch_cpu(gpus, monkeypatch):
    gpus(4, local_rank=2)
    monkeypatch.setenv("ACCELERATE_USE_CPU", "True")  # what `accelerate launch --cpu` exports to its processes
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setenv("ACCELERATE_USE_CPU", "False")
    assert resolve_device("auto") == torch.device("cuda", 2)


def test_auto_is_the_cpu_without_accelerator(gpus):
    gpus(0, local_rank=1)
    assert resolve_device("auto") == torch.device("cpu")
    assert inference_dtype(None, resolve_device("auto")) is torch.float32


def test_auto_refuses_more_ranks_than_gpus(gpus):
    gpus(2, local_rank=3)
    with pytest.raises(ValueError, match=r"LOCAL_RANK=3 .* sees only 2 cuda"):
        resolve_device("auto")


def test_explicit_devices(gpus):
    gpus(2, local_rank=1)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("cuda") == resolve_device(0) == torch.device("cuda", 0)
    assert resolve_device("cpu") == torch.device("cpu")
    assert inference_dtype(None, torch.device("cuda", 1)) == "auto"  # the checkpoint's own dtype on a GPU
    assert inference_dtype("bfloat16", torch.device("cpu")) == "bfloat16"
    with pytest.raises(ValueError, match=r"device='cuda:2': this process sees 2 cuda"):
        resolve_device("cuda:2")


@pytest.mark.parametrize(
    ("device", "message"),
    [("gpu", r"prm_device='gpu' is not a device"), ("cuda:0", r"prm_device='cuda:0': this machine has no cuda")],
)
def test_bad_device_names_the_argument(gpus, device, message):
    gpus(0)
    with pytest.raises(ValueError, match=message):
        resolve_device(device, argument="prm_device")


def test_scorer_on_explicit_cpu_equals_default(prm_dir):
    default = PRMScorer.from_pretrained(prm_dir / "prm")
    explicit = PRMScorer.from_pretrained(prm_dir / "prm", device="cpu")
    assert explicit.device == default.device == torch.device("cpu")
    assert {p.dtype for p in explicit.model.parameters()} == {torch.float32}
    scores = explicit.score(QUESTION, CANDIDATES)
    assert [len(s) for s in scores] == [2, 1]
    np.testing.assert_allclose(np.concatenate(scores), np.concatenate(default.score(QUESTION, CANDIDATES)), atol=0)


def test_policy_on_explicit_cpu_equals_default(prm_dir):
    settings = {"temperature": 0, "max_new_tokens": 12, "max_step_tokens": 6}
    default = HFPolicy.from_pretrained(str(prm_dir / "base"), **settings)
    explicit = HFPolicy.from_pretrained(str(prm_dir / "base"), device="cpu", **settings)
    assert explicit.model.device == torch.device("cpu")
    assert {p.dtype for p in explicit.model.parameters()} == {torch.float32}
    solutions = explicit.sample_solutions(QUESTION, 1)
    assert solutions[0].num_tokens > 0
    assert solutions == default.sample_solutions(QUESTION, 1)


def test_spec_keyword_reaches_the_model(prm_dir, gpus):
    scorer = build_scorer(f"prm:{prm_dir / 'prm'},device=cpu")
    assert {p.device for p in scorer.model.parameters()} == {torch.device("cpu")}
    policy = build_policy(f"hf:{prm_dir / 'base'},device=cpu,temperature=0")
    assert {p.device for p in policy.model.parameters()} == {torch.device("cpu")}
    gpus(0)  # the keyword is read, not dropped: a GPU this machine lacks is refused before anything loads
    with pytest.raises(ValueError, match=r"device='cuda:1': this machine has no cuda"):
        build_scorer(f"prm:{prm_dir / 'prm'},device=cuda:1")
    with pytest.raises(ValueError, match=r"device='npu' is not a device"):
        build_policy(f"hf:{prm_dir / 'base'},device=npu")


def test_grpo_reward_places_its_prm(prm_dir, gpus):
    reward = VLPRMReward.from_pretrained(prm_dir / "prm", device=torch.device("cpu"))
    assert reward.scorer.device == torch.device("cpu")
    gpus(0)
    with pytest.raises(ValueError, match=r"device='cuda:0'"):
        VLPRMReward.from_pretrained(prm_dir / "prm", device="cuda:0")


def test_vllm_prm_refuses_a_device(prm_dir):
    with pytest.raises(ValueError, match=r"device='cuda:1'; a vLLM-backed PRM places itself"):
        build_scorer(f"prm:vllm:{prm_dir / 'prm'},device=cuda:1")


def test_accelerator_loading_path_gives_the_same_model(prm_dir, monkeypatch):
    """On a GPU the weights load straight onto it (`device_map`); that path, run onto the CPU, scores identically."""
    import trl_vlprm.guidance.scorer as scorer_module
    import trl_vlprm.modeling.devices as devices

    assert devices.load_kwargs(torch.device("cuda", 1)) == {"device_map": {"": torch.device("cuda", 1)}}
    assert devices.load_kwargs(torch.device("cpu")) == {}
    reference = PRMScorer.from_pretrained(prm_dir / "prm").score(QUESTION, CANDIDATES)
    mapped = []
    monkeypatch.setattr(
        scorer_module, "load_kwargs", lambda device: mapped.append(device) or {"device_map": {"": device}}
    )
    scorer = PRMScorer.from_pretrained(prm_dir / "prm", device="cpu")
    assert mapped == [torch.device("cpu")] and scorer.device == torch.device("cpu")
    np.testing.assert_allclose(np.concatenate(scorer.score(QUESTION, CANDIDATES)), np.concatenate(reference), atol=0)
