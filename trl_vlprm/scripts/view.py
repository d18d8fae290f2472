"""`trl-vlprm view`: one self-contained HTML page of every question, solution and step of a run.

    trl-vlprm view --inputs outputs/eval_tts/samples/testbed__scripted.jsonl --output outputs/view.html
    trl-vlprm view --inputs outputs/tts/results.jsonl --questions puzzles:n=64,seed=0
    trl-vlprm view --inputs outputs/labels
    trl-vlprm view --inputs outputs/eval_tts/process_bench/testbed_num_questions=60.jsonl \
        --questions process_bench:testbed:num_questions=60

Arguments: `ViewArguments`; what the page shows: `trl_vlprm.eval.viewer`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trl import TrlParser

from trl_vlprm.scripts import command_parser


@dataclass
class ViewArguments:
    """Arguments of `trl-vlprm view`.

    Args:
        inputs (`list[str]`): Files of one kind: tts results files, evaluation sample files
            (`samples/<benchmark>__<policy>.jsonl`), process-bench line files (`process_bench/<bench>.jsonl`) or
            labelled datasets (a folder of shard-*.parquet); several are joined by question id.
        output (`str` or `None`, defaults to `None`): The HTML page to write; None writes `<first input>.html`
            beside the first input.
        questions (`str` or `None`, defaults to `None`): Where the images of the results lines come from when no
            file holds them: a dataset file or folder, "benchmark:<spec>" (an evaluation benchmark spec),
            "process_bench:<spec>" or "puzzles:n=<count>,seed=<seed>" (generated testbed puzzles); None: the source
            the run pinned (an evaluation's benchmark spec, a tts run's dataset file) and the image files the lines
            reference.
        selection (`str`, defaults to `"best_of_n:min"`): For evaluation samples: the outcome selection whose pick
            each scorer's column shows.
        n (`int` or `None`, defaults to `None`): For evaluation samples: pick among the first n samples of each
            question; None: all of them.
        max_image_side (`int`, defaults to `256`): Images are shrunk to fit this many pixels.
        page_size (`int`, defaults to `50`): Questions shown at a time.
        title (`str` or `None`, defaults to `None`): Title of the page; None: the inputs' names.
    """

    inputs: list[str] = field(
        metadata={
            "help": "Files of one kind: tts results files, evaluation sample files, process-bench line files or "
            "labelled datasets (a folder of shard-*.parquet); several are joined by question id."
        },
    )
    output: str | None = field(
        default=None,
        metadata={"help": "The HTML page to write; None writes <first input>.html beside the first input."},
    )
    questions: str | None = field(
        default=None,
        metadata={
            "help": "Where the images of the results lines come from when no file holds them: a dataset file or "
            "folder, 'benchmark:<spec>', 'process_bench:<spec>' or 'puzzles:n=<count>,seed=<seed>'; None uses "
            "the source the run pinned (an evaluation's benchmark spec, a tts run's dataset file)."
        },
    )
    selection: str = field(
        default="best_of_n:min",
        metadata={"help": "For evaluation samples: the outcome selection whose pick each scorer's column shows."},
    )
    n: int | None = field(
        default=None,
        metadata={"help": "For evaluation samples: pick among the first n samples of each question; None: all."},
    )
    max_image_side: int = field(default=256, metadata={"help": "Images are shrunk to fit this many pixels."})
    page_size: int = field(default=50, metadata={"help": "Questions shown at a time."})
    title: str | None = field(default=None, metadata={"help": "Title of the page; None uses the inputs' names."})


def make_parser(prog: str | None = None) -> TrlParser:
    return command_parser((ViewArguments,), prog, __doc__)


def load_view_questions(spec: str) -> Any:
    """The question records a `--questions` value names (see `ViewArguments.questions`)."""
    from trl_vlprm.guidance.backends import parse_spec

    kind, _, rest = spec.partition(":")
    if kind == "benchmark":
        from trl_vlprm.eval.specs import load_benchmark_spec

        return load_benchmark_spec(rest)[1]
    if kind == "process_bench":
        from trl_vlprm.eval.process_bench import load_process_bench_spec

        return load_process_bench_spec(rest)
    if kind == "puzzles":
        from trl_vlprm.testbed import generate_puzzles

        _, args, kwargs = parse_spec(spec)
        unknown = set(kwargs) - {"n", "seed", "families", "image_size"}
        if args or unknown or "n" not in kwargs:
            expected = "'puzzles:n=<count>,seed=<seed>[,families=...,image_size=...]'"
            raise ValueError(f"--questions {spec!r}: expected {expected}")
        return generate_puzzles(**kwargs)
    from trl_vlprm.data.loading import load_questions

    return load_questions(spec)


def main(args: ViewArguments) -> Path:
    """Write the page, print its path and size; returns the path."""
    from trl_vlprm.eval.viewer import write_view

    output = Path(args.output) if args.output else Path(str(Path(args.inputs[0])).rstrip("/") + ".html")
    questions = load_view_questions(args.questions) if args.questions else None
    summary = write_view(
        args.inputs,
        output,
        questions=questions,
        selection=args.selection,
        n=args.n,
        max_image_side=args.max_image_side,
        page_size=args.page_size,
        title=args.title,
    )
    print(
        f"wrote {summary.path}: {summary.num_questions} questions ({summary.kind}), {summary.num_images} images, "
        f"{summary.num_bytes / 1e6:.1f} MB"
    )
    if summary.missing_images:
        print(f"{len(summary.missing_images)} image(s) not found, e.g. {summary.missing_images[0]}; pass --questions")
    return summary.path
