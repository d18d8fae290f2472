"""`trl-vlprm check`: the guard-rails of a trained PRM (does it look at the image? does its best-of-N beat a random
pick?), on labelled records or on scripted testbed solutions.

    trl-vlprm check --prm outputs/demo/hybrid/vlprm
    trl-vlprm check --prm outputs/vlprm --data data/labelled --limit 400 --strict
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import TrlParser

from trl_vlprm.scripts import command_parser


@dataclass
class CheckArguments:
    """Arguments of `trl-vlprm check`.

    Args:
        prm (`str`): Trained PRM folder (read with `load_prm` and `load_processor`).
        data (`str` or `None`, defaults to `None`): Stepwise dataset with labels (folder, .jsonl, .parquet; rows of
            one question share their `question_id`, else the id before '#', as `trl-vlprm label` and `trl-vlprm
            puzzles --solutions` write them); None: scripted testbed solutions.
        limit (`int`, defaults to `0`): With `data`: use the first this many rows (0: all).
        families (`str`, defaults to `"learnable"`): Testbed tier or families (without `data`).
        n (`int`, defaults to `60`): Testbed puzzles (without `data`).
        solutions (`int`, defaults to `8`): Scripted solutions per puzzle (without `data`).
        perception_error_rate (`float`, defaults to `0.3`): Perception error rate of the testbed policy (without
            `data`).
        reasoning_error_rate (`float`, defaults to `0.3`): Reasoning error rate of the testbed policy (without
            `data`).
        image_size (`int`, defaults to `84`): Testbed image side in pixels (without `data`).
        seed (`int`, defaults to `12345`): Testbed seed (without `data`).
        aggregation (`str`, defaults to `"min"`): Step-score aggregation of best-of-N.
        strict (`bool`, defaults to `False`): Exit with status 1 when a guard-rail warns.
    """

    prm: str = field(metadata={"help": "Trained PRM folder (read with load_prm and load_processor)."})
    data: str | None = field(
        default=None,
        metadata={
            "help": "Stepwise dataset with labels (folder, .jsonl, .parquet; rows of one question share their "
            "question_id, else the id before '#', as trl-vlprm label and trl-vlprm puzzles --solutions write them); "
            "None: scripted testbed solutions."
        },
    )
    limit: int = field(default=0, metadata={"help": "With data: use the first this many rows (0: all)."})
    families: str = field(default="learnable", metadata={"help": "Testbed tier or families (without data)."})
    n: int = field(default=60, metadata={"help": "Testbed puzzles (without data)."})
    solutions: int = field(default=8, metadata={"help": "Scripted solutions per puzzle (without data)."})
    perception_error_rate: float = field(
        default=0.3, metadata={"help": "Perception error rate of the testbed policy (without data)."}
    )
    reasoning_error_rate: float = field(
        default=0.3, metadata={"help": "Reasoning error rate of the testbed policy (without data)."}
    )
    image_size: int = field(default=84, metadata={"help": "Testbed image side in pixels (without data)."})
    seed: int = field(default=12345, metadata={"help": "Testbed seed (without data)."})
    aggregation: str = field(default="min", metadata={"help": "Step-score aggregation of best-of-N."})
    strict: bool = field(default=False, metadata={"help": "Exit with status 1 when a guard-rail warns."})


def make_parser(prog: str | None = None) -> TrlParser:
    return command_parser((CheckArguments,), prog, __doc__)


def main(args: CheckArguments) -> int:
    """Print both guard-rails; returns the exit status (1 only with `strict` and a warning)."""
    from trl_vlprm.eval.guardrails import best_of_n_vs_random, image_swap_sensitivity
    from trl_vlprm.guidance.scorer import PRMScorer

    scorer = PRMScorer.from_pretrained(args.prm)  # first: a wrong folder fails before any data is made
    if args.data:
        from trl_vlprm.data.loading import STEP_RECORDS, load_records, require_columns

        records = load_records(args.data)
        require_columns(records, args.data, ("prompt", "images", "completions", "labels"), STEP_RECORDS)
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
    print(f"PRM {args.prm} on {source}")
    # Best-of-N first: data that does not group into questions fails before the image-swap pass is paid for.
    selection = best_of_n_vs_random(scorer, rows, args.aggregation)
    print("P(correct) moved by swapping each question's image for another question's:")
    swap = image_swap_sensitivity(scorer, rows)
    print("\n".join(swap.lines()))
    print("best-of-N vs a random pick on the same labelled solutions:")
    print("\n".join(selection.lines()))
    return 1 if args.strict and (swap.blind or selection.below_random) else 0
