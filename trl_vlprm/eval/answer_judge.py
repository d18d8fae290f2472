"""An LLM judge that reads the final answer out of a solution when the rule-based extraction finds none.

The paper graded MMMU, MathVista and the puzzles this way (theogbrand/vlprm: `mathvista_helper_functions.
MathVistaJudgeModel`, `puzzlevqa_judge_evaluation.py`, gpt-4.1 at temperature 0): the rules of
`trl_vlprm.data.answers` first, the judge only for the solutions they cannot read, and its answer is then graded by
the same rules. The transport is the project's judge client (`trl_vlprm.labeling.judge.openai_client`: any
OpenAI-compatible endpoint, token from an environment variable, per-request deadline, retries).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from trl_vlprm.data.schema import option_letter
from trl_vlprm.labeling.judge import JudgeConfig, openai_client

NO_ANSWER = "NONE"

_INSTRUCTIONS = (
    "You read the final answer out of a model's solution to a question. Reply with the final answer only: for a "
    "multiple-choice question the letter of the option the solution picks, otherwise the final value or phrase, "
    f"without explanation. If the solution states no final answer, reply {NO_ANSWER}."
)


class AnswerJudge:
    """Asks a chat model for the final answer a solution states.

    Args:
        config: endpoint, model, token variable, timeout and retries (`JudgeConfig`; `temperature` 0 by default).

    Attributes:
        counts: calls, answers, "no answer" replies and failed requests, for the run's report.
    """

    def __init__(self, config: JudgeConfig):
        self.config = config
        self.counts: Counter[str] = Counter()
        self._client = None

    def messages(self, question: str, solution: str, options: Sequence[str] | None) -> list[dict[str, Any]]:
        lines = [f"Question:\n{question}"]
        if options:
            lettered = (f"({option_letter(i)}) {option}" for i, option in enumerate(options))
            lines.append("Options:\n" + "\n".join(lettered))
        lines.append(f"Solution:\n{solution}")
        return [{"role": "system", "content": _INSTRUCTIONS}, {"role": "user", "content": "\n\n".join(lines)}]

    def extract(self, question: str, solution: str, options: Sequence[str] | None = None) -> str | None:
        """The final answer the judge reads in `solution`; None when it finds none or the request fails."""
        import openai

        if self._client is None:
            self._client = openai_client(self.config, asynchronous=False)
        self.counts["calls"] += 1
        try:
            response = self._client.chat.completions.create(
                model=self.config.judge_model,
                messages=self.messages(question, solution, options),
                temperature=self.config.judge_temperature,
                max_tokens=self.config.judge_max_tokens,
            )
            text = (response.choices[0].message.content or "").strip()
        except (openai.OpenAIError, IndexError, AttributeError) as err:
            self.counts["failed"] += 1
            self.counts["error " + type(err).__name__] += 1
            return None
        if not text or text.upper().strip(".") == NO_ANSWER:
            self.counts["no_answer"] += 1
            return None
        self.counts["answers"] += 1
        return text
