"""`trl-vlprm view` at scale: the page of an evaluation of 10,000 questions, its size, and its load time in Chromium.

    python benchmarks/viewer_scale.py                       # 10,000 questions x 8 samples, oracle + random scorers
    python benchmarks/viewer_scale.py --questions 1000 --samples 4

A real sweep (`run_sweep`: scripted testbed policy, oracle and random scorers) writes the samples file; the page is
written by the public `write_view`, then opened in headless Chromium (benchmarks/_browser.py), which reports when
the page's script had parsed the data and drawn the first page (`data-ready-ms`, from navigation start), and how
long one filter change and one "next page" take. Agreement checks: the page holds every question, the first page
draws `page_size` of them, and the "wrong picks" filter keeps exactly the questions the sweep's own selection code
grades wrong.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _browser import headless_chromium
from _common import machine


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=10_000, help="questions in the evaluation")
    parser.add_argument("--samples", type=int, default=8, help="solutions sampled per question (N)")
    parser.add_argument("--image_size", type=int, default=168, help="side of the testbed images, pixels")
    parser.add_argument("--page_size", type=int, default=50, help="questions the page draws at a time")
    parser.add_argument("--output_dir", default=None, help="where the samples and the page go (default: a temp dir)")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    from trl_vlprm.eval.selection import selection_correct
    from trl_vlprm.eval.tts_sweep import run_sweep, samples_path
    from trl_vlprm.eval.viewer import write_view
    from trl_vlprm.testbed import GoldOracleScorer, RandomScorer, ScriptedPolicy, generate_puzzles

    out = Path(args.output_dir or tempfile.mkdtemp(prefix="viewer_scale_"))
    questions = list(generate_puzzles(args.questions, seed=0, image_size=args.image_size))
    scorers = {"oracle": GoldOracleScorer(), "random": RandomScorer(0)}
    policy = ScriptedPolicy(0.3, 0.2, seed=0)
    start = time.perf_counter()
    run_sweep({"tb": questions}, {"p": policy}, scorers, ["best_of_n:min"], [args.samples], out, num_subsamples=1)
    sweep_seconds = time.perf_counter() - start
    samples = samples_path(out, "tb", "p")
    start = time.perf_counter()
    summary = write_view([samples], out / "view.html", questions=questions, page_size=args.page_size)
    write_seconds = time.perf_counter() - start
    records = [json.loads(line) for line in samples.read_text().splitlines()]
    wrong = sum(not selection_correct("best_of_n:min", r["samples"], "random") for r in records)

    with headless_chromium() as browser:
        start = time.perf_counter()
        browser.open(summary.path.resolve().as_uri())
        open_seconds = time.perf_counter() - start
        ready_ms = float(browser.run("return document.body.getAttribute('data-ready-ms')"))
        drawn = browser.run("return document.querySelectorAll('.question').length")
        filter_ms, kept = browser.run(
            """const s = document.getElementById('f-scorer'); s.value = 'random';
               s.dispatchEvent(new Event('change'));
               const t = performance.now(); document.getElementById('f-wrong').click();
               return [performance.now() - t, document.getElementById('count').textContent];"""
        )
        page_ms = browser.run(
            "const t = performance.now(); document.getElementById('page-next').click(); return performance.now() - t;"
        )
    assert summary.num_questions == len(records) == args.questions, "the page lost questions"
    assert drawn == min(args.page_size, args.questions), f"first page drew {drawn} questions"
    assert kept == f"{wrong} of {args.questions} questions kept", f"filter kept {kept!r}, the sweep says {wrong} wrong"
    return {
        "questions": args.questions,
        "samples": args.samples,
        "steps": sum(len(s["steps"]) for r in records for s in r["samples"]),
        "images": summary.num_images,
        "samples_mb": samples.stat().st_size / 1e6,
        "page_mb": summary.num_bytes / 1e6,
        "sweep_s": sweep_seconds,
        "write_s": write_seconds,
        "open_s": open_seconds,
        "ready_s": ready_ms / 1000,
        "filter_ms": filter_ms,
        "next_page_ms": page_ms,
    }


def format_table(row: dict) -> str:
    header = (
        "| questions | samples | steps | images | samples file (MB) | page (MB) | write page (s) | page ready in "
        "Chromium (s) | filter (ms) | next page (ms) |"
    )
    return "\n".join(
        [
            header,
            "|---|---|---|---|---|---|---|---|---|---|",
            f"| {row['questions']} | {row['samples']} | {row['steps']} | {row['images']} | {row['samples_mb']:.1f} | "
            f"{row['page_mb']:.1f} | {row['write_s']:.1f} | {row['ready_s']:.2f} | {row['filter_ms']:.0f} | "
            f"{row['next_page_ms']:.0f} |",
        ]
    )


def main(argv: Sequence[str] | None = None) -> dict:
    row = run(parse_args(argv))
    print(machine())
    print(format_table(row))
    return row


if __name__ == "__main__":
    main()
