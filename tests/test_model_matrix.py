"""Every stage on every model family: one tiny model of each family's representative model type goes through training
(value head with LoRA, generative head with the vision tower frozen), scoring (prefix sharing against whole forwards),
generation (`HFPolicy`), a real TRL `GRPOTrainer` step rewarded by the family's PRM (`VLPRMReward`) and labelling
with a transformers policy of the family. `docs/models.md` names these tests in its families x stages table.

The models are built once per family (module fixture) and shared by the stages; each stage runs a few steps on a few
rows, so the whole matrix stays within `make test`'s budget.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from trl import GRPOConfig, GRPOTrainer

from trl_vlprm import VLPRMConfig, VLPRMTrainer
from trl_vlprm.guidance.hf_policy import HFPolicy
from trl_vlprm.guidance.policy import Candidate
from trl_vlprm.guidance.reward_inputs import completion_text
from trl_vlprm.guidance.rewards import VLPRMReward, grpo_dataset
from trl_vlprm.guidance.scorer import PRMScorer
from trl_vlprm.labeling import LabelConfig, build_dataset, load_labelled
from trl_vlprm.modeling.families import get_family
from trl_vlprm.modeling.heads import load_prm
from trl_vlprm.modeling.processor import load_processor
from trl_vlprm.testbed.generator import generate_puzzles
from trl_vlprm.testing import build_tiny_vlm

# One model type per family (the matrix's rows); the other model types of a family run the contract tests
# (tests/test_families.py) and the scorer parity (tests/test_scorer.py).
MATRIX = {
    "qwen_vl": "qwen2_5_vl",
    "qwen3_vl": "qwen3_vl",
    "qwen3_5": "qwen3_5",
    "llava": "llava_next",
    "gemma3": "gemma3",
    "idefics3": "idefics3",
    "smolvlm": "smolvlm",  # the idefics3 family's other type: SmolVLM2's processor (num2words, a video stand-in)
    "internvl": "internvl",
    # a type no family registers: the generic LLaVA-style adapter (multi-layer vision features, its own template)
    "generic": "vipllava",
}
SEPARATOR = " "  # frequent in a random model's output, so generated completions have several steps


@pytest.fixture(scope="module", params=list(MATRIX.values()), ids=list(MATRIX))
def family_models(request, tmp_path_factory):
    """(model type, base model folder, puzzles) of one family, shared by every stage."""
    model_type = request.param
    root = tmp_path_factory.mktemp(model_type)
    puzzles = generate_puzzles(8, seed=0, image_size=64)
    return model_type, build_tiny_vlm(root / "base", arch=model_type, seed=0), puzzles


def _args(tmp_path, **kwargs) -> VLPRMConfig:
    defaults = dict(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, max_steps=2, learning_rate=1e-2,
        use_cpu=True, save_strategy="no", max_length=256, seed=0, disable_tqdm=True, report_to="none",
        activation_checkpointing=False, step_separator=SEPARATOR,
    )  # fmt: skip
    return VLPRMConfig(**{**defaults, **kwargs})


def _changed(before: dict[str, torch.Tensor], model: torch.nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if n in before and not torch.equal(before[n], p.detach())}


def test_train_value_head_with_lora(family_models, tmp_path):
    from peft import LoraConfig

    model_type, base, puzzles = family_models
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    trainer = VLPRMTrainer(str(base), _args(tmp_path, head="value"), train_dataset=puzzles, peft_config=lora)
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or ".score." in n for n in trainable)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    changed = _changed(before, trainer.model)
    assert any("lora_B" in n for n in changed) and any(".score." in n for n in changed)
    assert changed <= trainable  # nothing outside the adapters and the head moved
    merged = trainer.model.merge_and_unload()  # the adapters folded in: a plain value-head PRM that reloads whole
    merged.save_pretrained(tmp_path / "prm")
    reloaded = load_prm(tmp_path / "prm").state_dict()
    assert reloaded.keys() == merged.state_dict().keys()
    assert all(torch.equal(reloaded[k], v) for k, v in merged.state_dict().items())


def test_train_generative_head_with_frozen_vision_tower(family_models, tmp_path):
    model_type, base, puzzles = family_models
    family = get_family(model_type)
    args = _args(tmp_path, head="generative", freeze_vision_tower=True)
    trainer = VLPRMTrainer(str(base), args, train_dataset=puzzles)
    names = [n for n, _ in trainer.model.named_parameters()]
    tower = {n for n in names if family.is_vision_tower_parameter(n)}
    projector = {n for n in names if any(f".{m}." in n for m in family.projector_modules)}
    assert tower and not any("language_model" in n or n.startswith("lm_head") for n in tower)
    frozen = {n for n, p in trainer.model.named_parameters() if not p.requires_grad}
    assert frozen == tower
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    changed = _changed(before, trainer.model)
    assert not changed & tower and changed - tower - projector  # the language model trained, the tower did not
    if projector:  # the projector trains (Qwen's merger, Qwen3-VL's deepstack mergers)
        assert changed & projector
    trainer.save_model(str(tmp_path / "gen"))
    assert load_prm(tmp_path / "gen").config.prm_head == "generative"


@pytest.mark.parametrize("head", ["value", "generative"])
def test_scorer_prefix_sharing_equals_whole_forwards(family_models, head):
    """N=16 candidates of different lengths in batches of 5: the shared-prefix scores equal whole forwards."""
    model_type, base, puzzles = family_models
    scorer = PRMScorer(load_prm(base, head=head), load_processor(base), batch_size=5, step_separator=SEPARATOR)
    question = {"id": puzzles[0]["id"], "prompt": puzzles[0]["prompt"], "images": puzzles[0]["images"]}
    words = "the answer is 3 because two circles and one square make 3 shapes".split()
    candidates = [Candidate(steps=[" ".join(words[: 1 + (i + k) % 7]) for k in range(1 + i % 4)]) for i in range(16)]
    shared, plain = scorer.score(question, candidates), scorer.score_plain(question, candidates)
    assert [len(s) for s in shared] == [len(c.steps) for c in candidates]
    np.testing.assert_allclose(np.concatenate(shared), np.concatenate(plain), atol=1e-5, rtol=0)
    assert np.ptp(np.concatenate(shared)) > 0  # scores vary: the comparison is not between constants


def test_hf_policy_generates_steps(family_models):
    model_type, base, puzzles = family_models
    policy = HFPolicy.from_pretrained(
        str(base), dtype=torch.float32, seed=0, temperature=1.0, max_step_tokens=8, max_new_tokens=16,
        step_separator=SEPARATOR,
    )  # fmt: skip
    question = dict(puzzles[0])
    steps = policy.sample_next_steps(question, ["First"], 3)
    assert len(steps) == 3 and all(len(c.steps) <= 1 and 0 < c.num_tokens <= 8 for c in steps)
    solutions = policy.sample_solutions(question, 2)
    assert len(solutions) == 2 and all(0 < s.num_tokens <= 16 for s in solutions)
    assert policy.stats.calls == 2 and policy.stats.sequences == 5


@pytest.mark.slow
def test_grpo_step_rewarded_by_the_family_prm(family_models, tmp_path):
    """A real GRPOTrainer step whose policy and PRM are of the family; the logged reward equals the PRM's own
    whole-forward scores of what was generated (min over steps)."""
    model_type, base, puzzles = family_models
    prm = load_prm(base, head="value")
    prm.config.prm_step_separator = SEPARATOR
    prm.save_pretrained(tmp_path / "prm")
    load_processor(base).save_pretrained(tmp_path / "prm")
    reward = VLPRMReward.from_pretrained(tmp_path / "prm", aggregation="min", prompt_column="prm_prompt")
    processor = load_processor(base)
    processor.tokenizer.padding_side = "left"
    seen = []

    class Recording(GRPOTrainer):
        def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
            seen.append(([dict(row) for row in inputs], list(completions)))
            return super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)

    args = GRPOConfig(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, num_generations=4, max_completion_length=12,
        max_steps=1, logging_steps=1, learning_rate=1e-3, use_cpu=True, bf16=False, report_to="none",
        save_strategy="no", seed=0,
    )  # fmt: skip
    trainer = Recording(
        model=str(base), reward_funcs=[reward], args=args, train_dataset=grpo_dataset(puzzles.select(range(2))),
        processing_class=processor,
    )  # fmt: skip
    trainer.train()
    (log,) = [entry for entry in trainer.state.log_history if "rewards/vlprm_min/mean" in entry]
    (rows, completions) = seen[0]
    fresh = PRMScorer.from_pretrained(tmp_path / "prm")
    expected = []
    for row, completion in zip(rows, completions):
        steps = [s for s in completion_text(completion).split(SEPARATOR) if s.strip()]
        question = {"prompt": row["prm_prompt"], "images": row["images"]}
        expected.append(min(fresh.score_plain(question, [Candidate(steps=steps)])[0]) if steps else 0.0)
    assert log["rewards/vlprm_min/mean"] == pytest.approx(np.mean(expected), abs=1e-5)


def test_labelling_with_a_transformers_policy(family_models, tmp_path):
    model_type, base, puzzles = family_models
    policy = HFPolicy.from_pretrained(
        str(base), dtype=torch.float32, seed=0, max_step_tokens=6, max_new_tokens=12, step_separator=SEPARATOR
    )
    config = LabelConfig(
        output_dir=str(tmp_path / "labels"), shard_size=2, rule="mc_only", judge="none", num_rollouts=1,
        mc_mode="every_step", mc_num_completions=2, show_progress=False,
    )  # fmt: skip
    stats = build_dataset([dict(row) for row in puzzles.select(range(2))], policy, config)
    labelled = load_labelled(tmp_path / "labels")
    assert stats.records == len(labelled) == 2
    for row in labelled:
        assert row["images"] and len(row["labels"]) == len(row["completions"]) > 0
        assert json.loads(row["mc"])["labels"] == row["labels"]
    assert policy.stats.calls > 2  # one rollout per question, then Monte-Carlo completions of its steps
