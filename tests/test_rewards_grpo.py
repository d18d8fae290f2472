"""A real TRL GRPOTrainer with a tiny Qwen2-VL policy and a tiny VL-PRM reward, on CPU, with images: the logged
reward is the PRM's (recomputed independently from what the trainer generated), and recipes/grpo.py runs its tiny
CPU config."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from grpo_runs import policy_processor, tiny_grpo_args
from safetensors.torch import load_file
from test_launch import free_port, logged_int
from trl import GRPOTrainer, ModelConfig

from trl_vlprm.data.answers import grade
from trl_vlprm.guidance.policy import Candidate
from trl_vlprm.guidance.reward_inputs import completion_text
from trl_vlprm.guidance.rewards import VLPRMReward, grpo_dataset, outcome_reward
from trl_vlprm.guidance.scorer import PRMScorer
from trl_vlprm.modeling.heads import load_prm
from trl_vlprm.modeling.processor import load_processor
from trl_vlprm.testbed.generator import generate_puzzles
from trl_vlprm.testing import build_tiny_vlm

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
SEPARATOR = " "  # the tiny PRM's saved separator; the random policy's text holds many, so completions have many steps


def save_tiny_prm(folder: Path, separator: str = SEPARATOR) -> Path:
    """A tiny Qwen2-VL value-head PRM saved like a trained one (config records head and separator)."""
    base = build_tiny_vlm(folder / "prm_base", arch="qwen2_vl", seed=1)
    model = load_prm(base, head="value", num_labels=2)
    model.config.prm_step_separator = separator
    model.save_pretrained(folder / "prm")
    load_processor(base).save_pretrained(folder / "prm")
    return folder / "prm"


class RecordingGRPOTrainer(GRPOTrainer):
    """Keeps what each reward computation was given (dataset rows with their images, and completions)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.reward_batches = []

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        self.reward_batches.append(([dict(row) for row in inputs], list(completions)))
        return super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("grpo_models")
    return build_tiny_vlm(root / "policy", arch="qwen2_vl", seed=0), save_tiny_prm(root)


def independent_prm_reward(scorer, row, completion, with_images=True):
    """min over steps of the PRM's plain full-forward scores (no prefix sharing, no VLPRMReward code)."""
    steps = [s.strip() for s in completion_text(completion).split(SEPARATOR) if s.strip()]
    if not steps:
        return 0.0
    question = {"prompt": row["prm_prompt"], "images": row["images"] if with_images else []}
    if not with_images:
        question["prompt"] = question["prompt"].replace("<image>", "")
    (scores,) = scorer.score_plain(question, [Candidate(steps=steps)])
    return min(scores)


@pytest.mark.slow
def test_grpo_logged_reward_is_the_prms(models, tmp_path):
    policy_path, prm_path = models
    dataset = grpo_dataset(generate_puzzles(4, seed=0, image_size=112))
    reward = VLPRMReward.from_pretrained(prm_path, aggregation="min", prompt_column="prm_prompt")
    args = tiny_grpo_args(tmp_path / "out", max_completion_length=20, learning_rate=1e-3, reward_weights=[1.0, 0.5])
    trainer = RecordingGRPOTrainer(
        model=str(policy_path),
        reward_funcs=[reward, outcome_reward],
        args=args,
        train_dataset=dataset,
        processing_class=policy_processor(policy_path),
    )
    trainer.train()

    logs = [entry for entry in trainer.state.log_history if "rewards/vlprm_min/mean" in entry]
    assert len(logs) == len(trainer.reward_batches) == 2
    fresh = PRMScorer.from_pretrained(prm_path)  # a second copy: nothing shared with the reward's scorer
    steps_per_completion = []
    for entry, (rows, completions) in zip(logs, trainer.reward_batches):
        assert all(len(row["images"]) == 1 for row in rows) and len(rows) == 8
        expected = [independent_prm_reward(fresh, row, c) for row, c in zip(rows, completions)]
        assert entry["rewards/vlprm_min/mean"] == pytest.approx(np.mean(expected), abs=1e-5)
        assert entry["rewards/vlprm_min/std"] == pytest.approx(np.std(expected, ddof=1), abs=1e-5)
        outcome = [grade(completion_text(c), row["answer"], row["options"]) for row, c in zip(rows, completions)]
        assert entry["rewards/outcome_reward/mean"] == pytest.approx(np.mean(outcome), abs=1e-6)
        # TRL's reward_weights combine the two, each logged under its own name.
        assert entry["reward"] == pytest.approx(np.mean(expected) + 0.5 * np.mean(outcome), abs=1e-5)
        assert entry["vlprm_min/scorer_calls"] == 2.0  # one call per question group
        steps_per_completion += [len(completion_text(c).split()) for c in completions]
    # The image reached the PRM: without it the PRM scores differ (so the equality above is not image-blind).
    rows, completions = trainer.reward_batches[0]
    without = [independent_prm_reward(fresh, row, c, with_images=False) for row, c in zip(rows, completions)]
    with_images = [independent_prm_reward(fresh, row, c) for row, c in zip(rows, completions)]
    assert np.abs(np.array(without) - np.array(with_images)).max() > 1e-4
    assert np.mean(steps_per_completion) > 2  # multi-step completions: min aggregation is really exercised
    assert reward.stats.calls == 2 and reward.stats.completions == 16 and reward.stats.groups == 4


@pytest.mark.slow
def test_recipe_runs_the_tiny_cpu_config(models, tmp_path, capsys):
    policy_path, prm_path = models
    generate_puzzles(8, seed=3, image_size=112).save_to_disk(str(tmp_path / "questions"))
    sys.path.insert(0, str(RECIPES))
    try:
        from grpo import main, make_parser
    finally:
        sys.path.remove(str(RECIPES))
    output_dir = tmp_path / "grpo"
    script_args, training_args, model_args = make_parser().parse_args_and_config(
        [
            "--config", str(RECIPES / "configs" / "grpo_tiny_cpu.yaml"),
            "--model_name_or_path", str(policy_path),
            "--prm_model_path", str(prm_path),
            "--dataset_name", str(tmp_path / "questions"),
            "--output_dir", str(output_dir),
            "--max_steps", "2",
        ]
    )  # fmt: skip
    trainer = main(script_args, training_args, model_args)

    out = capsys.readouterr().out
    assert (trainer.accelerator.num_processes, trainer.args.process_advantages) == (1, "outcome")
    assert "rank=0 prm_reward={'calls': 2, 'completions': 8, 'groups': 2" in out
    logged = [e for e in trainer.state.log_history if "rewards/vlprm_min/mean" in e]
    assert len(logged) == training_args.max_steps == 2
    assert all("rewards/outcome_reward/mean" in e and "vlprm_min/no_steps" in e for e in logged)
    assert all(0.0 < e["rewards/vlprm_min/mean"] < 1.0 for e in logged)
    assert trainer.reward_funcs[0].scorer.device == trainer.args.device  # the PRM runs beside the policy
    # The policy was trained and saved: its weights moved from the initial checkpoint.
    before = load_file(policy_path / "model.safetensors")
    after = load_file(output_dir / "model.safetensors")
    moved = [k for k in before if k in after and not torch.equal(before[k], after[k])]
    assert moved, "no policy weight changed"


def test_gpu_config_names_only_real_fields():
    sys.path.insert(0, str(RECIPES))
    try:
        from grpo import GRPOScriptArguments
    finally:
        sys.path.remove(str(RECIPES))
    from trl_vlprm.guidance.process_grpo import VLPRMGRPOConfig

    known = {f for cls in (GRPOScriptArguments, VLPRMGRPOConfig, ModelConfig) for f in cls.__dataclass_fields__}
    for name in ("grpo_qwen2_5_vl_3b.yaml", "grpo_tiny_cpu.yaml", "grpo_process_qwen2_5_vl_3b.yaml"):
        config = yaml.safe_load((RECIPES / "configs" / name).read_text())
        assert set(config) <= known, f"{name}: unknown keys {set(config) - known}"
        assert len(config["reward_weights"]) == 1 + bool(config.get("outcome_reward"))


@pytest.mark.slow
def test_recipe_under_a_two_process_ddp_launch(models, tmp_path):
    """Each rank holds its PRM and scores its own group; TRL gathers the rewards (world size checked from both)."""
    policy_path, prm_path = models
    generate_puzzles(8, seed=4, image_size=112).save_to_disk(str(tmp_path / "questions"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("ACCELERATE_USE_CPU", None)
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(RECIPES / "accelerate" / "ddp.yaml"),
        "--num_processes", "2", "--main_process_port", str(free_port()),
        str(RECIPES / "grpo.py"),
        "--config", str(RECIPES / "configs" / "grpo_tiny_cpu.yaml"),
        "--model_name_or_path", str(policy_path), "--prm_model_path", str(prm_path),
        "--dataset_name", str(tmp_path / "questions"), "--output_dir", str(tmp_path / "grpo"),
        "--max_steps", "2", "--disable_tqdm", "true", "--log_level", "info",
    ]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    # World size 2 as the Trainer saw it: the total batch is two processes' worth, logged by rank 0 only.
    per_device = logged_int(output, "Instantaneous batch size per device")
    assert logged_int(output, "Total train batch size (w. parallel, distributed & accumulation)") == 2 * per_device
    # 4 completions a rank a step (per_device_train_batch_size 4 = one question's group), 2 steps, on both ranks.
    ranks = dict(re.findall(r"rank=(\d) prm_reward=(\{[^}]*\})", output))
    assert set(ranks) == {"0", "1"}
    for stats in ranks.values():
        assert "'calls': 2, 'completions': 8, 'groups': 2, 'scorer_calls': 2" in stats
    assert (tmp_path / "grpo" / "model.safetensors").exists()
