"""`trl-vlprm view`: every question, solution and step of a run on one self-contained HTML page.

    trl-vlprm view outputs/eval_tts/samples/testbed__scripted.jsonl --output view.html
    trl-vlprm view outputs/tts/results.jsonl outputs/tts/results_prm.jsonl          # runs side by side
    trl-vlprm view outputs/labels --output labels.html                                # a labelled dataset
    trl-vlprm view outputs/eval_tts/process_bench/testbed.jsonl                       # gold vs predicted first error

Inputs (`readers`): tts results files, evaluation sample files, process-bench lines and labelled datasets. Several
files of one kind are joined by question id. Each step shows its type, its truth (gold correctness, label or
verdict) and each run's score as a colour; each question its image, prompt, gold answer and every run's pick. The
summary header has, per scorer, a reliability diagram and the score histogram of good and bad steps (`summary`).
The page needs no server and no network: style, script and images (each once, shrunk to `max_image_side`) are
inline (`page`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

from trl_vlprm.eval.viewer.images import ImageTable
from trl_vlprm.eval.viewer.page import render_page
from trl_vlprm.eval.viewer.readers import (
    ViewInputError,
    detect_kind,
    read_jsonl_lines,
    read_labelled,
    read_process_bench,
    read_samples,
    read_tts,
)
from trl_vlprm.eval.viewer.sources import load_source, pinned_sources
from trl_vlprm.eval.viewer.summary import calibration, calibration_card, score_colour
from trl_vlprm.utils.resume import atomic_write_text

__all__ = ["ViewInputError", "ViewSummary", "build_view", "score_colour", "write_view"]

CONTROL_SCORERS = ("oracle", "random")  # truth and no-information controls: not "the PRM" of a filter's default


@dataclass
class ViewSummary:
    """What `write_view` wrote: the page, how many questions, its size, and the images it could not find."""

    path: Path
    kind: str
    num_questions: int
    num_bytes: int
    num_images: int
    missing_images: list[str] = field(default_factory=list)


def _flags(question: dict[str, Any]) -> dict[str, Any]:
    """What the filters and sorts read, computed once here rather than in the browser."""
    wrong = [run["name"] for run in question["runs"] if run.get("correct") is False]
    disagree: dict[str, int] = {}
    lowest: dict[str, float] = {}
    for run in question["runs"]:
        count = 0
        for index, scores in zip(run["solutions"], run["scores"]):
            truth = question["solutions"][index]["truth"]
            for score, good in zip(scores, truth):
                if score is None:
                    continue
                lowest[run["name"]] = min(lowest.get(run["name"], 1.0), score)
                count += good is not None and (score >= 0.5) != bool(good)
        disagree[run["name"]] = count
    mcjudge = 0
    for solution in question["solutions"]:
        for mc, verdict in zip(solution.get("mc_label") or [], solution.get("judge") or []):
            if mc is not None and verdict in ("correct", "incorrect"):
                mcjudge += bool(mc) != (verdict == "correct")
    types = sorted({t for s in question["solutions"] for t in s["types"] if t})
    return {"wrong": wrong, "disagree": disagree, "min": lowest, "mcjudge": mcjudge, "types": types}


def _series(questions: Sequence[dict[str, Any]]) -> dict[str, list[tuple[float, int]]]:
    """(score, truth) of every scored step with a known truth, per run name (the MC estimate of labelled data)."""
    series: dict[str, list[tuple[float, int]]] = {}
    for question in questions:
        for run in question["runs"]:
            for index, scores in zip(run["solutions"], run["scores"]):
                for score, good in zip(scores, question["solutions"][index]["truth"]):
                    if score is not None and good is not None:
                        series.setdefault(run["name"], []).append((score, good))
        for solution in question["solutions"]:
            for mc, good in zip(solution.get("mc") or [], solution["truth"]):
                if mc is not None and good is not None:
                    series.setdefault("MC estimate", []).append((mc, good))
    return series


def _needs_questions(records: Sequence[dict[str, Any]]) -> bool:
    """Whether some image reference names no readable file (so only the questions can resolve it)."""
    return any(
        not (isinstance(ref, Mapping) and ref.get("path") and Path(ref["path"]).is_file())
        for question in records
        for ref in question["images"]
    )


def build_view(
    inputs: Sequence[str | Path],
    questions: Iterable[Mapping[str, Any]] | None = None,
    selection: str = "best_of_n:min",
    n: int | None = None,
    max_image_side: int = 256,
    page_size: int = 50,
    title: str | None = None,
) -> tuple[str, ViewSummary]:
    """The page's HTML for `inputs` (files of one kind) and a summary (its `path` is the first input).

    Args:
        inputs: tts results files, evaluation sample files, process-bench line files, or labelled datasets.
        questions: question records whose in-memory images the results lines reference (generated puzzles, a
            dataset of image bytes); images read from files need none. None: the sources the run pinned (an
            evaluation's benchmark spec, a tts run's dataset; `sources`), loaded only when an image needs them.
        selection: for evaluation samples, the outcome selection whose pick each scorer's column shows.
        n: for evaluation samples, pick among the first `n` samples (None: all of them).
        max_image_side: images are shrunk to fit this many pixels.
        page_size: questions rendered at a time.
        title: the page title (default: the inputs' names).
    """
    if not inputs:
        raise ValueError("trl-vlprm view: no input file")
    paths = [Path(p) for p in inputs]
    kinds, firsts = [], []
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(2, "No such file or directory", str(path))
        first = None if path.is_dir() or path.suffix == ".parquet" else next(read_jsonl_lines(path), (0, None))[1]
        kinds.append(detect_kind(path, first))
        firsts.append(first)
    if len(set(kinds)) > 1:
        described = ", ".join(f"{p} ({k})" for p, k in zip(paths, kinds))
        raise ViewInputError(f"inputs of different kinds cannot share a page: {described}")
    kind = kinds[0]
    images = ImageTable(max_image_side, questions)
    by_id: dict[str, dict[str, Any]] = {}
    for path in paths:
        if kind == "tts":
            read_tts(path, by_id)
        elif kind == "samples":
            read_samples(path, by_id, selection, n)
        elif kind == "process_bench":
            read_process_bench(path, by_id)
        else:
            read_labelled(path, by_id, images)
    records = list(by_id.values())
    if kind != "labelled":
        if questions is None and _needs_questions(records):  # in-memory images: the sources the run pinned
            for source in pinned_sources(paths, kind, firsts):
                images.add_questions(load_source(source))
        for question in records:
            question["images"] = [
                images.resolve(ref, f"question {question['id']}") if isinstance(ref, Mapping) else None
                for ref in question["images"]
            ]
    for question in records:
        question["flags"] = _flags(question)
    run_names = list(dict.fromkeys(run["name"] for q in records for run in q["runs"]))
    scorers = [name for name in run_names if name not in CONTROL_SCORERS] + [
        name for name in run_names if name in CONTROL_SCORERS
    ]
    data = {
        "title": title or "trl-vlprm view: " + ", ".join(p.name for p in paths),
        "kind": kind,
        "kind_labelled": kind == "labelled",
        "page_size": page_size,
        "scorers": scorers,
        "step_types": sorted({t for q in records for t in q["flags"]["types"]}),
        "questions": records,
    }
    header = _header(data, records, paths, images)
    html = render_page(data, images.uris, header)
    summary = ViewSummary(paths[0], kind, len(records), len(html.encode()), len(images.uris), images.missing)
    return html, summary


def _header(data: dict[str, Any], records: Sequence[dict[str, Any]], paths: Sequence[Path], images) -> str:
    lines = [f"<h1>{escape(data['title'])}</h1>"]
    solutions = sum(len(q["solutions"]) for q in records)
    steps = sum(len(s["steps"]) for q in records for s in q["solutions"])
    lines.append(
        f"<p>{data['kind']}: {len(records)} questions, {solutions} solutions, {steps} steps from "
        f"{', '.join(escape(str(p)) for p in paths)}</p>"
    )
    if images.missing:
        lines.append(
            f'<p class="missing">{len(images.missing)} image(s) not found (first: {escape(images.missing[0])}); '
            "pass the questions they came from (--questions)</p>"
        )
    runs: dict[str, list[bool]] = {}
    for question in records:
        for run in question["runs"]:
            runs.setdefault(f"{run['name']}|{run['method']}|{run.get('n') or ''}", []).append(bool(run["correct"]))
    if runs:
        rows = "".join(
            f"<tr><td>{escape(key.split('|')[0])}</td><td>{escape(key.split('|')[1])}</td><td>{key.split('|')[2]}"
            f"</td><td>{sum(ok)}/{len(ok)} ({100 * sum(ok) / len(ok):.1f}%)</td></tr>"
            for key, ok in runs.items()
        )
        head = "<tr><th>run</th><th>strategy / selection</th><th>N</th><th>right</th></tr>"
        lines.append(f'<table class="runs">{head}{rows}</table>')
    cards = [calibration_card(calibration(name, pairs)) for name, pairs in _series(records).items()]
    if cards:
        lines.append(f'<div class="cards">{"".join(cards)}</div>')
    return "".join(lines)


def write_view(inputs: Sequence[str | Path], output: str | Path, **kwargs: Any) -> ViewSummary:
    """Write the page of `inputs` to `output` (atomically); keywords as `build_view`."""
    html, summary = build_view(inputs, **kwargs)
    output = Path(output)
    atomic_write_text(output, html)
    summary.path = output
    return summary
