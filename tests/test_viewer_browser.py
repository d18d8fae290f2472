"""`trl-vlprm view` in a real browser: headless Chromium (Debian's `chromium` + `chromium-driver`, which `make setup`
installs) driven over the W3C WebDriver protocol with plain HTTP requests from the standard library
(benchmarks/_browser.py).

The page is made from a real evaluation sweep (scripted testbed policy; oracle and random scorers), and every check
compares the DOM with the sample file and with the sweep's own selection code. The screenshot is kept in
`outputs/test-artifacts/` (or `$TRL_VLPRM_ARTIFACTS`).
"""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trl_vlprm.eval.selection import selection_correct
from trl_vlprm.eval.tts_sweep import run_sweep
from trl_vlprm.eval.viewer import score_colour, write_view
from trl_vlprm.testbed import GoldOracleScorer, RandomScorer, ScriptedPolicy, generate_puzzles

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("TRL_VLPRM_ARTIFACTS", REPO / "outputs" / "test-artifacts"))
sys.path.insert(0, str(REPO / "benchmarks"))
from _browser import browser_missing, headless_chromium  # noqa: E402  (the client benchmarks/viewer_scale.py uses)


@pytest.fixture
def browser():
    # Not a skip: `make setup` installs both (Debian packages), and CI must run this test.
    assert browser_missing() is None, browser_missing()
    with headless_chromium(1280, 1000) as driver:
        yield driver


@pytest.fixture(scope="module")
def sweep_page(tmp_path_factory):
    out = tmp_path_factory.mktemp("viewer")
    questions = list(generate_puzzles(24, seed=5, image_size=112))
    scorers = {"oracle": GoldOracleScorer(), "random": RandomScorer(0)}
    policy = ScriptedPolicy(0.3, 0.2, seed=1)
    run_sweep({"tb": questions}, {"scripted": policy}, scorers, ["best_of_n:min"], [1, 4], out, num_subsamples=1)
    samples = out / "samples" / "tb__scripted.jsonl"
    summary = write_view([samples], out / "view.html", questions=questions, page_size=10)
    records = [json.loads(line) for line in samples.read_text().splitlines()]
    return summary, records


@pytest.mark.slow
def test_page_in_chromium(browser, sweep_page):
    summary, records = sweep_page
    # every image referenced is embedded, each distinct image once (two puzzles may draw the same picture)
    distinct = {ref["digest"] for r in records for ref in r["image_refs"]}
    assert summary.missing_images == [] and summary.num_images == len(distinct) > 20 and len(records) == 24
    browser.open(summary.path.resolve().as_uri())
    assert browser.run("return document.body.getAttribute('data-ready')") == "1"

    # Questions: one page of 10, in file order, each with its image and 4 solutions.
    shown = browser.run("return [...document.querySelectorAll('.question')].map(q => q.dataset.id)")
    assert shown == [r["id"] for r in records[:10]]
    assert browser.run("return document.getElementById('count').textContent") == "24 of 24 questions kept"
    assert browser.run("return document.querySelectorAll('.question img').length") == 10
    assert browser.run("return document.querySelector('.question img').naturalWidth") == 112  # decoded, not broken

    # Steps and colours: every score cell of the page holds the sample file's score, in the colour of that score.
    cells = browser.run(
        """return [...document.querySelectorAll('td.score')].map(td => {
             const q = td.closest('.question').dataset.id, s = +td.closest('.solution').dataset.solution;
             return [q, s, +td.closest('.step').dataset.step, td.dataset.run, td.dataset.score,
                     getComputedStyle(td).backgroundColor, td.closest('.step').querySelector('.text').textContent];
           })"""
    )
    by_id = {r["id"]: r for r in records}
    expected = sum(2 * len(s["steps"]) for r in records[:10] for s in r["samples"])
    assert len(cells) == expected > 0
    for qid, solution, step, run, score, colour, text in cells:
        sample = by_id[qid]["samples"][solution]
        assert text == sample["steps"][step]
        assert float(score) == pytest.approx(sample["step_scores"][run][step], abs=5e-5)
        assert colour == "rgb({}, {}, {})".format(*score_colour(float(score)))
    colours = {cell[5] for cell in cells if cell[3] == "random"}
    assert len(colours) > 10  # random scores spread over the scale, not one colour

    # Filter: the random scorer's wrong best-of-N picks, as the sweep itself grades them.
    wrong = [r["id"] for r in records if not selection_correct("best_of_n:min", r["samples"], "random")]
    assert 0 < len(wrong) < len(records)
    browser.run(
        "const s = document.getElementById('f-scorer'); s.value = 'random'; s.dispatchEvent(new Event('change'))"
    )
    browser.click("#f-wrong")
    assert browser.run("return document.getElementById('count').textContent") == f"{len(wrong)} of 24 questions kept"
    shown = browser.run("return [...document.querySelectorAll('.question')].map(q => q.dataset.id)")
    assert shown == wrong[:10]
    rows = "document.querySelectorAll('.question tr.run[data-run=\"random\"] td:last-child')"
    results = browser.run(f"return [...{rows}].map(t => t.textContent)")
    assert results == ["wrong"] * len(shown)

    # The oracle never errs: with it selected, the same filter keeps nothing.
    browser.run(
        "const s = document.getElementById('f-scorer'); s.value = 'oracle'; s.dispatchEvent(new Event('change'))"
    )
    oracle_wrong = sum(not selection_correct("best_of_n:min", r["samples"], "oracle") for r in records)
    assert browser.run("return document.querySelectorAll('.question').length") == min(oracle_wrong, 10)

    browser.click("#f-wrong")  # off again

    # "PRM and oracle disagree" under the random scorer: the questions with a step whose score is on the wrong side
    # of 0.5 against the testbed's gold; then the step-type filter shows perception steps only.
    disagree = [
        r["id"] for r in records
        if any((score >= 0.5) != good for s in r["samples"]
               for score, good in zip(s["step_scores"]["random"], s["gold_correct"]))
    ]  # fmt: skip
    browser.run(
        "const s = document.getElementById('f-scorer'); s.value = 'random'; s.dispatchEvent(new Event('change'))"
    )
    browser.click("#f-disagree")
    assert (
        browser.run("return document.getElementById('count').textContent") == f"{len(disagree)} of 24 questions kept"
    )
    browser.click("#f-disagree")
    browser.run(
        "const t = document.getElementById('f-type'); t.value = 'perception'; t.dispatchEvent(new Event('change'))"
    )
    shown_rows = "[...document.querySelectorAll('tr.step')].filter(r => r.offsetParent !== null)"
    visible = browser.run(f"return {shown_rows}.map(r => r.dataset.type)")
    perception = sum(t == "perception" for r in records[:10] for s in r["samples"] for t in s["step_types"])
    assert visible == ["perception"] * perception and perception > 0
    browser.run("const t = document.getElementById('f-type'); t.value = ''; t.dispatchEvent(new Event('change'))")

    # Screenshot of the unfiltered page, kept and checked non-blank.
    shot = Image.open(io.BytesIO(browser.screenshot())).convert("RGB")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot.save(ARTIFACTS / "viewer_sweep.png")
    pixels = np.asarray(shot, dtype=np.float64)
    assert shot.size == (1280, 1000) or shot.size[0] >= 1000
    assert pixels.std() > 20, "blank screenshot"
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 100
