"""The whole pipeline end to end on the CPU testbed, offline, in a few minutes: `make demo`.

data (procedural puzzles) -> labelling (hybrid: Monte-Carlo rollouts + a noisy judge, consensus rule) ->
training (a tiny Qwen2-VL value-head VL-PRM with VLPRMTrainer) -> guidance (greedy, majority, best-of-N with each
aggregation, weighted vote, beam search with the trained PRM) -> evaluation (accuracy-vs-N sweep, table and plot).

Every stage writes under `--output_dir` and is skipped when its output is already there, so an interrupted demo
resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict
from pathlib import Path

from trl_vlprm.data.puzzles import sample_supervision
from trl_vlprm.data.schema import PERCEPTION

STRATEGY_ROWS = [
    ("greedy", None),
    ("majority", None),
    ("best_of_n", "last"),
    ("best_of_n", "min"),
    ("best_of_n", "mean"),
    ("best_of_n", "prod"),
    ("weighted_vote", "min"),
    ("beam_search", "min"),
]


def build_model(out: Path) -> Path:
    from trl_vlprm.modeling.tiny import build_tiny_vlm

    path = out / "tiny-qwen2-vl"
    if not (path / "model.safetensors").exists():
        build_tiny_vlm(path, arch="qwen2_vl", seed=0)
    return path


def label(out: Path, num_questions: int, seed: int):
    """Hybrid labels for scripted-policy solutions; returns the dataset and the label quality against the gold."""
    from trl_vlprm.data.puzzles import ScriptedPolicy, generate_puzzles
    from trl_vlprm.labeling.builder import LabelConfig, build_dataset, load_labelled
    from trl_vlprm.labeling.labeler import step_label_quality

    config = LabelConfig(dataset="puzzles", num_questions=num_questions, output_dir=str(out / "labels"),
                         rule="consensus", num_rollouts=4, mc_mode="binary_search", perception_error_rate=0.3,
                         reasoning_error_rate=0.3, step_separator="\n", judge="testbed", seed=seed)  # fmt: skip
    policy = ScriptedPolicy(config.perception_error_rate, config.reasoning_error_rate, seed=seed)
    build_dataset(generate_puzzles(num_questions, seed=seed), policy, config)
    labelled = load_labelled(config.output_dir)
    pairs = [(row["labels"], json.loads(row["gold_step_correct"])) for row in labelled]
    return labelled, step_label_quality(pairs)


def train(out: Path, model_path: Path, train_rows, eval_rows, epochs: float):
    from trl_vlprm import VLPRMConfig, VLPRMTrainer

    prm_path = out / "vlprm"
    args = VLPRMConfig(output_dir=str(prm_path), head="value", perception_loss_weight=2.0, max_length=512,
                       per_device_train_batch_size=8, per_device_eval_batch_size=32, num_train_epochs=epochs,
                       learning_rate=2e-3, lr_scheduler_type="cosine", warmup_steps=0.05, save_strategy="no",
                       logging_steps=25, use_cpu=True, seed=0, activation_checkpointing=False)  # fmt: skip
    trainer = VLPRMTrainer(str(model_path), args, train_dataset=train_rows, eval_dataset=eval_rows)
    before = trainer.evaluate()
    if not (prm_path / "model.safetensors").exists():
        trainer.train()
        trainer.save_model(str(prm_path))
    else:
        trainer = VLPRMTrainer(str(prm_path), args, train_dataset=train_rows, eval_dataset=eval_rows)
    return prm_path, before, trainer.evaluate()


def guidance_table(out: Path, prm_path: Path, num_questions: int, n: int, seed: int) -> list[tuple[str, float]]:
    from trl_vlprm.data.puzzles import ScriptedPolicy, generate_puzzles
    from trl_vlprm.guidance.scorer import PRMScorer
    from trl_vlprm.guidance.strategies import SearchConfig
    from trl_vlprm.guidance.tts import run_tts

    questions = generate_puzzles(num_questions, seed=seed)
    scorer = PRMScorer.from_pretrained(prm_path)
    rows = []
    for strategy, aggregation in STRATEGY_ROWS:
        config = SearchConfig(n=n, aggregation=aggregation or "min", beam_width=4, expansions_per_beam=2, max_steps=4)
        policy = ScriptedPolicy(perception_error_rate=0.3, reasoning_error_rate=0.2, seed=seed)
        name = strategy if aggregation is None else f"{strategy}:{aggregation}"
        summary = run_tts(questions, strategy, policy, scorer, config, out / "tts" / f"{name.replace(':', '_')}.jsonl",
                          show_progress=False)  # fmt: skip
        rows.append((name, summary.accuracy))
    return rows


def sweep(out: Path, prm_path: Path, num_questions: int, seed: int):
    from trl_vlprm.eval.sweep_config import EvalTTSConfig, run

    config = EvalTTSConfig(
        benchmarks=[f"testbed:{seed},limit={num_questions}"],
        policies=["scripted@scripted:perception_error_rate=0.3,reasoning_error_rate=0.2"],
        scorers=[f"vlprm@prm:{prm_path}", "oracle", "random"],
        strategies=["first", "majority", "best_of_n:min", "best_of_n:last", "weighted_vote:min", "pass@n"],
        n_values=[1, 2, 4, 8], num_subsamples=4, step_separator="\n", output_dir=str(out / "eval_tts"), seed=seed,
    )  # fmt: skip
    run(config)
    return Path(config.output_dir)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="outputs/demo")
    parser.add_argument("--label_questions", type=int, default=240, help="puzzles labelled for training")
    parser.add_argument("--eval_questions", type=int, default=60, help="held-out puzzles for guidance/evaluation")
    parser.add_argument("--epochs", type=float, default=4)
    parser.add_argument("--n", type=int, default=8, help="sampling budget of the search strategies")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)

    print("== 1. data + model: procedural puzzles, tiny random Qwen2-VL built offline")
    model_path = build_model(out)

    print(f"== 2. labelling: {args.label_questions} puzzles x 4 rollouts, MC (binary search) + noisy judge, consensus")
    labelled, quality = label(out, args.label_questions, seed=0)
    print(f"   {len(labelled)} labelled solutions; label accuracy vs gold {quality.accuracy:.3f}, bad-step F1 "
          f"{quality.bad_f1:.3f}, {quality.labelled}/{quality.total} steps kept")  # fmt: skip

    print("== 3. training: VLPRMTrainer, value head, perception steps weigh 2x")
    held_out = sample_supervision(args.eval_questions, 4, 0.3, 0.3, seed=1)
    prm_path, before, after = train(out, model_path, labelled, held_out, args.epochs)
    print("   step accuracy on held-out gold labels (before -> after training):")
    for kind in ("", f"{PERCEPTION}_", "reasoning_"):
        name = kind.rstrip("_") or "all"
        print(
            f"   {name:>10}: accuracy {before[f'eval_{kind}accuracy']:.3f} -> {after[f'eval_{kind}accuracy']:.3f}"
            f"   bad-step F1 {after[f'eval_{kind}bad_f1']:.3f}   ({int(after[f'eval_{kind}num_steps'])} steps)"
        )

    print(f"== 4. guidance: strategies with the trained PRM, N={args.n}, {args.eval_questions} held-out puzzles")
    table = guidance_table(out, prm_path, args.eval_questions, args.n, seed=2)
    print("   | strategy | accuracy |\n   |---|---|")
    for name, accuracy in table:
        print(f"   | {name} | {accuracy:.3f} |")

    print("== 5. evaluation: accuracy vs N from one generation (trained PRM, oracle, random)")
    eval_dir = sweep(out, prm_path, args.eval_questions, seed=2)
    print((eval_dir / "results.md").read_text())
    print(f"   plot: {eval_dir / 'accuracy_vs_n.png'}")
    summary = {"label_quality": asdict(quality), "eval_before": before, "eval_after": after, "guidance": dict(table)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
