"""Step-labelled training data from the testbed: scripted-policy solutions labelled by their hidden gold."""

from __future__ import annotations

from collections.abc import Sequence

from datasets import Dataset
from tqdm.auto import tqdm

from ..data.schema import solution_id
from .generator import generate_puzzles, puzzle_features
from .scripted_policy import ScriptedPolicy


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
