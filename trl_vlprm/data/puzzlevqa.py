"""Loaders of PuzzleVQA and AlgoPuzzleVQA in their upstream layout, and PuzzleVQA's gold reasoning as step labels.

Layout: `<root>/<Benchmark>/data/<category>.json`, one JSON record a line, with `image` relative to `data/`.
PuzzleVQA records also hold the gold reasoning in three parts, `caption` (what the image shows), `explanation`
(the pattern) and `deduction` (the answer); `gold_solution` turns them into a perception step and two reasoning
steps, and `perturb_solution` into labelled negatives (first-error convention: every step from the perturbed one
on is labelled False).
"""

from __future__ import annotations

import json
import os
import random
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .schema import PERCEPTION, REASONING, RecordError, format_prompt, stepwise_features

QUESTION_FIELDS = ("image", "question", "options", "answer")
GOLD_FIELDS = ("caption", "explanation", "deduction")
PERTURBATION_KINDS = (PERCEPTION, REASONING)

# Details a caption states about the image, grouped so a swap stays within a kind (a colour for a colour...).
_DETAIL_WORDS = {
    "colour": ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "gray", "white", "black"),
    "size": ("small", "medium", "large"),
    "length": ("short", "medium", "long"),
    "shape": ("circle", "triangle", "square", "pentagon", "hexagon"),
}
# The colour names a perturbed caption draws from; PuzzleVQA draws its parts in the first six, the other five never
# appear in its images.
COLOUR_NAMES = _DETAIL_WORDS["colour"]
PUZZLEVQA_DRAWN_COLOURS = COLOUR_NAMES[:6]
_WORD_KIND = {w: k for k, words in _DETAIL_WORDS.items() for w in words if w != "medium"}
_DETAIL = re.compile(r"\b(\d+|" + "|".join(sorted(_WORD_KIND, key=len, reverse=True)) + r")\b")
_BRACKETS = re.compile(r"\[[^\]]*\]")


PromptBuilder = Callable[[str, list[str]], str]


def default_benchmarks_root() -> Path:
    """`$TRL_VLPRM_SHARED/benchmarks` (read in place, never copied).

    There is deliberately no fallback next to the package: an installed wheel has no `../shared`, so a default
    computed from `__file__` would only work from a source checkout. Pass the folder, or set the variable.
    """
    shared = os.environ.get("TRL_VLPRM_SHARED")
    if not shared:
        raise FileNotFoundError(
            "no benchmark folder given and TRL_VLPRM_SHARED is not set: pass the folder that holds "
            "PuzzleVQA/ and AlgoPuzzleVQA/ (e.g. --source), or set TRL_VLPRM_SHARED to its parent"
        )
    return Path(shared) / "benchmarks"


def read_jsonl(path: str | Path, required: Sequence[str] = QUESTION_FIELDS) -> list[tuple[int, dict[str, Any]]]:
    """(line number, record) for every non-blank line; a malformed line raises `RecordError` naming file and line."""
    path = Path(path)
    records = []
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path} line {line_number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise RecordError(where, "<json>", f"malformed JSON ({err.msg} at column {err.colno})") from err
            if not isinstance(record, dict):
                raise RecordError(where, "<json>", f"expected a JSON object, got {type(record).__name__}")
            for name in required:
                if name not in record or record[name] is None:
                    raise RecordError(where, name, "missing")
            records.append((line_number, record))
    return records


def _question_record(
    raw: Mapping[str, Any],
    data_dir: Path,
    where: str,
    benchmark: str,
    category: str,
    index: int,
    with_gold: bool,
    prompt_builder: PromptBuilder | None = None,
) -> dict[str, Any]:
    options = raw["options"]
    if not isinstance(options, list) or not options:
        raise RecordError(where, "options", f"expected a non-empty list, got {options!r}")
    options = [str(o) for o in options]
    answer = str(raw["answer"])
    if answer not in options:
        raise RecordError(where, "answer", f"{answer!r} is not among the options {options}")
    image_path = data_dir / str(raw["image"])
    if not image_path.is_file():
        raise RecordError(where, "image", f"image file not found: {image_path}")
    record = {
        "id": f"{benchmark}/{category}/{index:04d}",
        "prompt": (prompt_builder or format_prompt)(str(raw["question"]), options),
        "images": [str(image_path)],
        "answer": answer,
        "options": options,
        "category": category,
    }
    if with_gold:
        record.update({name: " ".join(str(raw[name]).split()) for name in GOLD_FIELDS})
    return record


def load_puzzlevqa(
    root: str | Path,
    benchmark: str = "PuzzleVQA",
    categories: list[str] | None = None,
    limit_per_category: int | None = None,
    prompt_builder: PromptBuilder | None = None,
    with_solution: bool = False,
):
    """Question records of a benchmark in the upstream layout, as a `datasets.Dataset`.

    Args:
        root: folder holding `<benchmark>/data/<category>.json`.
        benchmark: "PuzzleVQA" or "AlgoPuzzleVQA" (any folder in the same layout works).
        categories: category names (file stems); all files in `data/`, sorted, when None.
        limit_per_category: keep the first records of each category (all when None).
        prompt_builder: `(question, options) -> prompt` (with its "<image>"); default `format_prompt`.
        with_solution: keep each record's `solution` (AlgoPuzzleVQA's per-type state object) as JSON text in a
            `solution` column; a record without one raises `RecordError` naming its file and line.

    Returns:
        Columns id ("<benchmark>/<category>/<line index>"), prompt ("<image>", question, lettered options),
        images (one Image, read lazily from its path), answer, options (strings), category; PuzzleVQA adds its
        gold `caption`, `explanation` and `deduction` (whitespace collapsed to one line each).
    """
    from datasets import Dataset, Features, Value

    data_dir = Path(root) / benchmark / "data"
    if not data_dir.is_dir():
        raise FileNotFoundError(f"no benchmark folder {data_dir} (expected <root>/<benchmark>/data/<category>.json)")
    names = categories if categories is not None else sorted(p.stem for p in data_dir.glob("*.json"))
    with_gold = benchmark == "PuzzleVQA"
    required = QUESTION_FIELDS + (GOLD_FIELDS if with_gold else ()) + (("solution",) if with_solution else ())
    records = []
    for category in names:
        path = data_dir / f"{category}.json"
        if not path.is_file():
            raise FileNotFoundError(f"category {category!r} of {benchmark} has no file {path}")
        rows = read_jsonl(path, required)
        if limit_per_category is not None:
            rows = rows[:limit_per_category]
        for line_number, raw in rows:
            where = f"{path} line {line_number}"
            record = _question_record(
                raw, data_dir, where, benchmark, category, line_number - 1, with_gold, prompt_builder
            )
            if with_solution:
                record["solution"] = json.dumps(raw["solution"])
            records.append(record)
    features = stepwise_features(with_types=False)
    features = {name: features[name] for name in ("id", "prompt", "images", "answer", "options", "category")}
    if with_gold:
        features.update({name: Value("string") for name in GOLD_FIELDS})
    if with_solution:
        features["solution"] = Value("string")
    return Dataset.from_list(records, features=Features(features))


def gold_solution(record: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """PuzzleVQA's gold reasoning as steps: caption (perception), explanation and deduction (reasoning)."""
    steps = []
    for name in GOLD_FIELDS:
        text = " ".join(str(record.get(name) or "").split())
        if not text:
            raise RecordError(record.get("id", "?"), name, "missing or empty; gold_solution needs PuzzleVQA records")
        steps.append(text)
    return steps, [PERCEPTION, REASONING, REASONING]


def _swap_detail(caption: str, rng: random.Random) -> str | None:
    inside = [m for b in _BRACKETS.finditer(caption) for m in _DETAIL.finditer(caption, b.start(), b.end())]
    matches = inside or list(_DETAIL.finditer(caption))
    if not matches:
        return None
    match = rng.choice(matches)
    word = match.group(0)
    if word.isdigit():
        new = str(max(0, int(word) + rng.choice((-2, -1, 1, 2))))
        new = new if new != word else str(int(word) + 1)
    else:
        new = rng.choice([w for w in _DETAIL_WORDS[_WORD_KIND[word]] if w != word])
    return caption[: match.start()] + new + caption[match.end() :]


def swapped_in_word(gold: str, perturbed: str) -> str | None:
    """The word a perturbed caption (`perturb_solution`'s "perception" negative) writes where `gold` has another:
    a colour name, a size, a length, a shape or a number; None when the two hold the same words."""
    added = Counter(re.findall(r"\w+", perturbed)) - Counter(re.findall(r"\w+", gold))
    return next(iter(added), None)


def perturb_solution(
    record: Mapping[str, Any], kind: str, rng: random.Random | int = 0
) -> tuple[list[str], list[bool], list[str]]:
    """A labelled negative trace from PuzzleVQA's gold solution: (steps, labels, step_types).

    Args:
        record: a PuzzleVQA record (from `load_puzzlevqa`, or raw) with caption/explanation/deduction/answer/options.
        kind: "perception" changes one detail the caption states (a colour, size, length, shape or number, preferring
            the bracketed lists that describe the image): labels [False, False, False]. "reasoning" makes the
            deduction conclude with a wrong option: labels [True, True, False].
        rng: a `random.Random` or a seed.
    """
    if kind not in PERTURBATION_KINDS:
        raise ValueError(f"perturbation kind {kind!r}; expected one of {PERTURBATION_KINDS}")
    rng = rng if isinstance(rng, random.Random) else random.Random(rng)
    steps, types = gold_solution(record)
    row = record.get("id", "?")
    if kind == PERCEPTION:
        caption = _swap_detail(steps[0], rng)
        if caption is None:
            raise RecordError(row, "caption", "states no colour, size, shape or number that could be misread")
        return [caption] + steps[1:], [False, False, False], types
    answer = str(record["answer"])
    wrong = [str(o) for o in record["options"] if str(o) != answer]
    occurrences = list(re.finditer(r"(?<![\w.])" + re.escape(answer) + r"(?![\w])", steps[2]))
    if not occurrences or not wrong:
        raise RecordError(row, "deduction", f"does not state the answer {answer!r}, or no wrong option exists")
    last = occurrences[-1]
    deduction = steps[2][: last.start()] + rng.choice(wrong) + steps[2][last.end() :]
    return steps[:2] + [deduction], [True, True, False], types


def build_puzzlevqa_supervision(
    root: str | Path,
    categories: list[str] | None = None,
    limit_per_category: int | None = None,
    seed: int = 0,
    kinds: Sequence[str] = PERTURBATION_KINDS,
):
    """Stepwise-supervision records from PuzzleVQA: per puzzle the gold trace plus one negative of each kind.

    Ids are `<question id>#gold` / `#perception` / `#reasoning`; each negative's perturbation is seeded by
    `(seed, question id, kind)`, so adding categories never changes the others' negatives.
    """
    from datasets import Dataset, Image, List

    questions = load_puzzlevqa(root, "PuzzleVQA", categories, limit_per_category)
    questions = questions.cast_column("images", List(Image(decode=False)))  # keep paths: no decode + re-encode
    records = []
    for question in questions:
        base = {k: question[k] for k in ("prompt", "images", "answer", "options", "category")}
        steps, types = gold_solution(question)
        records.append(
            {
                **base,
                "id": f"{question['id']}#gold",
                "completions": steps,
                "labels": [True] * len(steps),
                "step_types": types,
            }
        )
        for kind in kinds:
            rng = random.Random(f"{seed}:{question['id']}:{kind}")
            steps, labels, types = perturb_solution(question, kind, rng)
            records.append(
                {**base, "id": f"{question['id']}#{kind}", "completions": steps, "labels": labels, "step_types": types}
            )
    return Dataset.from_list(records, features=stepwise_features(with_types=True))
