"""Testbed backends (no model): the `scripted` policy, the `oracle` scorer (gold step correctness) and the `random`
scorer (the no-information control)."""

from __future__ import annotations

from typing import Any

from trl_vlprm.guidance.backends import policy_backend, scorer_backend


def _no_positional(args: list[str], what: str) -> None:
    if args:
        raise ValueError(f"a {what} takes keywords only (e.g. {what.split()[0]}:seed=1), got {args}")


@policy_backend("scripted")
def scripted_policy(args: list[str], kwargs: dict[str, Any], seed: int | None):
    """ "scripted:perception_error_rate=0.3,reasoning_error_rate=0.2": the testbed's `ScriptedPolicy` (it solves
    testbed puzzles only)."""
    from trl_vlprm.testbed import ScriptedPolicy

    _no_positional(args, "scripted policy")
    return ScriptedPolicy(**{"seed": seed, **kwargs})


@scorer_backend("oracle")
def oracle_scorer(args: list[str], kwargs: dict[str, Any], seed: int | None):
    """ "oracle": the testbed's `GoldOracleScorer` (each step's gold correctness)."""
    from trl_vlprm.testbed import GoldOracleScorer

    _no_positional(args, "oracle scorer")
    return GoldOracleScorer(**kwargs)


@scorer_backend("random")
def random_scorer(args: list[str], kwargs: dict[str, Any], seed: int | None):
    """ "random:seed=1": independent uniform step scores, the control any PRM must beat."""
    from trl_vlprm.testbed import RandomScorer

    _no_positional(args, "random scorer")
    return RandomScorer(**{"seed": seed if seed is not None else 0, **kwargs})
