"""PRMScorer: the batched prefix-sharing path equals a plain full forward of each candidate, on tiny random PRMs."""

import logging

import numpy as np
import pytest
import torch
from scoring_inputs import SOLUTIONS, random_image

from trl_vlprm.guidance.policy import Candidate, StepScorer
from trl_vlprm.guidance.scorer import PRMScorer
from trl_vlprm.modeling.families import supported_model_types
from trl_vlprm.modeling.heads import load_prm
from trl_vlprm.modeling.processor import load_processor
from trl_vlprm.testing import TINY_SPECS, build_tiny_text_prm, build_tiny_vlm

ATOL = 1e-5


@pytest.fixture(scope="module")
def candidates():
    return [Candidate(steps=list(steps)) for steps in SOLUTIONS]


@pytest.fixture(scope="module")
def question():
    return {"id": "q1", "prompt": "<image>Which number is missing?", "images": [random_image(100, 90, 0)]}


# Every model type with a tiny model, but the MoE variants (their attention and positions are their dense twins').
SCORED_TYPES = [t for t in supported_model_types() if t in TINY_SPECS and not t.endswith("_moe")]


@pytest.fixture(scope="module", params=SCORED_TYPES)
def vlm_dir(request, tmp_path_factory):
    return build_tiny_vlm(tmp_path_factory.mktemp(request.param), arch=request.param, seed=0)


def make_scorer(path, head, num_labels=2, **kwargs):
    return PRMScorer(load_prm(path, head=head, num_labels=num_labels), load_processor(path), **kwargs)


def assert_same_scores(batched, plain, steps=SOLUTIONS):
    assert [len(s) for s in batched] == [len(s) for s in steps]  # one score per step, per candidate
    assert [len(s) for s in plain] == [len(s) for s in steps]
    np.testing.assert_allclose(np.concatenate(batched), np.concatenate(plain), atol=ATOL, rtol=0)
    assert all(0.0 < p < 1.0 for row in batched for p in row)


@pytest.mark.parametrize("head,num_labels", [("value", 2), ("value", 1), ("generative", 2)])
def test_prefix_sharing_equals_plain_forward(vlm_dir, question, candidates, head, num_labels):
    scorer = make_scorer(vlm_dir, head, num_labels, batch_size=2)  # 5 candidates: 3 batches, the last one partial
    assert isinstance(scorer, StepScorer)
    batched = scorer.score(question, candidates)
    assert_same_scores(batched, scorer.score_plain(question, candidates))
    # The scores are not all one number (a dead head would pass the equality above trivially).
    assert np.ptp(np.concatenate(batched)) > 1e-4


def test_two_images_and_a_text_only_question(vlm_dir, candidates):
    scorer = make_scorer(vlm_dir, "generative", batch_size=3)
    two_images = {
        "id": "q2",
        "prompt": "<image>Compare the left image with <image> the right one.",
        "images": [random_image(100, 90, 1), random_image(60, 120, 2)],
    }
    no_image = {"id": "q3", "prompt": "What is 2 * 3?", "images": []}
    for question in (two_images, no_image):
        assert_same_scores(scorer.score(question, candidates), scorer.score_plain(question, candidates))


def test_positions_matter(vlm_dir, question, candidates, monkeypatch):
    # Guards the test above: continuing the suffix at position P (ignoring the image's rope delta) must break it; for
    # a family of 1-D positions (next position P already), continuing at P + 3 must.
    scorer = make_scorer(vlm_dir, "value")
    plain = np.concatenate(scorer.score_plain(question, candidates))
    run_prefix = PRMScorer._run_prefix

    def one_d_positions(self, prefix):
        run_prefix(self, prefix)
        length = prefix.input_ids.shape[1]
        prefix.next_position = length if prefix.next_position < length else length + 3

    monkeypatch.setattr(PRMScorer, "_run_prefix", one_d_positions)
    assert np.abs(np.concatenate(scorer.score(question, candidates)) - plain).max() > 10 * ATOL


def test_step_scores_are_causal_and_batch_independent(vlm_dir, question):
    scorer = make_scorer(vlm_dir, "value", batch_size=4)
    full = Candidate(steps=SOLUTIONS[0])
    prefixes = [Candidate(steps=SOLUTIONS[0][:k]) for k in (1, 2)]
    scores = scorer.score(question, [full, *prefixes, Candidate(steps=SOLUTIONS[3])])
    # A step's score reads only the tokens up to its end: prefixes of a solution get the same scores.
    np.testing.assert_allclose(scores[1], scores[0][:1], atol=ATOL, rtol=0)
    np.testing.assert_allclose(scores[2], scores[0][:2], atol=ATOL, rtol=0)
    alone = PRMScorer(scorer.model, scorer.processing_class, batch_size=1).score(question, [full])
    np.testing.assert_allclose(alone[0], scores[0], atol=ATOL, rtol=0)


def test_empty_inputs(vlm_dir, question):
    scorer = make_scorer(vlm_dir, "value")
    assert scorer.score(question, []) == []
    scores = scorer.score(question, [Candidate(steps=[]), Candidate(steps=["Count."])])
    assert scores[0] == [] and len(scores[1]) == 1


def test_prefix_cache_is_reused_only_for_the_same_question(vlm_dir, question, candidates, monkeypatch):
    scorer = make_scorer(vlm_dir, "value")
    runs = []
    run_prefix = PRMScorer._run_prefix
    monkeypatch.setattr(PRMScorer, "_run_prefix", lambda self, prefix: runs.append(1) or run_prefix(self, prefix))
    first = scorer.score(question, candidates[:2])
    again = scorer.score(question, candidates[:2])
    assert len(runs) == 1 and first == again
    other_image = {**question, "images": [random_image(100, 90, 5)]}  # same tokens, other pixels
    other = scorer.score(other_image, candidates[:2])
    assert len(runs) == 2
    plain = scorer.score_plain(other_image, candidates[:2])
    np.testing.assert_allclose(np.concatenate(other), np.concatenate(plain), atol=ATOL, rtol=0)
    assert np.abs(np.concatenate(other) - np.concatenate(first)).max() > 1e-6


def test_text_only_prm(tmp_path, candidates):
    path = build_tiny_text_prm(tmp_path / "text_prm", seed=0)
    scorer = PRMScorer(load_prm(path, head="value"), load_processor(path), batch_size=2)
    question = {"id": "t1", "prompt": "How many sides has a hexagon?", "images": []}
    batched = scorer.score(question, candidates)
    assert_same_scores(batched, scorer.score_plain(question, candidates))
    assert np.ptp(np.concatenate(batched)) > 1e-4


def test_from_pretrained_uses_the_trained_separator_and_head(tmp_path, question, candidates, caplog):
    base = build_tiny_vlm(tmp_path / "base", arch="qwen2_vl", seed=1)
    model = load_prm(base, head="generative")
    model.config.prm_step_separator = " ;"
    model.config.prm_head = "generative"
    model.save_pretrained(tmp_path / "prm")
    load_processor(base).save_pretrained(tmp_path / "prm")

    scorer = PRMScorer.from_pretrained(tmp_path / "prm", dtype=torch.float32)
    assert scorer.head == "generative" and scorer.step_separator == " ;"
    trained = scorer.score(question, candidates)
    newline = PRMScorer.from_pretrained(tmp_path / "prm", step_separator="\n")
    assert "differs from the one the PRM was trained with" in caplog.text
    assert newline.step_separator == "\n"
    # The separator ends every step, so it changes every score.
    assert np.abs(np.concatenate(trained) - np.concatenate(newline.score(question, candidates))).min() > 1e-7
    explicit = PRMScorer(model, load_processor(base), step_separator=" ;")
    explicit_scores = explicit.score(question, candidates)
    np.testing.assert_allclose(np.concatenate(explicit_scores), np.concatenate(trained), atol=ATOL, rtol=0)


def test_untrained_checkpoint_defaults_to_newline(vlm_dir, caplog):
    with caplog.at_level(logging.WARNING):
        scorer = make_scorer(vlm_dir, "value", step_separator="\n\n")
    assert scorer.step_separator == "\n\n" and "differs" not in caplog.text  # nothing recorded: nothing to warn of
    assert make_scorer(vlm_dir, "value").step_separator == "\n"


def test_bad_arguments(vlm_dir):
    with pytest.raises(ValueError, match="batch_size"):
        make_scorer(vlm_dir, "value", batch_size=0)
    with pytest.raises(ValueError, match="head must be one of"):
        PRMScorer(load_prm(vlm_dir, head="value"), load_processor(vlm_dir), head="reward")
