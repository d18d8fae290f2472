r"""`trl-vlprm grpo`: train a vision-language policy with GRPO, rewarded by a trained VL-PRM (and optionally the
answer's correctness).

    trl-vlprm grpo --config recipes/configs/grpo_tiny_cpu.yaml --model_name_or_path ... --prm_model_path ...
    accelerate launch --config_file recipes/accelerate/zero2.yaml -m trl_vlprm grpo \
        --config recipes/configs/grpo_qwen2_5_vl_3b.yaml

Arguments: `GRPOScriptArguments` (data, PRM reward), `VLPRMGRPOConfig` (`trl.GRPOConfig` plus the credit assignment:
`process_advantages` outcome / process / min_form, `outcome_weight`; `reward_weights` weighs the PRM reward, then the
outcome reward) and `trl.ModelConfig` (policy, PEFT); any of them in the YAML or on the command line. Rewards are
logged as `rewards/vlprm_<aggregation>/mean` and `rewards/outcome_reward/mean`, per-step credit as `process/...`
(docs/rl.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import ModelConfig, ScriptArguments, TrlParser, get_peft_config

from trl_vlprm.data.loading import load_records
from trl_vlprm.guidance.aggregation import AGGREGATIONS
from trl_vlprm.guidance.process_grpo import VLPRMGRPOConfig, VLPRMGRPOTrainer
from trl_vlprm.guidance.rewards import VLPRMReward, grpo_dataset, outcome_reward
from trl_vlprm.modeling.processor import load_processor
from trl_vlprm.scripts import command_parser


@dataclass
class GRPOScriptArguments(ScriptArguments):
    """`trl.ScriptArguments` plus the PRM reward.

    Args:
        prm_model_path (`str`): folder of the trained PRM (`trl-vlprm train` output).
        prm_aggregation (`str`, defaults to `"min"`): how step scores become the reward: last, min, mean or prod.
        prm_batch_size (`int`, defaults to `16`): completions per PRM forward pass.
        prm_max_length (`int` or `None`): PRM token budget (question with image tokens + steps); longer completions
            get the overlong reward (0).
        prm_max_steps (`int` or `None`): completions with more steps get the overlong reward (0).
        step_separator (`str` or `None`): text the policy's completions are split into steps at; default: the
            separator the PRM was trained with (the PRM always reads each step followed by its own separator).
        prm_dtype (`str` or `None`): PRM parameter dtype ("bfloat16", "auto"); default float32 on the CPU, the
            checkpoint's own on a GPU. The PRM runs on the trainer's device (`args.device`).
        prm_max_pixels (`int` or `None`): the PRM's image-area cap; default: the one saved with the PRM.
        outcome_reward (`bool`, defaults to `False`): add `outcome_reward` (1 when the final answer matches the
            dataset's `answer` column) as a second reward, weighted by `reward_weights[1]`.
        system_prompt (`str` or `None`): system message of the policy's prompt (the PRM does not see it).
        policy_max_pixels (`int` or `None`): the policy's image-area cap; default: the one saved with the policy.
        max_train_samples (`int` or `None`): use only the first questions of the dataset.
    """

    prm_model_path: str | None = field(default=None, metadata={"help": "Folder of the trained PRM."})
    prm_aggregation: str = field(
        default="min", metadata={"help": "How step scores become the reward: last, min, mean or prod."}
    )
    prm_batch_size: int = field(default=16, metadata={"help": "Completions per PRM forward pass."})
    prm_max_length: int | None = field(
        default=None, metadata={"help": "PRM token budget; longer completions get the overlong reward (0)."}
    )
    prm_max_steps: int | None = field(
        default=None, metadata={"help": "Completions with more steps than this get the overlong reward (0)."}
    )
    step_separator: str | None = field(
        default=None, metadata={"help": "Text completions are split into steps at; default: the PRM's own."}
    )
    prm_dtype: str | None = field(
        default=None,
        metadata={"help": "PRM parameter dtype; default float32 on the CPU, the checkpoint's own on a GPU."},
    )
    prm_max_pixels: int | None = field(default=None, metadata={"help": "Image-area cap of the PRM's processor."})
    outcome_reward: bool = field(
        default=False, metadata={"help": "Add the answer-correctness reward, weighted by reward_weights[1]."}
    )
    system_prompt: str | None = field(default=None, metadata={"help": "System message of the policy's prompt."})
    policy_max_pixels: int | None = field(default=None, metadata={"help": "Image-area cap of the policy."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first questions."})

    def __post_init__(self):
        if not self.prm_model_path:
            raise ValueError(
                "GRPOScriptArguments.prm_model_path is required: the folder of a trained PRM (trl-vlprm train output)"
            )
        AGGREGATIONS.check(self.prm_aggregation, "GRPOScriptArguments.prm_aggregation")


def main(
    script_args: GRPOScriptArguments, training_args: VLPRMGRPOConfig, model_args: ModelConfig
) -> VLPRMGRPOTrainer:
    questions = load_records(script_args.dataset_name, script_args.dataset_train_split, script_args.dataset_config)
    if script_args.max_train_samples is not None:
        questions = questions.select(range(min(script_args.max_train_samples, len(questions))))
    train_dataset = grpo_dataset(questions, system_prompt=script_args.system_prompt)

    prm_reward = VLPRMReward.from_pretrained(
        script_args.prm_model_path,
        aggregation=script_args.prm_aggregation,
        batch_size=script_args.prm_batch_size,
        dtype=script_args.prm_dtype,
        max_pixels=script_args.prm_max_pixels,
        step_separator=script_args.step_separator,
        max_length=script_args.prm_max_length,
        max_steps=script_args.prm_max_steps,
        prompt_column="prm_prompt",  # the question as the PRM was trained to read it (no system prompt)
        device=training_args.device,  # TRL places only PreTrainedModel rewards on its device; this one is a callable
    )
    reward_funcs = [prm_reward] + ([outcome_reward] if script_args.outcome_reward else [])

    model_kwargs = {"dtype": model_args.dtype, "attn_implementation": model_args.attn_implementation}
    training_args.model_init_kwargs = {
        **{k: v for k, v in model_kwargs.items() if v is not None},
        **(training_args.model_init_kwargs or {}),
    }
    processor = load_processor(model_args.model_name_or_path, max_pixels=script_args.policy_max_pixels)
    processor.tokenizer.padding_side = "left"  # generation pads prompts on the left
    trainer = VLPRMGRPOTrainer(  # GRPOTrainer itself with process_advantages="outcome" (the default)
        model=model_args.model_name_or_path,
        reward_funcs=reward_funcs,
        args=training_args,
        train_dataset=train_dataset,
        processing_class=processor,
        peft_config=get_peft_config(model_args),
    )
    prm_reward.scorer.model.to(trainer.accelerator.device)  # each rank scores its own completions
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    accelerator = trainer.accelerator
    # Per rank: each scores only its own share of the completions (and counts its own degenerate inputs).
    print(f"rank={accelerator.process_index} prm_reward={prm_reward.stats.as_dict()}", flush=True)
    accelerator.wait_for_everyone()  # ranks leave together: a rank exiting mid-save can abort its peers
    return trainer


def make_parser(prog: str | None = None) -> TrlParser:
    return command_parser((GRPOScriptArguments, VLPRMGRPOConfig, ModelConfig), prog, __doc__)
