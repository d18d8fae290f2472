"""A PRM that judges perception steps word by word (`PRMLayout.word_verdicts`) is scored as it was trained.

The promise: the layout is saved with the checkpoint and read back by `PRMScorer.from_pretrained`; a perception step
is cut into `word_pieces` and scored by its lowest piece score, every other step (and every step of a candidate
without step types) as it is; with no step separator the pieces are the step's own tokens, so the last piece's
score and every input length are the whole step's.
"""

from __future__ import annotations

import pytest
import torch
from scoring_inputs import random_image

from trl_vlprm.guidance.policy import Candidate
from trl_vlprm.guidance.scorer import PRMScorer
from trl_vlprm.modeling.encoding import PRMLayout
from trl_vlprm.modeling.heads import load_prm
from trl_vlprm.modeling.processor import load_processor
from trl_vlprm.testing import build_tiny_vlm
from trl_vlprm.trainer.config import VLPRMConfig
from trl_vlprm.types import word_pieces

CAPTION = "The colors of the circles are ['red', 'blue', 'green'] and the middle one is ['yellow']."
STEPS = [CAPTION, "Each row holds three colours, so the missing one is blue.", "Answer: blue"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """The same random-headed PRM saved twice: judging perception steps word by word, and at step ends."""
    root = tmp_path_factory.mktemp("word_verdicts")
    base = build_tiny_vlm(root / "base", hidden_size=64, seed=0)
    saved = {}
    for name, word_verdicts in (("words", "perception"), ("ends", None)):
        model = load_prm(base, head="value")
        torch.manual_seed(1)
        model.score.weight.data.normal_(0, 0.3)  # scores spread over (0, 1): a min is not a constant
        args = VLPRMConfig(output_dir=str(root / "args"), step_separator="", word_verdicts=word_verdicts)
        args.layout.save_to_config(model.config)
        model.save_pretrained(root / name)
        load_processor(base).save_pretrained(root / name)
        saved[name] = root / name
    return saved


def test_the_checkpoint_records_word_verdicts_and_the_scorer_pools_them(folders):
    question = {"id": "q", "prompt": "<image>Which colour is missing?", "images": [random_image(56, 56, 0)]}
    words = PRMScorer.from_pretrained(folders["words"])
    ends = PRMScorer.from_pretrained(folders["ends"])
    assert words.layout.word_verdicts == "perception" and ends.layout.word_verdicts is None
    assert PRMLayout.from_config(words.model.config) == words.layout

    typed = Candidate(steps=list(STEPS), step_types=["perception", "reasoning", "reasoning"])
    (pooled,), (pooled_lengths,) = words.score_with_input_lengths(question, [typed])
    pieces = word_pieces(CAPTION)
    assert len(pieces) == 16
    (cut,), (cut_lengths,) = ends.score_with_input_lengths(question, [Candidate(steps=pieces + STEPS[1:])])
    (whole,), (whole_lengths,) = ends.score_with_input_lengths(question, [Candidate(steps=list(STEPS))])
    piece_scores = cut[: len(pieces)]
    assert max(piece_scores) - min(piece_scores) > 0.05  # the pieces' verdicts differ: the min picks one
    assert pooled[0] == pytest.approx(min(piece_scores), abs=1e-6) and pooled[0] < whole[0] - 0.01
    assert pooled[1:] == pytest.approx(whole[1:], abs=1e-6)
    # No separator: the pieces are the caption's own tokens, so its last piece is read where the whole step is.
    assert cut[len(pieces) - 1] == pytest.approx(whole[0], abs=1e-6)
    assert pooled_lengths == whole_lengths and cut_lengths[len(pieces) - 1] == whole_lengths[0]

    # A candidate without step types (a policy's sample) is scored at its steps' ends.
    untyped = words.score(question, [Candidate(steps=list(STEPS))])
    assert untyped[0] == pytest.approx(whole, abs=1e-6)


def test_scored_metrics_are_the_trainers_and_its_evaluation_warns_for_word_verdicts(tmp_path, caplog):
    """`scored_step_metrics` (what `CPURecipe` reports for a word-verdict PRM) gives the trainer's own figures for a
    PRM read at step ends; the trainer's `evaluate`, which reads step ends only, says so for a word-verdict PRM."""
    import logging

    from trl_vlprm import VLPRMTrainer
    from trl_vlprm.cpu_recipe import CPURecipe
    from trl_vlprm.eval.guardrails import scored_step_metrics

    recipe = CPURecipe(num_puzzles=6, max_steps=1)
    model = recipe.build_model(tmp_path / "tiny")
    held = recipe.supervision(6, seed=5)
    trainer = VLPRMTrainer(str(model), recipe.training_args(tmp_path / "prm"), train_dataset=held, eval_dataset=held)
    expected = trainer.evaluate()
    got = scored_step_metrics(PRMScorer(trainer.model, trainer.processing_class, layout=trainer.args.layout), held)
    for key in ("eval_accuracy", "eval_bad_f1", "eval_num_steps", "eval_perception_accuracy", "eval_reasoning_bad_f1"):
        assert got[key] == pytest.approx(expected[key], abs=1e-9), key
    assert got["eval_num_steps"] == sum(len(row["labels"]) for row in held) > 0

    worded = CPURecipe(num_puzzles=6, max_steps=1, word_labels="each_word")
    args = worded.training_args(tmp_path / "worded")
    assert args.word_verdicts == "perception" == args.layout.word_verdicts
    trainer = VLPRMTrainer(str(model), args, train_dataset=worded.training_data(), eval_dataset=held)
    with caplog.at_level(logging.WARNING, logger="trl_vlprm.trainer.vlprm_trainer"):
        trainer.evaluate()
    assert "reads every step at its end, but this PRM judges perception steps word by word" in caplog.text
