"""What every policy backend and the GRPO reward share about solutions: a question as chat messages, a generated
text as steps, and the final answer a solution states."""

from __future__ import annotations

from typing import Any

from trl_vlprm.data.answers import extract_answer
from trl_vlprm.modeling.encoding import prompt_to_messages
from trl_vlprm.types import Question


def question_messages(question: Question, system_prompt: str | None = None) -> list[dict[str, Any]]:
    """Chat messages of a question record: `<image>` placeholders in strings become image content parts.

    Built with the PRM's prompt encoding (`modeling.encoding.prompt_to_messages`), so a policy sees the question as
    the PRM does; `system_prompt` is added only when the prompt has no system turn of its own.
    """
    prompt = question["prompt"]
    has_system = not isinstance(prompt, str) and bool(prompt) and prompt[0].get("role") == "system"
    return prompt_to_messages(prompt, None if has_system else (system_prompt or None))


def split_steps(text: str, step_separator: str) -> list[str]:
    """The non-blank steps of a generated text, split at the policy's step separator and stripped."""
    return [s.strip() for s in text.split(step_separator) if s.strip()]


def read_answer(solution: str, question: Question) -> str | None:
    """The final answer a solution states, in the project's canonical form (`trl_vlprm.data.answers`)."""
    return extract_answer(solution, question.get("options") or None)
