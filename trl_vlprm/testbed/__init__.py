"""Procedural visual puzzles with known step-level truth, and a scripted policy with controllable errors."""

from .generator import (
    FAMILIES,
    TIERS,
    format_prompt,
    generate_puzzles,
    gold_steps,
    make_puzzle,
    parse_answer_step,
    puzzle_features,
    read_metadata,
    resolve_families,
    testbed_corpus,
)
from .scripted_policy import GoldOracleScorer, ScriptedPolicy
from .supervision import sample_supervision

__all__ = [
    "FAMILIES",
    "GoldOracleScorer",
    "ScriptedPolicy",
    "TIERS",
    "format_prompt",
    "generate_puzzles",
    "gold_steps",
    "make_puzzle",
    "parse_answer_step",
    "puzzle_features",
    "read_metadata",
    "resolve_families",
    "sample_supervision",
    "testbed_corpus",
]
