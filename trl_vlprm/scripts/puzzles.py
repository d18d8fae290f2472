"""`trl-vlprm puzzles`: write procedural testbed puzzles (or scripted solutions with gold step labels) to disk.

trl-vlprm puzzles --n 200 --seed 0 --out data/puzzles.parquet
trl-vlprm puzzles --n 600 --solutions 4 --out data/testbed
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import TrlParser

from trl_vlprm.scripts import command_parser


@dataclass
class PuzzlesArguments:
    """Arguments of `trl-vlprm puzzles`.

    Args:
        out (`str`): A .parquet file, or a folder written with `datasets.save_to_disk`.
        n (`int`, defaults to `200`): Number of puzzles; the families are dealt round-robin.
        seed (`int`, defaults to `0`): Seed of the puzzles (and of the scripted solutions): the same seed gives the
            same bytes.
        families (`str` or `None`, defaults to `None`): Comma-separated family names or a tier ('hard',
            'learnable'); None: the hard tier.
        image_size (`int`, defaults to `168`): Image side in pixels.
        solutions (`int`, defaults to `0`): Scripted-policy solutions sampled per puzzle, labelled by their gold
            step correctness; 0 writes the gold solutions.
        perception_error_rate (`float`, defaults to `0.3`): Perception error rate of the scripted policy (with
            `solutions` > 0).
        reasoning_error_rate (`float`, defaults to `0.3`): Reasoning error rate of the scripted policy (with
            `solutions` > 0).
    """

    out: str = field(metadata={"help": "A .parquet file, or a folder written with datasets.save_to_disk."})
    n: int = field(default=200, metadata={"help": "Number of puzzles; the families are dealt round-robin."})
    seed: int = field(
        default=0,
        metadata={"help": "Seed of the puzzles (and of the scripted solutions): the same seed gives the same bytes."},
    )
    families: str | None = field(
        default=None,
        metadata={"help": "Comma-separated family names or a tier ('hard', 'learnable'); None: the hard tier."},
    )
    image_size: int = field(default=168, metadata={"help": "Image side in pixels."})
    solutions: int = field(
        default=0,
        metadata={
            "help": "Scripted-policy solutions sampled per puzzle, labelled by their gold step correctness; 0 writes "
            "the gold solutions."
        },
    )
    perception_error_rate: float = field(
        default=0.3, metadata={"help": "Perception error rate of the scripted policy (with solutions > 0)."}
    )
    reasoning_error_rate: float = field(
        default=0.3, metadata={"help": "Reasoning error rate of the scripted policy (with solutions > 0)."}
    )


def make_parser(prog: str | None = None) -> TrlParser:
    return command_parser((PuzzlesArguments,), prog, __doc__)


def main(args: PuzzlesArguments):
    """Generate, write atomically (`trl_vlprm.data.loading.write_dataset`), print one line; returns the dataset."""
    from trl_vlprm.data.loading import write_dataset
    from trl_vlprm.testbed import generate_puzzles, resolve_families, sample_supervision

    families = resolve_families(args.families or None)
    if args.solutions > 0:
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
    counts = {name: dataset["category"].count(name) for name in families}  # rows per family
    what = f"{len(dataset)} puzzles" if args.solutions <= 0 else f"{len(dataset)} solutions of {args.n} puzzles"
    print(f"wrote {what} ({counts}) to {out}")
    return dataset
