"""`VLPRMGRPOTrainer` on the CPU: a real TRL GRPO run with a tiny Qwen2-VL policy and a tiny VL-PRM, with images.

- `outcome` is `GRPOTrainer`: same seed, same losses, bitwise the same weights;
- a process mode whose steps carry no signal (every step scored alike) and `outcome_weight=1` gives TRL's loss through
  the per-token path;
- `process` and `min_form` runs: the advantages the loss received are the credit of the PRM's step scores (scores
  recomputed by a fresh scorer, step ends checked against the decoded tokens), and the per-step logs are there.
"""

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from grpo_runs import policy_processor, tiny_grpo_args
from trl import GRPOConfig, GRPOTrainer

from trl_vlprm.guidance.policy import Candidate
from trl_vlprm.guidance.process_advantages import process_token_advantages
from trl_vlprm.guidance.process_grpo import VLPRMGRPOConfig, VLPRMGRPOTrainer
from trl_vlprm.guidance.reward_inputs import completion_text
from trl_vlprm.guidance.rewards import VLPRMReward, grpo_dataset
from trl_vlprm.guidance.scorer import PRMScorer
from trl_vlprm.modeling.processor import load_processor
from trl_vlprm.testbed.generator import generate_puzzles
from trl_vlprm.testing import build_tiny_prm

SEPARATOR = " "  # the random tiny policy writes many spaces: completions of many steps


def length_reward(completions, **kwargs):
    """A second reward that varies on a random policy (answer correctness would be 0 everywhere)."""
    return [len(completion_text(c)) / 50.0 for c in completions]


class ConstantScorer:
    """Every step scores 0.5: per-step credit carries no signal (a `StepScorer` that is not a PRM)."""

    step_separator = SEPARATOR

    def score(self, question, candidates):
        return [[0.5] * len(c.steps) for c in candidates]


class Recording:
    """Keeps what the loss receives: each generation batch's completions, advantages and (ours) credit."""

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        self.batches.append({key: output[key].clone() for key in ("completion_ids", "completion_mask", "advantages")})
        self.batches[-1]["credit"] = getattr(self, "last_credit", None)
        return output

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        self.rows.append([dict(r) for r in inputs])
        return super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)


class RecordingGRPO(Recording, GRPOTrainer):
    batches: list


class RecordingVLPRMGRPO(Recording, VLPRMGRPOTrainer):
    batches: list


@pytest.fixture(scope="module")
def prm_path(tmp_path_factory):
    return build_tiny_prm(tmp_path_factory.mktemp("prm") / "prm", arch="qwen2_vl", seed=1, step_separator=SEPARATOR)


@pytest.fixture(scope="module")
def dataset():
    return grpo_dataset(generate_puzzles(4, seed=0, image_size=112))


def run(trainer_cls, policy, reward, dataset, tmp_path, steps=2, **config):
    config_class = VLPRMGRPOConfig if trainer_cls is RecordingVLPRMGRPO else GRPOConfig
    args = tiny_grpo_args(tmp_path / "out", config_class, max_steps=steps, **config)
    trainer = trainer_cls(
        model=str(policy),
        reward_funcs=[reward, length_reward],
        args=args,
        train_dataset=dataset,
        processing_class=policy_processor(policy),
    )
    trainer.batches, trainer.rows = [], []
    trainer.train()
    return trainer


def shared(prefix: str, text: str) -> int:
    """Characters `prefix` shares with `text` (the random policy's text holds broken UTF-8, decoded as U+FFFD)."""
    return len(os.path.commonprefix([prefix, text]))


def weights(trainer):
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


@pytest.mark.slow
def test_outcome_mode_is_grpo_bitwise(tiny_qwen2_vl_path, prm_path, dataset, tmp_path):
    reward = VLPRMReward.from_pretrained(prm_path, prompt_column="prm_prompt")
    plain = run(RecordingGRPO, tiny_qwen2_vl_path, reward, dataset, tmp_path / "a")
    ours = run(RecordingVLPRMGRPO, tiny_qwen2_vl_path, reward, dataset, tmp_path / "b")
    losses = [[e["loss"] for e in t.state.log_history if "loss" in e] for t in (plain, ours)]
    assert len(losses[0]) == 2 and losses[0] == losses[1]
    assert any(b["advantages"].abs().max() > 0.1 for b in plain.batches)  # a non-trivial signal was compared
    for a, b in zip(plain.batches, ours.batches):
        assert torch.equal(a["completion_ids"], b["completion_ids"]) and torch.equal(a["advantages"], b["advantages"])
    before, after = weights(plain), weights(ours)
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.slow
def test_per_token_path_gives_trls_loss_when_steps_carry_no_signal(tiny_qwen2_vl_path, dataset, tmp_path):
    reward = VLPRMReward(ConstantScorer())
    plain = run(RecordingGRPO, tiny_qwen2_vl_path, reward, dataset, tmp_path / "a")
    ours = run(
        RecordingVLPRMGRPO, tiny_qwen2_vl_path, reward, dataset, tmp_path / "b",
        process_advantages="process", outcome_weight=1.0,
    )  # fmt: skip
    for a, b in zip(plain.batches, ours.batches):
        assert b["advantages"].shape == b["completion_ids"].shape  # one advantage per token...
        mask = b["completion_mask"].bool()
        expected = a["advantages"][:, None].expand_as(mask)
        assert torch.allclose(b["advantages"][mask], expected[mask], atol=1e-6)  # ...equal to the completion's
    losses = [[e["loss"] for e in t.state.log_history if "loss" in e] for t in (plain, ours)]
    assert len(losses[1]) == 2 and np.allclose(losses[0], losses[1], atol=1e-6, rtol=0)
    before, after = weights(plain), weights(ours)
    assert max(float((before[k] - after[k]).abs().max()) for k in before) < 1e-6
    assert any(b["advantages"].abs().max() > 0.1 for b in plain.batches)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["process", "min_form"])
def test_process_modes_credit_the_prms_steps(tiny_qwen2_vl_path, prm_path, dataset, tmp_path, mode):
    reward = VLPRMReward.from_pretrained(
        prm_path, prompt_column="prm_prompt", max_steps=5
    )  # some completions go over: they fall back
    trainer = run(
        RecordingVLPRMGRPO, tiny_qwen2_vl_path, reward, dataset, tmp_path, process_advantages=mode, outcome_weight=0.5
    )
    fresh = PRMScorer.from_pretrained(prm_path)  # nothing shared with the reward's scorer
    tokenizer = trainer.processing_class.tokenizer
    checked_steps = fallback = 0
    for batch, rows in zip(trainer.batches, trainer.rows):
        credit = batch["credit"]
        assert len(credit["steps"]) == len(rows) == 8
        lengths = batch["completion_mask"].sum(1).tolist()
        for i, (item, row) in enumerate(zip(credit["steps"], rows)):
            ids = batch["completion_ids"][i, : lengths[i]].tolist()
            text = tokenizer.decode(ids, skip_special_tokens=True)
            split = [s.strip() for s in text.split(SEPARATOR) if s.strip()]
            if not item.has_steps:  # blank, or over the step cap: TRL's outcome advantage on every token
                fallback += 1
                assert not split or len(split) > 5
                assert torch.all(batch["advantages"][i, : lengths[i]] == credit["outcome"][i])
                continue
            question = {"prompt": row["prm_prompt"], "images": row["images"]}
            (expected,) = fresh.score_plain(question, [Candidate(steps=split)])
            np.testing.assert_allclose(item.scores, expected, atol=1e-5)
            assert item.step_types == ["perception"] + ["reasoning"] * (len(split) - 1)
            covered = 0
            for step, end in zip(split, item.ends):  # the end token is the first whose prefix holds the step
                covered = text.index(step, covered) + len(step)
                assert shared(tokenizer.decode(ids[: end + 1], skip_special_tokens=True), text) >= covered
                assert shared(tokenizer.decode(ids[:end], skip_special_tokens=True), text) < covered
                checked_steps += 1
        # What the loss got is the credit assignment (formulas checked in test_process_advantages) of these steps.
        expected_rows = process_token_advantages(credit["steps"], credit["outcome"], 4, mode, outcome_weight=0.5)
        for i, row in enumerate(expected_rows):
            assert torch.equal(batch["advantages"][i, : len(row)], row)
            assert torch.all(batch["advantages"][i, len(row) :] == 0)
        assert not all(torch.allclose(r, r[0]) for r in expected_rows)  # not one advantage per completion
    assert checked_steps > 20 and fallback > 0
    logs = [e for e in trainer.state.log_history if "process/fallback" in e]
    assert len(logs) == 2
    assert all("process/step_score/perception/mean" in e and "process/step_score/reasoning/std" in e for e in logs)
    assert sum(e["process/fallback"] for e in logs) == fallback


@pytest.mark.slow
def test_gpu_process_recipe_runs_as_written(tiny_hub, tmp_path):
    """recipes/configs/grpo_process_qwen2_5_vl_3b.yaml by its policy's repo id (tiny cache), with only what a CPU
    needs on the command line; its relative PRM and data paths are filled under the working directory."""
    import subprocess
    import sys

    import yaml

    root = Path(__file__).resolve().parents[1]
    config_file = root / "recipes" / "configs" / "grpo_process_qwen2_5_vl_3b.yaml"
    recipe = yaml.safe_load(config_file.read_text())
    assert recipe["model_name_or_path"] == "Qwen/Qwen2.5-VL-3B-Instruct" and recipe["process_advantages"] == "min_form"
    build_tiny_prm(tmp_path / recipe["prm_model_path"], step_separator="\n\n")
    generate_puzzles(4, seed=5, image_size=112).save_to_disk(str(tmp_path / recipe["dataset_name"]))
    cpu = ["--dtype", "float32", "--attn_implementation", "sdpa", "--bf16", "false", "--use_cpu", "true"]
    cpu += ["--prm_dtype", "float32", "--use_vllm", "false", "--activation_checkpointing", "false"]
    cpu += ["--max_steps", "1", "--num_generations", "2", "--per_device_train_batch_size", "2"]
    cpu += ["--gradient_accumulation_steps", "1", "--max_completion_length", "24", "--log_completions", "false"]
    result = subprocess.run(
        [sys.executable, str(root / "recipes" / "grpo.py"), "--config", str(config_file), *cpu],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    saved = torch.load(tmp_path / recipe["output_dir"] / "training_args.bin", weights_only=False)
    assert saved.process_advantages == "min_form"  # the recipe's mode reached the trainer
    assert "'process/fallback'" in result.stdout and "'process/token_advantage/std'" in result.stdout
    assert (tmp_path / recipe["output_dir"] / "model.safetensors").exists()


@pytest.mark.slow
def test_each_mode_under_a_two_process_ddp_launch(tiny_qwen2_vl_path, prm_path, tmp_path):
    """benchmarks/process_credit.py (public API) under `accelerate launch`, 2 processes, both process modes (outcome
    is GRPOTrainer's own: test_rewards_grpo.py launches it). A group of 4
    completions spans both ranks (2 a rank): both must assign the same credit to the same gathered batch, and the
    `process` normalisation must run over the whole group, not each rank's half."""
    import json
    import socket
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("ACCELERATE_USE_CPU", None)
    out = tmp_path / "credit.json"
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(root / "recipes" / "accelerate" / "ddp.yaml"),
        "--num_processes", "2", "--main_process_port", str(port),
        str(root / "benchmarks" / "process_credit.py"),
        "--policy", str(tiny_qwen2_vl_path), "--prm", str(prm_path), "--use_cpu", "--steps", "1",
        "--questions", "4", "--per_device_train_batch_size", "2", "--max_completion_length", "16",
        "--outcome_weight", "0", "--modes", "process", "min_form", "--out", str(out),
    ]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert "world_size=2" in result.stdout
    results = json.loads(out.read_text())
    assert results["world_size"] == 2 and set(results["modes"]) == {"process", "min_form"}
    assert all(results["modes"][m]["optimizer_steps"] == 1 for m in results["modes"])
    for mode in ("process", "min_form"):
        ranks = [json.loads(Path(f"{out}.rank{r}.{mode}.json").read_text()) for r in (0, 1)]
        assert ranks[0]["rows"] == ranks[1]["rows"] and len(ranks[0]["rows"]) == 4  # one group of 4, gathered
        assert results["modes"][mode]["process/step_score/perception/mean"] is not None
        assert all(ranks[0]["has_steps"])  # random 16-token texts: never blank, never over 24 steps
        if mode == "process":
            token0 = [row[0] for row in ranks[0]["rows"]]  # sum of the completion's normalised step scores
            assert sum(token0) == pytest.approx(0.0, abs=1e-4)  # normalised over the whole group...
            assert abs(token0[0] + token0[1]) > 1e-3  # ...which a rank's own half would not have been


def test_config_and_trainer_name_what_is_wrong(tiny_qwen2_vl_path, dataset, tmp_path):
    common = {"output_dir": str(tmp_path), "use_cpu": True, "bf16": False, "report_to": "none"}
    with pytest.raises(ValueError, match="VLPRMGRPOConfig.process_advantages must be one of .*got 'sum'"):
        VLPRMGRPOConfig(process_advantages="sum", **common)
    with pytest.raises(ValueError, match="VLPRMGRPOConfig.min_form_temperature must be > 0, got 0"):
        VLPRMGRPOConfig(min_form_temperature=0, **common)
    args = VLPRMGRPOConfig(process_advantages="min_form", num_generations=2, per_device_train_batch_size=2, **common)
    with pytest.raises(
        ValueError, match="needs exactly one VLPRMReward in reward_funcs .*got 0 among \\['length_reward'"
    ):
        VLPRMGRPOTrainer(model=str(tiny_qwen2_vl_path), reward_funcs=[length_reward], args=args, train_dataset=dataset,
                         processing_class=load_processor(tiny_qwen2_vl_path))  # fmt: skip
