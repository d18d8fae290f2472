"""A solution in the paper's sectioned format (Ong et al., 2025): `[Visual Elements]` / `[Reasoning]`, `<step_k>` tags.

The paper's policy writes, and its judge reads, solutions such as::

    [Visual Elements]
    <step_1>
    There are three red circles.
    </step_1>

    [Reasoning]
    <step_1>
    Three circles, so the answer is 3.
    </step_1>

    <correct_answer>
    $\\boxed{3}$
    </correct_answer>

Steps are numbered from 1 within each section; the judge's `<analysis_k>` blocks use the same numbering. Steps under
the first header (`[Visual Elements]`, or `[Perception]` in some answers) are perception steps. `render_solution`
writes this text from steps and their types; `split_solution` reads it back with the paper's own regular expressions
(mmr_rollout_data `convert_mc_to_prm_signal.item2conv_prm`). It lives in the data layer because the labeller (judge
prompt, rollout import) and the testbed's judge server both read it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from trl_vlprm.data.schema import PERCEPTION, REASONING

VISUAL_HEADER, REASONING_HEADER = "[Visual Elements]", "[Reasoning]"
# The paper's regular expressions (item2conv_prm), kept as written: the perception section runs from its header to
# "[Reasoning]" (no such header: no perception steps), the reasoning section to "<correct_answer>" or the end.
_VISUAL_SECTION = re.compile(r"\[(?:Visual Elements|Perception)\](.*?)\[Reasoning\]", re.S)
_REASONING_SECTION = re.compile(r"\[Reasoning\](.*?)(?:<correct_answer>|$)", re.S)
_STEP = re.compile(r"<step_\d+>(.*?)</step_\d+>", re.S)
_ANSWER = re.compile(r"<correct_answer>(.*?)</correct_answer>", re.S)


class PaperFormatError(ValueError):
    """Steps that the paper's sectioned format cannot hold (a perception step after a reasoning step)."""


def section_positions(step_types: Sequence[str | None]) -> list[tuple[str, int]]:
    """Per step, its section ("Visual Elements" or "Reasoning") and 0-based index within it.

    A step without a type counts as reasoning. Raises `PaperFormatError` when a perception step follows a reasoning
    step: the format lists every perception step first.
    """
    positions = []
    counts = {"Visual Elements": 0, "Reasoning": 0}
    seen_reasoning = False
    for i, kind in enumerate(step_types):
        section = "Visual Elements" if kind == PERCEPTION else "Reasoning"
        if section == "Reasoning":
            seen_reasoning = True
        elif seen_reasoning:
            raise PaperFormatError(
                f"step {i} is a perception step after a reasoning step; the paper's format lists every "
                f"[Visual Elements] step before the [Reasoning] ones (types {list(step_types)})"
            )
        positions.append((section, counts[section]))
        counts[section] += 1
    return positions


def render_solution(steps: Sequence[str], step_types: Sequence[str | None], answer: str | None = None) -> str:
    """The paper's text of a solution: the sections with their `<step_k>` tags, then `<correct_answer>` when an
    answer is given (as `$\\boxed{answer}$`, the paper's policy format). A section with no step is left out."""
    positions = section_positions(step_types)
    blocks: list[str] = []
    current = None
    for step, (section, index) in zip(steps, positions):
        if section != current:
            blocks.append(VISUAL_HEADER if section == "Visual Elements" else REASONING_HEADER)
            current = section
        blocks[-1] += f"\n<step_{index + 1}>\n{step.strip()}\n</step_{index + 1}>"
    if answer is not None:
        blocks.append(f"<correct_answer>\n$\\boxed{{{answer}}}$\n</correct_answer>")
    return "\n\n".join(blocks)


def split_solution(response: str) -> tuple[list[str], list[str]]:
    """(steps, step types) of a response in the paper's format, read by the paper's regular expressions: the
    contents of the `<step_k>` tags of the perception section, then of the reasoning section, stripped."""
    steps: list[str] = []
    types: list[str] = []
    for pattern, kind in ((_VISUAL_SECTION, PERCEPTION), (_REASONING_SECTION, REASONING)):
        match = pattern.search(response)
        if match:
            found = [step.strip() for step in _STEP.findall(match.group(1))]
            steps += found
            types += [kind] * len(found)
    return steps, types


def solution_answer(response: str) -> str | None:
    """The text inside `<correct_answer>` (None when the response has none)."""
    match = _ANSWER.search(response)
    return match.group(1).strip() if match else None
