"""The paper's evaluation benchmarks as question records (schema of `trl_vlprm.data.schema`).

Every loader returns a `datasets.Dataset` with columns `id`, `prompt` (one "<image>" per image, in order), `images`,
`answer`, `options`, `category` and `answer_kind` (the kind `trl_vlprm.data.answers.grade` should use).
`prompt_style="paper"` writes each prompt as the paper's policy saw it (`trl_vlprm.eval.paper_prompts`: its
instructions, option layout, image first; MathVision options left out when they are just A-E); the default style
is the plain question with lettered options. Hub
benchmarks go through `datasets.load_dataset(source, split=...)`, so `source` is a hub name on a connected machine
or a local copy in the same layout (a folder of parquet files, or a `save_to_disk` folder).

| name            | default source        | split      | layout read                                              |
|-----------------|-----------------------|------------|----------------------------------------------------------|
| `mmmu`          | `MMMU/MMMU`           | validation | a config a subject; image_1..image_7 cited as `<image k>` |
| `mathvista`     | `AI4Math/MathVista`   | testmini   | decoded_image, query, choices, question/answer_type      |
| `mathvision`    | `MathLLMs/MathVision` | test       | (decoded_)image cited as `<imageN>`, options, level      |
| `puzzlevqa`     | `$TRL_VLPRM_SHARED/benchmarks` | - | upstream JSON layout, via `trl_vlprm.data.puzzlevqa`   |
| `algopuzzlevqa` | `$TRL_VLPRM_SHARED/benchmarks` | - | same                                                   |
| `testbed`       | generated             | -          | `trl_vlprm.testbed.generate_puzzles` (CPU testbed)       |
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trl_vlprm.data.schema import IMAGE_PLACEHOLDER, RecordError, option_letter, question_columns
from trl_vlprm.eval import paper_prompts
from trl_vlprm.registry import Registry

PROMPT_STYLES = ("default", "paper")
# The paper's puzzle subsets: the first 50 questions of every puzzle type (PuzzleVQA 20 types = 1,000 questions,
# AlgoPuzzleVQA 18 types = 900), in the paper's type order (puzzleTest_helpers.PUZZLE_DATASET_TYPES).
PAPER_PUZZLES_PER_TYPE = 50
PAPER_PUZZLEVQA_TYPES = (
    "triangle", "color_grid", "color_hexagon", "color_number_hexagon", "color_overlap_squares", "color_size_circle",
    "grid_number_color", "grid_number", "polygon_sides_color", "polygon_sides_number", "rectangle_height_color",
    "rectangle_height_number", "shape_morph", "shape_reflect", "shape_size_grid", "shape_size_hexagon", "size_cycle",
    "size_grid", "circle_size_number", "venn",
)  # fmt: skip
PAPER_ALGOPUZZLEVQA_TYPES = (
    "board_tile", "calendar", "chain_link", "checker_move", "clock", "colour_hue", "map", "maze", "move_box",
    "n_queens", "number_slide", "rotting_kiwi", "rubiks_cube", "think_dot", "tower_of_hanoi", "water_jugs",
    "wheel_of_fortune", "wood_slide",
)  # fmt: skip

MMMU_SUBJECTS = (
    "Accounting", "Agriculture", "Architecture_and_Engineering", "Art", "Art_Theory", "Basic_Medical_Science",
    "Biology", "Chemistry", "Clinical_Medicine", "Computer_Science", "Design", "Diagnostics_and_Laboratory_Medicine",
    "Economics", "Electronics", "Energy_and_Power", "Finance", "Geography", "History", "Literature", "Manage",
    "Marketing", "Materials", "Math", "Mechanical_Engineering", "Music", "Pharmacy", "Physics", "Psychology",
    "Public_Health", "Sociology",
)  # fmt: skip


@dataclass(frozen=True)
class BenchmarkSpec:
    """A benchmark of the registry: `loader(source, split, limit, prompt_style) -> Dataset` and its defaults.

    `limits_itself`: the loader reads `limit` itself (per category, or how many to generate); otherwise
    `load_benchmark` keeps the first `limit` questions of what it returns.
    """

    loader: Callable[..., Any]
    default_source: str | None
    default_split: str | None
    limits_itself: bool = False


BENCHMARKS: Registry[BenchmarkSpec] = Registry("benchmark")


def benchmark(
    name: str, default_source: str | None = None, default_split: str | None = None, limits_itself: bool = False
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: registers `loader(source, split, limit, prompt_style) -> Dataset` as benchmark `name`."""

    def decorator(loader: Callable[..., Any]) -> Callable[..., Any]:
        BENCHMARKS.register(name)(BenchmarkSpec(loader, default_source, default_split, limits_itself))
        return loader

    return decorator


def question_features():
    """Features of an evaluation question record: the shared question columns plus its `answer_kind`."""
    from datasets import Features, Value

    return Features({**question_columns(), "answer_kind": Value("string")})


def lettered_options(options: Sequence[str]) -> str:
    return "\n".join(f"({option_letter(i)}) {option}" for i, option in enumerate(options))


def _to_dataset(records: list[dict[str, Any]]):
    from datasets import Dataset

    return Dataset.from_list(records, features=question_features())


def _load_split(source: str, split: str, **kwargs):
    from datasets import load_dataset, load_from_disk

    if Path(source, "dataset_info.json").is_file() or Path(source, "dataset_dict.json").is_file():
        loaded = load_from_disk(source)  # a save_to_disk copy
        return loaded[split] if hasattr(loaded, "keys") else loaded
    return load_dataset(source, split=split, **kwargs)


def _cited_images(text: str, pattern: re.Pattern, images: Mapping[int, Any], row: str) -> tuple[str, list[Any]]:
    """Replace every image citation in `text` by "<image>" and list the cited images in order of citation."""
    cited = []

    def replace(match: re.Match) -> str:
        k = int(match.group(1))
        if images.get(k) is None:
            raise RecordError(row, f"image_{k}", f"cited as {match.group(0)!r} but missing")
        cited.append(images[k])
        return IMAGE_PLACEHOLDER

    return pattern.sub(replace, text), cited


# ---------------------------------------------------------------- MMMU

_MMMU_CITATION = re.compile(r"<image (\d+)>")


def _check_style(prompt_style: str) -> None:
    if prompt_style not in PROMPT_STYLES:
        raise ValueError(f"unknown prompt_style {prompt_style!r}; expected one of {PROMPT_STYLES}")


def mmmu_record(row: Mapping[str, Any], subject: str = "", prompt_style: str = "default") -> dict[str, Any]:
    """One MMMU row as a question record (citations become "<image>"; uncited images go first)."""
    _check_style(prompt_style)
    rid = str(row.get("id", "?"))
    try:
        options = ast.literal_eval(row["options"]) if isinstance(row["options"], str) else list(row["options"])
    except (ValueError, SyntaxError) as err:
        raise RecordError(rid, "options", f"not a list literal: {row['options']!r}") from err
    images = {k: row.get(f"image_{k}") for k in range(1, 8)}
    if prompt_style == "paper":
        text = paper_prompts.mmmu_prompt(row["question"], [str(o) for o in options])
    else:
        text = row["question"] + ("\n" + lettered_options(options) if options else "")
    prompt, cited = _cited_images(text, _MMMU_CITATION, images, rid)
    cited_numbers = {int(k) for k in _MMMU_CITATION.findall(text)}
    uncited = [images[k] for k in sorted(images) if images[k] is not None and k not in cited_numbers]
    multiple_choice = row.get("question_type", "multiple-choice") == "multiple-choice" and bool(options)
    return {
        "id": rid,
        "prompt": IMAGE_PLACEHOLDER * len(uncited) + ("\n" if uncited else "") + prompt,
        "images": uncited + cited,
        "answer": str(row["answer"]),
        "options": [str(o) for o in options],
        "category": row.get("subfield") or subject,
        "answer_kind": "multiple_choice" if multiple_choice else "auto",
    }


def load_mmmu(
    source: str = "MMMU/MMMU",
    split: str = "validation",
    subjects: Sequence[str] | None = None,
    prompt_style: str = "default",
):
    """MMMU questions: one `load_dataset(source, subject, split=split)` per subject (all 30 by default).

    A local folder whose subjects are sub-folders (the hub layout `<Subject>/validation-*.parquet`) is read with
    `data_dir=<Subject>`; a folder without sub-folders is read as one split.
    """
    records = []
    local = Path(source).is_dir()
    if local and subjects is None:
        subjects = sorted(p.name for p in Path(source).iterdir() if p.is_dir() and p.name in MMMU_SUBJECTS) or [""]
    for subject in subjects or MMMU_SUBJECTS:
        if local:
            rows = _load_split(source, split, **({"data_dir": subject} if subject else {}))
        else:
            rows = _load_split(source, split, name=subject)
        records.extend(mmmu_record(row, subject, prompt_style) for row in rows)
    return _to_dataset(records)


@benchmark("mmmu", "MMMU/MMMU", "validation")
def _mmmu_benchmark(source, split, limit, prompt_style):
    return load_mmmu(source, split, None, prompt_style)


# ---------------------------------------------------------------- MathVista

_MATHVISTA_KINDS = {"integer": "numeric", "float": "numeric", "text": "free_form", "list": "free_form"}


def mathvista_record(row: Mapping[str, Any], prompt_style: str = "default") -> dict[str, Any]:
    """One MathVista row: the image and the official `query` (hint + question + choices), or the paper's prompt."""
    _check_style(prompt_style)
    rid = str(row.get("pid", "?"))
    if row.get("decoded_image") is None:
        raise RecordError(rid, "decoded_image", "missing")
    choices = [str(c) for c in (row.get("choices") or [])]
    if row.get("question_type") == "multi_choice":
        kind = "multiple_choice"
    else:
        kind = _MATHVISTA_KINDS.get(row.get("answer_type"), "auto")
    metadata = row.get("metadata") or {}
    if prompt_style == "paper":
        text = paper_prompts.mathvista_prompt(
            row["question"],
            choices,
            row.get("question_type") or "",
            row.get("answer_type") or "",
            row.get("precision"),
            row.get("unit"),
        )
        prompt = IMAGE_PLACEHOLDER + text
    else:
        prompt = IMAGE_PLACEHOLDER + "\n" + (row.get("query") or row["question"])
    return {
        "id": rid,
        "prompt": prompt,
        "images": [row["decoded_image"]],
        "answer": str(row["answer"]),
        "options": choices,
        "category": metadata.get("task") or metadata.get("category") or "",
        "answer_kind": kind,
    }


def load_mathvista(source: str = "AI4Math/MathVista", split: str = "testmini", prompt_style: str = "default"):
    return _to_dataset([mathvista_record(row, prompt_style) for row in _load_split(source, split)])


@benchmark("mathvista", "AI4Math/MathVista", "testmini")
def _mathvista_benchmark(source, split, limit, prompt_style):
    return load_mathvista(source, split, prompt_style)


# ---------------------------------------------------------------- MathVision

_MATHVISION_CITATION = re.compile(r"<image(\d+)>")


def mathvision_record(row: Mapping[str, Any], prompt_style: str = "default") -> dict[str, Any]:
    """One MathVision row: options lettered A-E when present (gold is then a letter), else a numeric/text answer.

    The paper's style puts the image first and keeps the question's "<imageN>" citation as text, as its policy saw
    it, and lists the options only when they say more than "A".."E".
    """
    _check_style(prompt_style)
    rid = str(row.get("id", "?"))
    image = row.get("decoded_image") if row.get("decoded_image") is not None else row.get("image")
    if image is None or isinstance(image, str):
        raise RecordError(rid, "decoded_image", "no decoded image (the `image` column holds only a path)")
    options = [str(o) for o in (row.get("options") or [])]
    if prompt_style == "paper":
        prompt, cited = IMAGE_PLACEHOLDER + paper_prompts.mathvision_prompt(row["question"], options).strip(), [image]
    else:
        text = row["question"] + ("\n" + lettered_options(options) if options else "")
        prompt, cited = _cited_images(text, _MATHVISION_CITATION, {k: image for k in range(1, 10)}, rid)
        if not cited:
            prompt, cited = IMAGE_PLACEHOLDER + "\n" + prompt, [image]
    return {
        "id": rid,
        "prompt": prompt,
        "images": cited,
        "answer": str(row["answer"]),
        "options": options,
        "category": f"{row.get('subject', '')}/level{row.get('level', '')}",
        "answer_kind": "multiple_choice" if options else "auto",
    }


def load_mathvision(source: str = "MathLLMs/MathVision", split: str = "test", prompt_style: str = "default"):
    return _to_dataset([mathvision_record(row, prompt_style) for row in _load_split(source, split)])


@benchmark("mathvision", "MathLLMs/MathVision", "test")
def _mathvision_benchmark(source, split, limit, prompt_style):
    return load_mathvision(source, split, prompt_style)


# ---------------------------------------------------------------- puzzles


def load_puzzle_benchmark(
    source: str | None = None, benchmark: str = "PuzzleVQA", limit_per_category=None, prompt_style: str = "default"
):
    """PuzzleVQA / AlgoPuzzleVQA questions (multiple choice) from the upstream layout under `source`.

    The paper's style reads the paper's puzzle types in its order (a missing type is an error) with its prompts; its
    subset is `limit_per_category=PAPER_PUZZLES_PER_TYPE`.
    """
    from trl_vlprm.data.puzzlevqa import default_benchmarks_root, load_puzzlevqa

    _check_style(prompt_style)
    categories, builder = None, None
    if prompt_style == "paper":
        algo = benchmark == "AlgoPuzzleVQA"
        categories = list(PAPER_ALGOPUZZLEVQA_TYPES if algo else PAPER_PUZZLEVQA_TYPES)
        text = paper_prompts.algopuzzlevqa_prompt if algo else paper_prompts.puzzlevqa_prompt

        def builder(question, options):
            return IMAGE_PLACEHOLDER + text(question, options)

    dataset = load_puzzlevqa(
        source or default_benchmarks_root(), benchmark, categories, limit_per_category, prompt_builder=builder
    )
    keep = [c for c in dataset.column_names if c in question_features()]
    return dataset.select_columns(keep).map(lambda _: {"answer_kind": "multiple_choice"})


@benchmark("puzzlevqa", limits_itself=True)
def _puzzlevqa_benchmark(source, split, limit, prompt_style):
    return load_puzzle_benchmark(source, "PuzzleVQA", limit, prompt_style)


@benchmark("algopuzzlevqa", limits_itself=True)
def _algopuzzlevqa_benchmark(source, split, limit, prompt_style):
    return load_puzzle_benchmark(source, "AlgoPuzzleVQA", limit, prompt_style)


def load_testbed(n: int = 60, seed: int = 0):
    """`n` generated testbed puzzles (the scripted policy and the oracle scorer know their truth)."""
    from trl_vlprm.testbed import generate_puzzles

    dataset = generate_puzzles(n, seed=seed)
    return dataset.map(lambda _: {"answer_kind": "multiple_choice"})


@benchmark("testbed", limits_itself=True)
def _testbed_benchmark(source, split, limit, prompt_style):
    # `source`: the generator seed (hard-tier puzzles), or the puzzles a `trl-vlprm puzzles` file holds (any tier)
    if source is not None and not str(source).isdigit():
        from trl_vlprm.data.loading import load_questions

        return load_questions(source, split or "train", limit).map(lambda _: {"answer_kind": "multiple_choice"})
    return load_testbed(limit or 60, int(source or 0))


def load_benchmark(
    name: str,
    source: str | None = None,
    split: str | None = None,
    limit: int | None = None,
    prompt_style: str = "default",
):
    """Question records of a registered benchmark.

    Args:
        name: a name in the `BENCHMARKS` registry.
        source: hub name or local path (default: the benchmark's own); for `testbed`, the generator seed or a
            `trl-vlprm puzzles` file.
        split: split to read (default: the one the paper evaluates).
        limit: keep the first `limit` questions (puzzle benchmarks: per category; testbed: how many to generate).
        prompt_style: "default" or "paper" (the paper's policy prompts; see the module docstring).
    """
    spec = BENCHMARKS.get(name)
    _check_style(prompt_style)
    dataset = spec.loader(source or spec.default_source, split or spec.default_split, limit, prompt_style)
    if limit is not None and not spec.limits_itself:
        dataset = dataset.select(range(min(limit, len(dataset))))
    return dataset
