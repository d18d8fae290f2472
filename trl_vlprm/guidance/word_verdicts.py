"""Scoring a PRM that judges some steps word by word (`PRMLayout.word_verdicts`).

Such a PRM was trained on steps of one type (the perception steps) cut after every word (`types.word_pieces`,
`testbed.label_every_word`), with a verdict on every piece. It is scored the same way: each step of that type is cut
into the same pieces, every piece is scored as a step, and the step's score is its lowest piece score, a strict AND
over its words (a caption with one misread colour among nine is as wrong as a caption of one). A step whose type is
unknown (a candidate without `step_types`, e.g. a policy's sample) is scored at its end, as any other step.

Every scorer that reads a checkpoint's layout (`PRMScorer`, `VLLMScorer`, `ServerPRMScorer`) pools through
`score_as_trained`, so one PRM gives the same scores on every backend.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from trl_vlprm.types import Candidate, Question, word_pieces

ScoreWithLengths = Callable[[Question, Sequence[Candidate]], tuple[list[list[float]], list[list[int]]]]


def score_as_trained(
    score: ScoreWithLengths, question: Question, candidates: Sequence[Candidate], step_type: str | None
) -> tuple[list[list[float]], list[list[int]]]:
    """Per candidate, one score per step: steps typed `step_type` cut into word pieces and scored by their lowest
    piece score, the others as they are; and per step the input length of its last piece (the tokens the PRM read
    to reach the step's end, as the paper's length-normalised reward expects).

    Args:
        score: the scorer's own step scoring (scores and input lengths of every step it is given).
        question: the question record.
        candidates: the candidates to score; their `step_types` say which steps are cut.
        step_type: the type of the steps the PRM judges word by word (`PRMLayout.word_verdicts`); None: every step
            is scored as it is, by `score` alone.
    """
    if step_type is None:
        return score(question, candidates)
    expanded, spans = [], []
    for candidate in candidates:
        steps: list[str] = []
        span = []
        for index, step in enumerate(candidate.steps):
            typed = index < len(candidate.step_types) and candidate.step_types[index] == step_type
            pieces = word_pieces(step) if typed else [step]
            span.append((len(steps), len(steps) + len(pieces)))
            steps += pieces
        expanded.append(Candidate(steps=steps, finished=candidate.finished))
        spans.append(span)
    scores, lengths = score(question, expanded)
    pooled = [[min(row[start:end]) for start, end in span] for row, span in zip(scores, spans)]
    ends = [[row[end - 1] for _, end in span] if row else [] for row, span in zip(lengths, spans)]
    return pooled, ends
