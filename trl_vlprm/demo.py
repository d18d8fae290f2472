"""The whole pipeline end to end on the CPU testbed, offline, in a few minutes: `make demo`.

data (the learnable tier of the procedural puzzles: one large shape per image) -> labelling (hybrid: Monte-Carlo
rollouts + a noisy judge, consensus rule, on the training puzzles; its quality against the gold is shown) ->
training (`CPURecipe`: a tiny Qwen2-VL value-head VL-PRM trained with VLPRMTrainer on those hybrid labels, and a
second one on gold-labelled scripted solutions of the lookalike tier, puzzles drawn and captioned in PuzzleVQA's
vocabulary, trained in a child process from step 1 on so that the two runs share the 2 cores; the hybrid-trained
PRM is the one used in steps 4-6) -> guard-rails (does the PRM look at the image?
does its best-of-N beat a random pick?) -> guidance (greedy, majority, best-of-N with each aggregation, weighted
vote, beam search) -> evaluation (accuracy vs N for the PRM, the oracle and a random scorer, table, plot, and a page
of every step's scores: `trl-vlprm view`) -> real images (both PRMs on PuzzleVQA's process bench: the learnable-tier
one at chance; the lookalike one, trained with a verdict at every word of its captions on a vision tower warmed up
to see colours, ranks gold captions above perturbed ones on the colour-based types, and reads the image to do it:
swaps between two colours PuzzleVQA draws, which only the image tells, are caught, and scored against other puzzles'
images its AUC falls; neither PRM is above chance on the shape, size and number types, nor on AlgoPuzzleVQA) ->
where a tiny PRM helps and where it does not (a row per tier: the learnable and lookalike PRMs against a third,
trained on the hard tier's grids, counts, digit sums and clocks while the lookalike one finishes, which stays at the
majority class).

Guidance and evaluation run a scripted policy with *systematic* errors: a share of the questions is misread the same
way in most samples, as real VLMs misread an image, so majority vote converges on the wrong answer there while a
PRM that checks the perception step against the image can reject it.

Every stage writes under `--output_dir` and is skipped when its output is already there, so an interrupted demo
resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict
from pathlib import Path

from trl_vlprm.cpu_recipe import CPURecipe
from trl_vlprm.data.schema import PERCEPTION, REASONING

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
# The policy of guidance and evaluation: independent errors plus a per-question misreading bias.
SYSTEMATIC_POLICY = {"perception_error_rate": 0.2, "reasoning_error_rate": 0.2, "systematic_share": 0.4,
                     "systematic_rate": 0.6}  # fmt: skip
SWEEP_SELECTIONS = ["first", "majority", "best_of_n:min", "best_of_n:last", "weighted_vote:min", "pass@n"]


def label(out: Path, recipe: CPURecipe, num_questions: int, seed: int):
    """Hybrid labels for scripted-policy solutions of the recipe's training puzzles, at its error rates; returns the
    dataset and the label quality against the gold."""
    from trl_vlprm.labeling import LabelConfig, build_dataset, load_labelled
    from trl_vlprm.labeling.labeler import step_label_quality
    from trl_vlprm.testbed import ScriptedPolicy, generate_puzzles

    config = LabelConfig(dataset="puzzles", num_questions=num_questions, output_dir=str(out / "labels"),
                         rule="consensus", num_rollouts=4, mc_mode="binary_search",
                         perception_error_rate=recipe.perception_error_rate,
                         reasoning_error_rate=recipe.reasoning_error_rate, judge="testbed", seed=seed)  # fmt: skip
    policy = ScriptedPolicy(config.perception_error_rate, config.reasoning_error_rate, seed=seed)
    questions = generate_puzzles(num_questions, seed=seed, families=recipe.families, image_size=recipe.image_size)
    build_dataset(questions, policy, config)
    labelled = load_labelled(config.output_dir)
    pairs = [(row["labels"], json.loads(row["gold_step_correct"])) for row in labelled]
    return labelled, step_label_quality(pairs)


def step_labels(held_out, kind: str | None) -> list[bool]:
    """The gold verdicts of every held-out step of type `kind` (all steps when None)."""
    return [bool(label) for row in held_out for label, t in zip(row["labels"], row["step_types"]) if kind in (None, t)]


def majority_share(labels: list[bool]) -> float:
    """The accuracy of always predicting the commoner verdict."""
    return max(sum(labels), len(labels) - sum(labels)) / max(len(labels), 1)


def step_table(columns: dict[str, dict[str, float]], held_out) -> list[str]:
    """Held-out step verdicts by type: the majority-class baseline, then accuracy / bad-step F1 of each PRM (the
    untrained one, the one trained on gold labels, the one trained on the demo's hybrid labels), same rows."""
    header = " | ".join(f"{name}: accuracy / bad-step F1" for name in columns)
    lines = [f"   | steps | count | majority class | {header} |", "   |---|---|---|" + "---|" * len(columns)]
    for kind in ("", f"{PERCEPTION}_", f"{REASONING}_"):
        labels = step_labels(held_out, kind.rstrip("_") or None)
        majority = majority_share(labels)
        name = kind.rstrip("_") or "all"
        cells = [f"{m[f'eval_{kind}accuracy']:.3f} / {m[f'eval_{kind}bad_f1']:.3f}" for m in columns.values()]
        lines.append(f"   | {name} | {len(labels)} | {majority:.3f} | " + " | ".join(cells) + " |")
    return lines


def tier_table(rows) -> list[str]:
    """Per tier (name, labels trained on, held-out metrics, held-out rows): the perception steps' majority class
    against the PRM's accuracy and bad-step F1. A PRM at the majority class with a bad-step F1 near 0 learnt nothing
    of the image."""
    lines = ["   | tier | trained on | perception steps | majority class | accuracy / bad-step F1 |",
             "   |---|---|---|---|---|"]  # fmt: skip
    for tier, labels, metrics, held_out in rows:
        verdicts = step_labels(held_out, PERCEPTION)
        cell = f"{metrics['eval_perception_accuracy']:.3f} / {metrics['eval_perception_bad_f1']:.3f}"
        lines.append(f"   | {tier} | {labels} | {len(verdicts)} | {majority_share(verdicts):.3f} | {cell} |")
    return lines


def guard_rails(prm_path: Path, held_out) -> list[str]:
    """The image-swap check and best-of-N against a random pick, both on the held-out solutions."""
    from trl_vlprm.eval.guardrails import best_of_n_vs_random, image_swap_sensitivity
    from trl_vlprm.guidance.scorer import PRMScorer

    scorer = PRMScorer.from_pretrained(prm_path)
    lines = ["   P(correct) moved by swapping each question's image for another question's:"]
    lines += image_swap_sensitivity(scorer, held_out, max_questions=60).lines()
    lines.append("   best-of-N on the held-out solutions (same candidates for every selector):")
    lines += best_of_n_vs_random(scorer, held_out).lines()
    return lines


def guidance_table(out: Path, prm_path: Path, questions, n: int, seed: int) -> list[tuple[str, float]]:
    from trl_vlprm.guidance.scorer import PRMScorer
    from trl_vlprm.guidance.strategies import SearchConfig
    from trl_vlprm.guidance.tts import run_tts
    from trl_vlprm.testbed import ScriptedPolicy

    scorer = PRMScorer.from_pretrained(prm_path)
    rows = []
    for strategy, aggregation in STRATEGY_ROWS:
        config = SearchConfig(n=n, aggregation=aggregation or "min", beam_width=4, expansions_per_beam=2, max_steps=4)
        policy = ScriptedPolicy(**SYSTEMATIC_POLICY, seed=seed)
        name = strategy if aggregation is None else f"{strategy}:{aggregation}"
        summary = run_tts(questions, strategy, policy, scorer, config, out / "tts" / f"{name.replace(':', '_')}.jsonl",
                          show_progress=False)  # fmt: skip
        rows.append((name, summary.accuracy))
    return rows


def sweep(out: Path, prm_path: Path, questions, seed: int, n_values=(1, 2, 4, 8, 16)):
    """Accuracy vs N from one generation per question; results.md, results.csv and accuracy_vs_n.png."""
    from trl_vlprm.eval.report import plot_accuracy_vs_n, rows_to_markdown, write_tables
    from trl_vlprm.eval.tts_sweep import run_sweep
    from trl_vlprm.guidance.scorer import PRMScorer
    from trl_vlprm.testbed import GoldOracleScorer, RandomScorer, ScriptedPolicy

    eval_dir = out / "eval_tts"
    scorers = {
        "vlprm": PRMScorer.from_pretrained(prm_path),
        "oracle": GoldOracleScorer(),
        "random": RandomScorer(seed),
    }
    policies = {"scripted-systematic": lambda: ScriptedPolicy(**SYSTEMATIC_POLICY, seed=seed)}
    rows = run_sweep({"testbed-learnable": questions}, policies, scorers, SWEEP_SELECTIONS, list(n_values), eval_dir,
                     num_subsamples=8, seed=seed)  # fmt: skip
    write_tables(rows, eval_dir)
    plot_accuracy_vs_n(rows, eval_dir / "accuracy_vs_n.png", title="learnable testbed, systematic misreadings")
    return eval_dir, rows, rows_to_markdown(rows)


def view_page(eval_dir: Path, questions) -> Path:
    """The evaluation's samples on one HTML page (`trl-vlprm view`): every step's score under each scorer."""
    from trl_vlprm.eval.tts_sweep import samples_path
    from trl_vlprm.eval.viewer import write_view

    samples = samples_path(eval_dir, "testbed-learnable", "scripted-systematic")
    title = "demo evaluation: learnable testbed, systematic misreadings (picks: best_of_n:min)"
    return write_view([samples], eval_dir / "view.html", questions=questions, title=title).path


def real_images(learnable_prm: Path, lookalike_prm: Path, limit: int) -> dict[str, dict[str, float]]:
    """Perception AUC (gold over perturbed captions) on PuzzleVQA of the learnable-tier PRM and the lookalike-tier
    PRM: pooled over the colour-based types, the same with every puzzle scored against another puzzle's image (what
    survives is read from the text: the lookalike PRM's AUC is its rule that PuzzleVQA never draws pink, brown,
    gray, white or black, docs/testbed.md), on the swaps from one drawn colour to another (which only the image can
    catch: both PRMs are at chance there), and over the shape, size and number types, where neither PRM is above
    chance, and AlgoPuzzleVQA's captioned types (captions written from each puzzle's `solution`: clocks, calendars,
    jugs, grids, boards; nothing like the tiers); then the lookalike PRM's table per type. Skipped, saying so, when
    the benchmark folder is absent."""
    from trl_vlprm.data.puzzlevqa import default_benchmarks_root
    from trl_vlprm.eval.transfer import DRAWN_COLOUR, PUZZLEVQA_COLOUR_TYPES, puzzlevqa_transfer
    from trl_vlprm.guidance.scorer import PRMScorer

    try:
        root = default_benchmarks_root()
    except FileNotFoundError as err:
        print(f"   skipped: {err}")
        return {}
    if not (root / "PuzzleVQA" / "data").is_dir():
        print(f"   skipped: no PuzzleVQA in {root}")
        return {}
    lines = ["   | PRM trained on | colour-based types | same, each with the next puzzle's image | swaps between "
             "drawn colours (only the image tells) | shape, size and number types | reasoning (all types) | "
             "AlgoPuzzleVQA captions (8 types) |", "   |---|---|---|---|---|---|---|"]  # fmt: skip
    results, report = {}, None
    for name, path in (("learnable tier (one shape)", learnable_prm), ("lookalike tier", lookalike_prm)):
        scorer = PRMScorer.from_pretrained(path)
        report = puzzlevqa_transfer(scorer, root, limit_per_category=limit)
        swapped = puzzlevqa_transfer(scorer, root, PUZZLEVQA_COLOUR_TYPES, limit, swap_images=True)
        others = sorted({c for c in report.categories if c not in PUZZLEVQA_COLOUR_TYPES})
        results[name] = {"colour": report.auc("perception", PUZZLEVQA_COLOUR_TYPES), "colour_swapped": swapped.auc(),
                         "drawn_colour_swaps": report.auc("perception", PUZZLEVQA_COLOUR_TYPES, DRAWN_COLOUR),
                         "other": report.auc("perception", others), "reasoning": report.auc("reasoning")}  # fmt: skip
        if (root / "AlgoPuzzleVQA" / "data").is_dir():
            algo = puzzlevqa_transfer(scorer, root, limit_per_category=limit, benchmark="AlgoPuzzleVQA")
            results[name]["algopuzzlevqa"] = algo.auc()
        cells = [f"{v:.3f}" for v in results[name].values()] + ([] if "algopuzzlevqa" in results[name] else ["-"])
        lines.append(f"   | {name} | " + " | ".join(cells) + " |")
    print("   perception AUC (0.5 = chance); an AUC that survives another puzzle's image is read from the text alone:")
    print("\n".join(lines))
    print("   the lookalike-tier PRM, per type:")
    print("\n".join("   " + line for line in report.table()))
    return results


def image_reading_line(prm: Path, held_out) -> dict[str, float]:
    """The lookalike PRM's held-out captions scored with their own image and with the next puzzle's: a PRM that
    reads the image loses its AUC on an image its captions do not describe; one that reads the text keeps it."""
    from trl_vlprm.eval.guardrails import image_reading
    from trl_vlprm.guidance.scorer import PRMScorer

    reading = image_reading(PRMScorer.from_pretrained(prm), list(held_out), lambda row, donor: bool(row["labels"][0]))
    print(f"   held-out lookalike captions (perception AUC, {reading.num_rows} solutions): {reading.own:.3f} with "
          f"their own image, {reading.swapped_vs_labels:.3f} with the next puzzle's")  # fmt: skip
    return {"own": reading.own, "next_image": reading.swapped_vs_labels, "num_rows": reading.num_rows}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="outputs/demo")
    parser.add_argument(
        "--label_questions",
        type=int,
        default=CPURecipe.num_puzzles,
        help="training puzzles labelled by the hybrid builder (the demo's PRM learns from them)",
    )
    parser.add_argument("--train_puzzles", type=int, default=CPURecipe.num_puzzles, help="training puzzles")
    parser.add_argument("--max_steps", type=int, default=CPURecipe.max_steps, help="training steps of the hybrid PRM")
    parser.add_argument(
        "--lookalike_steps", type=int, default=CPURecipe.max_steps, help="training steps of the lookalike PRM"
    )
    parser.add_argument("--hard_steps", type=int, default=1200, help="training steps of the hard-tier PRM of step 8")
    parser.add_argument("--eval_questions", type=int, default=80, help="held-out puzzles for guidance/evaluation")
    parser.add_argument("--n", type=int, default=8, help="sampling budget of the search strategies")
    parser.add_argument("--seed", type=int, default=0, help="seed of the recipe (weights, data, trainer)")
    parser.add_argument("--transfer_limit", type=int, default=25, help="PuzzleVQA puzzles per type scored in step 7")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    recipe = CPURecipe(seed=args.seed, num_puzzles=args.train_puzzles, max_steps=args.max_steps)

    print("== 1. data + model: learnable-tier puzzles (one shape, 84 px, 9 image tokens), tiny random Qwen2-VL")
    recipe.build_model(out / "tiny-qwen2-vl")
    lookalike = CPURecipe.lookalike(seed=args.seed, num_puzzles=args.train_puzzles, max_steps=args.lookalike_steps)
    # The lookalike PRM (step 3) needs nothing from steps 2-3, so it trains in a child process from now on, on the
    # second core, while this one labels and trains the hybrid PRM.
    background = lookalike.train_in_background(out / "lookalike", log_path=out / "lookalike" / "train.log")
    print(f"   the lookalike-tier PRM of step 3 trains in the background meanwhile (log: {background.log_path})")

    print(f"== 2. labelling: {args.label_questions} training puzzles x 4 rollouts, MC (binary search) + noisy judge, "
          "consensus")  # fmt: skip
    labelled, quality = label(out, recipe, args.label_questions, seed=1000 + args.seed)  # the gold run's puzzles
    print(f"   {len(labelled)} labelled solutions; label accuracy vs gold {quality.accuracy:.3f}, bad-step F1 "
          f"{quality.bad_f1:.3f}, {quality.labelled}/{quality.total} steps kept")  # fmt: skip

    print(
        f"== 3. training: CPURecipe (value head, perception steps weigh {recipe.perception_loss_weight}x) twice: "
        f"{recipe.max_steps} steps on the {len(labelled)} hybrid-labelled solutions above, and {lookalike.max_steps} "
        f"steps on {lookalike.num_puzzles} lookalike-tier puzzles (PuzzleVQA's shapes, palette and caption phrasing, "
        f"rendered here) x {lookalike.solutions_per_puzzle} gold-labelled solutions with a verdict at every word of "
        f"the caption, on a vision tower first warmed up {lookalike.vision_warmup_steps} steps to see colours, for "
        f"the real images (step 7); and {args.hard_steps} steps on the hard tier, for step 8"
    )
    held_out = recipe.supervision(args.eval_questions, seed=1, perception_error_rate=0.3, reasoning_error_rate=0.3)
    trained = recipe.train(out / "hybrid", eval_dataset=held_out, train_dataset=labelled)
    lookalike_held_out = lookalike.supervision(
        args.eval_questions, seed=1, perception_error_rate=0.3, reasoning_error_rate=0.3
    )
    # The hard-tier PRM (step 8) trains here while the lookalike one finishes in its child (it takes longer).
    hard = CPURecipe(families="hard", seed=args.seed, num_puzzles=args.train_puzzles, max_steps=args.hard_steps)
    hard_held_out = hard.supervision(args.eval_questions, seed=1, perception_error_rate=0.3, reasoning_error_rate=0.3)
    hard_run = hard.train(out / "hard", eval_dataset=hard_held_out)
    lookalike_seconds = background.wait()
    looked = lookalike.train(out / "lookalike", eval_dataset=lookalike_held_out)  # reuses the PRM, evaluates it
    looked.train_seconds = lookalike_seconds
    summary_path = out / "summary.json"
    if not trained.metrics_before and summary_path.exists():  # a resumed run: the untrained figures were saved
        trained.metrics_before = json.loads(summary_path.read_text())["eval_before"]
    before, after = trained.metrics_before or trained.metrics_after, trained.metrics_after
    for name, run, steps_run in (("hybrid labels", trained, recipe.max_steps),
                                 ("lookalike tier, gold labels", looked, lookalike.max_steps)):  # fmt: skip
        if run.train_seconds:
            rate = steps_run / run.train_seconds
            print(f"   {name}: trained in {run.train_seconds:.0f} s ({rate:.1f} steps/s)")
    warmup = looked.vision_warmup
    if warmup is not None and looked.train_seconds:
        print(f"   the lookalike PRM's vision warm-up: held-out colour accuracy {warmup.held_out_accuracy:.3f} "
              f"(majority class {warmup.majority_accuracy:.3f}) in {warmup.seconds:.0f} s")  # fmt: skip
    print(f"   held-out step verdicts ({args.eval_questions} learnable-tier puzzles, gold labels):")
    columns = {"untrained": before, "hybrid-trained": after}
    print("\n".join(step_table(columns, held_out)))
    print(f"   the lookalike-tier PRM on {args.eval_questions} held-out lookalike puzzles (gold labels):")
    print("\n".join(step_table({"lookalike-trained": looked.metrics_after}, lookalike_held_out)))
    from trl_vlprm.trainer.metrics import verdict_warnings

    for line in verdict_warnings(after):
        print("   hybrid-trained PRM: " + line)
    print(f"   the PRM used in steps 4-6 is the hybrid-trained one ({trained.path})")

    print("== 4. guard-rails")
    print("\n".join(guard_rails(trained.path, held_out)))

    from trl_vlprm.testbed import generate_puzzles

    questions = generate_puzzles(args.eval_questions, seed=2, families=recipe.families, image_size=recipe.image_size)
    print(
        f"== 5. guidance: strategies with the trained PRM, N={args.n}, {args.eval_questions} held-out puzzles, "
        f"policy with systematic misreadings {SYSTEMATIC_POLICY}"
    )
    table = guidance_table(out, trained.path, questions, args.n, seed=2)
    print("   | strategy | accuracy |\n   |---|---|")
    for name, accuracy in table:
        print(f"   | {name} | {accuracy:.3f} |")

    print("== 6. evaluation: accuracy vs N from one generation (trained PRM, oracle, random)")
    from trl_vlprm.eval.guardrails import sweep_below_random

    eval_dir, rows, markdown = sweep(out, trained.path, questions, seed=2)
    print(markdown)
    for warning in sweep_below_random(rows, "vlprm"):
        print("   " + warning)
    print(f"   plot: {eval_dir / 'accuracy_vs_n.png'}")
    print(f"   every step, scorer by scorer (open in a browser): {view_page(eval_dir, questions)}")

    print(f"== 7. real images: PuzzleVQA's process bench (gold vs perturbed captions, first {args.transfer_limit} "
          "puzzles of each type, read in place; never trained on)")  # fmt: skip
    transfer = real_images(trained.path, looked.path, args.transfer_limit)
    reading = image_reading_line(looked.path, lookalike_held_out)
    print(f"== 8. where a tiny PRM helps and where it does not: held-out perception steps ({args.eval_questions} "
          "puzzles a tier, gold labels) of the tier each PRM was trained on")  # fmt: skip
    if hard_run.train_seconds:
        print(f"   hard tier: trained {hard.max_steps} steps in {hard_run.train_seconds:.0f} s (step 3, while the "
              "lookalike PRM finished)")  # fmt: skip
    print("\n".join(tier_table([("learnable (one large shape)", "hybrid labels", after, held_out),
                                ("lookalike (PuzzleVQA's vocabulary)", "gold, a verdict at every word",
                                 looked.metrics_after, lookalike_held_out),
                                ("hard (grids, counts, digit sums, clocks)", "gold", hard_run.metrics_after,
                                 hard_held_out)])))  # fmt: skip
    summary = {"label_quality": asdict(quality), "eval_before": before, "eval_after": after,
               "eval_after_lookalike": looked.metrics_after, "guidance": dict(table), "sweep": rows,
               "train_seconds": trained.train_seconds, "train_seconds_lookalike": looked.train_seconds,
               "puzzlevqa_transfer": transfer, "image_reading": reading,
               "eval_after_hard": hard_run.metrics_after}  # fmt: skip
    summary_path.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
