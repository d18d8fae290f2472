"""`trl-vlprm` / `python -m trl_vlprm` command line: `puzzles` writes a testbed dataset, `label` builds step labels,
`check` runs the guard-rails on a trained PRM (does it look at the image? does its best-of-N beat a random pick?)."""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path


def write_dataset(dataset, out: str | Path) -> Path:
    """Write atomically: a `.parquet` path gets one Parquet file, any other path a `save_to_disk` folder.

    The data is written next to `out` under a temporary name and renamed into place, so a crash never leaves a
    half-written dataset at `out`; an existing `out` is replaced.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".parquet":
        from trl_vlprm.utils.resume import atomic_write

        return atomic_write(out, dataset.to_parquet)
    tmp_dir = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    old = None
    try:
        dataset.save_to_disk(str(tmp_dir / "data"))
        if out.exists():  # a folder cannot be replaced in one rename: move the old one aside first
            old = tmp_dir / "old"
            os.replace(out, old)
        os.replace(tmp_dir / "data", out)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return out


def _puzzles(args: argparse.Namespace) -> int:
    from trl_vlprm.testbed import generate_puzzles, resolve_families

    families = resolve_families(args.families or None)
    if args.solutions > 0:
        from trl_vlprm.testbed import sample_supervision

        dataset = sample_supervision(
            args.n,
            args.solutions,
            args.perception_error_rate,
            args.reasoning_error_rate,
            args.seed,
            families,
            args.image_size,
        )
    else:
        dataset = generate_puzzles(args.n, seed=args.seed, families=families, image_size=args.image_size)
    out = write_dataset(dataset, args.out)
    counts = {name: dataset["category"].count(name) for name in families}
    print(f"wrote {len(dataset)} puzzles ({counts}) to {out}")
    return 0


def _check(args: argparse.Namespace) -> int:
    from trl_vlprm.eval.guardrails import best_of_n_vs_random, image_swap_sensitivity
    from trl_vlprm.guidance.scorer import PRMScorer

    if args.data:
        from trl_vlprm.data.loading import load_records

        records = load_records(args.data)
        records = records.select(range(min(len(records), args.limit))) if args.limit else records
        source = args.data
    else:
        from trl_vlprm.testbed import sample_supervision

        records = sample_supervision(
            args.n,
            args.solutions,
            args.perception_error_rate,
            args.reasoning_error_rate,
            seed=args.seed,
            families=args.families,
            image_size=args.image_size,
        )
        source = f"{args.n} testbed puzzles ({args.families}) x {args.solutions} scripted solutions"
    rows = list(records)
    scorer = PRMScorer.from_pretrained(args.prm)
    print(f"PRM {args.prm} on {source}")
    print("P(correct) moved by swapping each question's image for another question's:")
    swap = image_swap_sensitivity(scorer, rows)
    print("\n".join(swap.lines()))
    print("best-of-N vs a random pick on the same labelled solutions:")
    selection = best_of_n_vs_random(scorer, rows, args.aggregation)
    print("\n".join(selection.lines()))
    return 1 if args.strict and (swap.blind or selection.below_random) else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trl-vlprm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    puzzles = sub.add_parser("puzzles", help="write procedural testbed puzzles in the stepwise-supervision schema")
    puzzles.add_argument("--n", type=int, default=200, help="number of puzzles (families dealt round-robin)")
    puzzles.add_argument("--seed", type=int, default=0, help="same seed, same bytes")
    puzzles.add_argument("--out", required=True, help="a .parquet file, or a folder for datasets.save_to_disk")
    puzzles.add_argument(
        "--families",
        default=None,
        help="comma-separated family names or a tier (hard, learnable); default: the hard tier",
    )
    puzzles.add_argument("--image-size", type=int, default=168, help="image side in pixels")
    puzzles.add_argument(
        "--solutions",
        type=int,
        default=0,
        help="sample this many scripted-policy solutions per puzzle, labelled by their gold step "
        "correctness (0: write the gold solutions)",
    )
    puzzles.add_argument("--perception-error-rate", type=float, default=0.3, help="with --solutions")
    puzzles.add_argument("--reasoning-error-rate", type=float, default=0.3, help="with --solutions")
    puzzles.set_defaults(func=_puzzles)
    check = sub.add_parser("check", help="guard-rails for a trained PRM: image-swap sensitivity and best-of-N vs "
                           "a random pick")  # fmt: skip
    check.add_argument("--prm", required=True, help="trained PRM folder (load_prm + load_processor)")
    check.add_argument("--data", default=None,
                       help="stepwise dataset with labels (folder, .jsonl, .parquet; rows of one question share the "
                            "id before '#'); default: scripted testbed solutions")  # fmt: skip
    check.add_argument("--limit", type=int, default=0, help="with --data: use the first this many rows (0: all)")
    check.add_argument("--families", default="learnable", help="testbed tier or families (without --data)")
    check.add_argument("--n", type=int, default=60, help="testbed puzzles (without --data)")
    check.add_argument("--solutions", type=int, default=8, help="scripted solutions per puzzle (without --data)")
    check.add_argument("--perception-error-rate", type=float, default=0.3, help="testbed policy (without --data)")
    check.add_argument("--reasoning-error-rate", type=float, default=0.3, help="testbed policy (without --data)")
    check.add_argument("--image-size", type=int, default=84, help="testbed image side (without --data)")
    check.add_argument("--seed", type=int, default=12345, help="testbed seed (without --data)")
    check.add_argument("--aggregation", default="min", help="step-score aggregation of best-of-N")
    check.add_argument("--strict", action="store_true", help="exit 1 when a guard-rail warns")
    check.set_defaults(func=_check)
    sub.add_parser("label", help="build step labels (arguments go to trl_vlprm.labeling.builder.main)", add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "label":  # forwarded untouched: the builder parses its own config and flags
        from trl_vlprm.labeling.builder import main as label_main

        label_main(argv[1:])
        return 0
    args = build_parser().parse_args(argv)
    return args.func(args)
