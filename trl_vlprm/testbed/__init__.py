"""The CPU testbed: everything whose step-level truth is known, so every stage can be checked against it.

Procedural visual puzzles with gold step solutions, a scripted policy that errs at chosen rates, the gold-oracle and
random scorers, and a loopback judge server that answers from the gold (docs/testbed.md).
"""

from .families import PuzzleFamily, register_puzzle_family
from .generator import (
    PUZZLE_FAMILIES,
    TIERS,
    claim_holds,
    format_prompt,
    generate_puzzles,
    gold_steps,
    image_tags,
    make_puzzle,
    parse_answer_step,
    puzzle_features,
    read_metadata,
    resolve_families,
    testbed_corpus,
)
from .judge_server import JudgeServer, gold_lookup, step_key
from .scorers import GoldOracleScorer, RandomScorer
from .scripted_policy import ScriptedPolicy
from .supervision import label_every_word, sample_supervision

__all__ = [
    "PUZZLE_FAMILIES",
    "GoldOracleScorer",
    "JudgeServer",
    "PuzzleFamily",
    "RandomScorer",
    "ScriptedPolicy",
    "TIERS",
    "claim_holds",
    "format_prompt",
    "generate_puzzles",
    "gold_lookup",
    "gold_steps",
    "image_tags",
    "label_every_word",
    "make_puzzle",
    "parse_answer_step",
    "puzzle_features",
    "read_metadata",
    "register_puzzle_family",
    "resolve_families",
    "sample_supervision",
    "step_key",
    "testbed_corpus",
]
