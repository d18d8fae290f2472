"""Per-step credit vs outcome GRPO: the same run in each `process_advantages` mode, logs side by side, and the
overhead of the credit assignment per optimizer step.

    python benchmarks/process_credit.py --steps 8 --out outputs/process_credit.json
    accelerate launch --config_file recipes/accelerate/ddp.yaml --num_processes 2 benchmarks/process_credit.py \\
        --policy <tiny policy> --prm <tiny PRM> --use_cpu --steps 2 --per_device_train_batch_size 2

Each mode trains the same tiny Qwen2-VL policy (same seed, so the first generation batch is the same) against the
same tiny VL-PRM plus the answer-correctness reward, on testbed questions with their images. The overhead is TRL's
own `step_time` (generation, rewards, credit and backward of one optimizer step), averaged over the steps after the
first (warm-up), divided by outcome GRPO's. Only public APIs: `VLPRMGRPOTrainer`, `VLPRMGRPOConfig`, `VLPRMReward`.
Under `accelerate launch` each rank writes its last generation batch's credit (`trainer.last_credit`) to
`<out>.rank<R>.json`, so a test can check that all ranks assigned the same credit to the same gathered batch.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

LOGGED = [
    "reward",
    "rewards/vlprm/mean",
    "rewards/outcome_reward/mean",
    "process/fallback",
    "process/steps_per_completion",
    "process/step_score/perception/mean",
    "process/step_score/perception/std",
    "process/step_score/reasoning/mean",
    "process/step_score/reasoning/std",
    "process/first_flagged_perception",
    "process/token_advantage/std",
    "kl",
    "loss",
    "step_time",
    "process/credit_seconds",
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--policy", help="policy folder; default: a tiny Qwen2-VL built under --work_dir")
    parser.add_argument("--prm", help="PRM folder; default: a tiny generative-head PRM built under --work_dir")
    parser.add_argument("--work_dir", help="where default models go (a temporary folder by default)")
    parser.add_argument("--modes", nargs="+", default=["outcome", "process", "min_form"])
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per mode")
    parser.add_argument("--questions", type=int, default=16)
    parser.add_argument("--num_generations", type=int, default=4)
    parser.add_argument("--per_device_train_batch_size", type=int, default=8)
    parser.add_argument("--max_completion_length", type=int, default=32)
    parser.add_argument("--outcome_weight", type=float, default=0.5)
    parser.add_argument("--step_separator", default=" ", help="the tiny PRM's separator (random text: many steps)")
    parser.add_argument("--use_cpu", action="store_true", help="needed for a 2-process gloo launch on a CPU")
    parser.add_argument(
        "--scorer",
        choices=["prm", "rule"],
        default="prm",
        help="prm: the tiny VL-PRM; rule: a known step rule (a word holding an 'e' is a wrong step), so whether the "
        "policy learns to avoid wrong steps can be measured",
    )
    parser.add_argument("--aggregation", default="min", help="VLPRMReward's aggregation (the outcome's PRM share)")
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="JSON file for the per-mode logs and the overhead ratios")
    return parser.parse_args(argv)


def build_models(args: argparse.Namespace) -> tuple[Path, Path]:
    from accelerate import PartialState

    from trl_vlprm.testing import build_tiny_prm, build_tiny_vlm

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="process-credit-"))
    with PartialState(cpu=args.use_cpu).main_process_first():  # rank 0 builds, the others then find the folders
        policy = Path(args.policy) if args.policy else work / "policy"
        if not args.policy and not (policy / "config.json").exists():
            build_tiny_vlm(policy, arch="qwen2_vl", seed=0)
        prm = Path(args.prm) if args.prm else work / "prm"
        if not args.prm and not (prm / "config.json").exists():
            build_tiny_prm(prm, arch="qwen2_vl", seed=1, step_separator=args.step_separator)
    return policy, prm


class RuleScorer:
    """A `StepScorer` whose truth is known: a step (a word of the random policy's text) holding an "e" is wrong (0),
    any other is right (1). With it the learning comparison measures what per-step credit is for: does the policy
    stop writing wrong steps, and how fast."""

    def __init__(self, step_separator: str = " "):
        self.step_separator = step_separator

    def score(self, question, candidates):
        return [[0.0 if "e" in step.lower() else 1.0 for step in candidate.steps] for candidate in candidates]


def run_mode(mode: str, args: argparse.Namespace, policy: Path, prm: Path, dataset, output_dir: Path):
    from trl_vlprm.guidance.process_grpo import VLPRMGRPOConfig, VLPRMGRPOTrainer
    from trl_vlprm.guidance.rewards import VLPRMReward, outcome_reward
    from trl_vlprm.modeling.processor import load_processor

    if args.scorer == "rule":
        reward = VLPRMReward(RuleScorer(args.step_separator), aggregation=args.aggregation, max_steps=24, name="vlprm")
    else:
        reward = VLPRMReward.from_pretrained(
            prm, aggregation=args.aggregation, prompt_column="prm_prompt", max_steps=24, name="vlprm"
        )
    processor = load_processor(policy)
    processor.tokenizer.padding_side = "left"
    config = VLPRMGRPOConfig(
        output_dir=str(output_dir),
        process_advantages=mode,
        outcome_weight=args.outcome_weight,
        per_device_train_batch_size=args.per_device_train_batch_size,
        num_generations=args.num_generations,
        max_completion_length=args.max_completion_length,
        max_steps=args.steps,
        logging_steps=1,
        learning_rate=args.learning_rate,
        beta=0.04,
        reward_weights=[1.0, 1.0],
        bf16=False,
        use_cpu=args.use_cpu,
        report_to="none",
        save_strategy="no",
        seed=args.seed,
        disable_tqdm=True,
    )
    trainer = VLPRMGRPOTrainer(
        model=str(policy),
        reward_funcs=[reward, outcome_reward],
        args=config,
        train_dataset=dataset,
        processing_class=processor,
    )
    if args.scorer == "prm":
        reward.scorer.model.to(trainer.accelerator.device)
    started = time.perf_counter()
    trainer.train()
    return trainer, time.perf_counter() - started


def summarise(trainer) -> dict[str, float | None]:
    steps = [entry for entry in trainer.state.log_history if "step_time" in entry]
    summary: dict[str, float | None] = {}
    for key in LOGGED:
        values = [entry[key] for entry in steps if key in entry]
        if key in ("step_time", "process/credit_seconds"):
            values = values[1:] or values  # the first step warms up (allocations, lazy imports)
        summary[key] = sum(values) / len(values) if values else None
    summary["optimizer_steps"] = len(steps)
    # The learning curve: the PRM's (or rule's) reward per step, and its mean over the first and last quarter.
    curve = [entry.get("rewards/vlprm/mean") for entry in steps]
    quarter = max(1, len(curve) // 4)
    summary["reward_curve"] = curve
    summary["vlprm_first_quarter"] = sum(curve[:quarter]) / quarter if curve else None
    summary["vlprm_last_quarter"] = sum(curve[-quarter:]) / quarter if curve else None
    return summary


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    from accelerate import PartialState

    from trl_vlprm.guidance.rewards import grpo_dataset
    from trl_vlprm.testbed.generator import generate_puzzles

    state = PartialState(cpu=args.use_cpu)  # before any TrainingArguments: on a CPU, gloo needs cpu=True
    policy, prm = build_models(args)
    dataset = grpo_dataset(generate_puzzles(args.questions, seed=0, image_size=112))
    results: dict = {"world_size": state.num_processes, "modes": {}}
    with tempfile.TemporaryDirectory() as scratch:
        for mode in args.modes:
            trainer, seconds = run_mode(mode, args, policy, prm, dataset, Path(scratch) / mode)
            results["modes"][mode] = {**summarise(trainer), "wall_seconds": seconds}
            if args.out and trainer.last_credit is not None:
                credit = trainer.last_credit
                rank_file = Path(f"{args.out}.rank{state.process_index}.{mode}.json")
                rank_file.parent.mkdir(parents=True, exist_ok=True)
                rank_file.write_text(
                    json.dumps(
                        {
                            "rank": state.process_index,
                            "num_generations": args.num_generations,
                            "outcome": credit["outcome"],
                            "has_steps": [c.has_steps for c in credit["steps"]],
                            "rows": [row.tolist() for row in credit["rows"]],
                        }
                    )
                )
    base = results["modes"].get("outcome", {}).get("step_time")
    for summary in results["modes"].values():
        summary["step_time_ratio"] = summary["step_time"] / base if base and summary["step_time"] else None
        # Less exposed to a loaded machine than the ratio of wall times: (outcome step + credit) / outcome step.
        credit = summary.get("process/credit_seconds")
        summary["credit_ratio"] = (base + credit) / base if base and credit is not None else None
    if state.is_main_process:
        print(f"world_size={state.num_processes}")
        print(table(results))
        if args.out:
            tmp = Path(args.out).with_suffix(".tmp")
            tmp.write_text(json.dumps(results, indent=1))
            os.replace(tmp, args.out)
    return results


def table(results: dict) -> str:
    modes = list(results["modes"])
    lines = ["| metric | " + " | ".join(modes) + " |", "|---" * (len(modes) + 1) + "|"]
    for key in [*LOGGED, "step_time_ratio", "credit_ratio", "vlprm_first_quarter", "vlprm_last_quarter"]:
        cells = [results["modes"][m].get(key) for m in modes]
        lines.append(f"| {key} | " + " | ".join("-" if c is None else f"{c:.4g}" for c in cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
