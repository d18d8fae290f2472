"""Step-labelled training data from the testbed: scripted-policy solutions labelled by their hidden gold."""

from __future__ import annotations

import difflib
from collections.abc import Sequence

from datasets import Dataset
from tqdm.auto import tqdm

from ..data.schema import PERCEPTION, RecordError, solution_id
from ..types import word_pieces
from .generator import generate_puzzles, puzzle_features, read_metadata
from .scripted_policy import ScriptedPolicy

WORD_LABEL_CONVENTIONS = ("each_word", "first_error")


def sample_supervision(
    num_puzzles: int,
    solutions_per_puzzle: int = 4,
    perception_error_rate: float = 0.3,
    reasoning_error_rate: float = 0.3,
    seed: int = 0,
    families: Sequence[str] | None = None,
    image_size: int = 168,
) -> Dataset:
    """Stepwise-supervision records whose labels are the scripted policy's true step correctness.

    The ground truth against which labelling methods are measured, and the training set of the demo's PRM.

    Args:
        num_puzzles: puzzles drawn with `generate_puzzles(num_puzzles, seed)`.
        solutions_per_puzzle: sampled solutions per puzzle (one record each, id `<puzzle id>#<k>`).
        perception_error_rate: probability the policy misreads the image in its perception step.
        reasoning_error_rate: probability of a wrong rule or arithmetic slip in its reasoning.
        seed: seeds both the puzzles and the policy.
        families: puzzle families (default: all).
        image_size: image side in pixels.
    """
    policy = ScriptedPolicy(perception_error_rate, reasoning_error_rate, seed=seed)
    rows = []
    for puzzle in tqdm(generate_puzzles(num_puzzles, seed, families, image_size), desc="sampling solutions"):
        for k, solution in enumerate(policy.sample_solutions(puzzle, solutions_per_puzzle)):
            rows.append(
                {
                    **puzzle,
                    "id": solution_id(puzzle["id"], k),
                    "completions": solution.steps,
                    "labels": list(solution.gold_correct),
                    "step_types": list(solution.step_types),
                }
            )
    features = puzzle_features()
    return Dataset.from_dict({name: [row[name] for row in rows] for name in features}, features=features)


def label_every_word(dataset: Dataset, convention: str = "each_word") -> Dataset:
    """Every record's first step (its perception step) cut after each word (`types.word_pieces`), each piece
    labelled against the gold caption. The pieces join back into the step, so with an empty step separator (the CPU
    recipe's) the tokens are the step's own: only labels are added, one at every word instead of one at the end.

    A PRM trained on such data is scored the same way (`VLPRMConfig.word_verdicts`, saved with the checkpoint): the
    scorers cut the step into the same pieces and score it by its lowest word verdict, a strict AND over its words.

    Conventions:
        "each_word": a piece is True when its word is the gold caption's word there (the pieces are aligned to the
            gold's by their longest common subsequence), so a misread's wrong words are False and every other word
            True. The verdict at a word depends on that word and the image only: the check a tiny PRM learns, which
            reads PuzzleVQA's real images (docs/testbed.md, fifth round).
        "first_error": "correct so far": True up to the first word where the step differs from the gold caption,
            False from that word on (a correct step's pieces are all True). Every verdict after a misread has to
            carry it to the step's end (fourth round: 4 layers learn it for one claimed colour, not for lists).

    Raises:
        ValueError: an unknown convention.
        RecordError: a record without testbed metadata, whose first step is not a perception step, or whose
            verdict on it disagrees with its gold caption (a correct step that differs from the gold).
    """
    if convention not in WORD_LABEL_CONVENTIONS:
        raise ValueError(f"convention must be one of {WORD_LABEL_CONVENTIONS}, got {convention!r}")

    def cut(record_id, metadata, completions, labels, step_types):
        record = {"id": record_id, "metadata": metadata}
        family, state = read_metadata(record)
        if not step_types or step_types[0] != PERCEPTION:
            raise RecordError(record_id, "step_types", f"first step is {step_types[:1]}, not a perception step")
        if not completions[0]:
            raise RecordError(record_id, "completions", "step 0 is empty: there is no word to label")
        pieces = word_pieces(completions[0])
        gold = word_pieces(family.describe(state, family.observe(state)))
        if labels[0] != (pieces == gold):
            raise RecordError(
                record_id,
                "labels",
                f"step 0 labelled {labels[0]} but it {'is' if pieces == gold else 'is not'} the gold caption",
            )
        if convention == "each_word":
            words = [False] * len(pieces)
            matcher = difflib.SequenceMatcher(None, pieces, gold, autojunk=False)
            for block in matcher.get_matching_blocks():
                words[block.a : block.a + block.size] = [True] * block.size
            if not labels[0] and all(words):  # the gold with words missing: the step's last piece is where it ends
                words[-1] = False
        else:
            shorter = min(len(pieces), len(gold))
            first_error = next((k for k, (a, b) in enumerate(zip(pieces, gold)) if a != b), shorter)
            words = [labels[0] or k < min(first_error, len(pieces) - 1) for k in range(len(pieces))]
        return {
            "completions": pieces + completions[1:],
            "labels": words + labels[1:],
            "step_types": [PERCEPTION] * len(pieces) + step_types[1:],
        }

    columns = ["id", "metadata", "completions", "labels", "step_types"]
    return dataset.map(cut, input_columns=columns, desc=f"labelling every word ({convention})")
