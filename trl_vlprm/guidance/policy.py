"""The policy and scorer interfaces, re-exported from `trl_vlprm.types` (their home below every stage, so the testbed
and data code can implement them without importing guidance)."""

from trl_vlprm.types import Candidate, Continuation, Policy, PolicyStats, Question, StepScorer

__all__ = ["Candidate", "Continuation", "Policy", "PolicyStats", "Question", "StepScorer"]
