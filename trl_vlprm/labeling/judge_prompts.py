"""The judge prompts: what a judge request asks and how its answer is read into one verdict per step.

Two are registered in `JUDGE_PROMPTS` (`JudgeConfig.judge_prompt`):

* `json` (the default): a system prompt asking for one JSON object, `{"steps": [{"index", "correct",
  "matches_image"}]}`, with the steps sent as a JSON block a program can read back; every step gets its own verdict,
  parsing is strict (`parse_verdicts`).
* `paper`: the paper's verification prompt (Ong et al., 2025; theogbrand/vlprm
  `rollout_data_generation/llm_judge_verification/prompts.py`, text verbatim) as one user message, the text first
  and the image(s) after it, as the paper's batch requests are; the solution rendered as the paper renders it
  (`trl_vlprm.data.paper_solution.render_solution`), and the answer read by the paper's rule
  (`parse_paper_verdicts`, from mmr_rollout_data `process_verification_files.py` and
  `convert_mc_to_prm_signal.parse_first_incorrect_step_from_verification`). The judge stops at the first error, so
  it grades no step after it: those steps are "incorrect" by the first-error convention every rule of
  `trl_vlprm.labeling.combine` shares (nothing after a first error is ever kept as good).

A prompt is a `JudgePrompt`: `messages(question, steps, step_types, answer)`, `parse(text, step_types)` (raising
`JudgeParseError`, which the judge counts and, online, retries; after the last attempt every step is "unknown"), and
`sampling(config)` (the request's sampling keys). Both the online client and the batch judge use it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from trl_vlprm.data.paper_solution import PaperFormatError, render_solution, section_positions
from trl_vlprm.data.schema import IMAGE_PLACEHOLDER, PERCEPTION, image_data_url
from trl_vlprm.data.steps_block import write_steps_block
from trl_vlprm.registry import Registry

CORRECT, INCORRECT, UNKNOWN = "correct", "incorrect", "unknown"

SYSTEM_PROMPT = (
    "You are a meticulous grader of step-by-step solutions to visual questions. For every step decide whether it is "
    "correct given the image, the question and the previous steps. For a perception step (one that describes the "
    "image) also decide whether it matches the image. Answer with one JSON object and nothing else: "
    '{"steps": [{"index": <int>, "correct": <true|false>, "matches_image": <true|false, perception steps only>}]} '
    "with exactly one entry per step, indices as given."
)


class JudgeParseError(ValueError):
    """The judge's answer is not the JSON object the prompt asks for."""


def question_text(question: Mapping[str, Any]) -> str:
    """The question's text without image placeholders (chat prompts: their text parts joined)."""
    prompt = question["prompt"]
    if isinstance(prompt, str):
        return prompt.replace(IMAGE_PLACEHOLDER, "").strip()
    parts = []
    for message in prompt:
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content.replace(IMAGE_PLACEHOLDER, ""))
        elif isinstance(content, list):
            parts += [p.get("text", "") for p in content if isinstance(p, Mapping) and p.get("type") == "text"]
    return "\n".join(p.strip() for p in parts if p.strip())


def build_messages(
    question: Mapping[str, Any], steps: Sequence[str], step_types: Sequence[str | None], answer: str | None = None
) -> list[dict]:
    """Chat messages asking the judge about every step; the steps travel as a JSON block a program can read back
    (`answer`, the solution's final answer, is not shown: the steps hold it)."""
    text = (
        f"Question:\n{question_text(question)}\n\n"
        + (f"Options: {list(question['options'])}\n\n" if question.get("options") else "")
        + f"Solution steps (JSON):\n{write_steps_block(question.get('id', ''), steps, step_types)}\n\n"
        "Grade every step."
    )
    content: list[dict] = [
        {"type": "image_url", "image_url": {"url": image_data_url(image)}} for image in question.get("images") or []
    ]
    content.append({"type": "text", "text": text})
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": content}]


def parse_verdicts(text: str, step_types: Sequence[str | None]) -> list[str]:
    """Strictly parse the judge's answer into one "correct"/"incorrect" per step; raise `JudgeParseError` otherwise.

    A fenced ```json block is accepted; anything else around the single JSON object is not.
    """
    stripped = text.strip()
    fenced = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", stripped, re.S)
    if fenced:
        stripped = fenced.group(1)
    try:
        answer = json.loads(stripped)
    except json.JSONDecodeError as err:
        raise JudgeParseError(f"not JSON ({err.msg} at char {err.pos})") from err
    if not isinstance(answer, dict) or not isinstance(answer.get("steps"), list):
        raise JudgeParseError("expected an object with a 'steps' list")
    verdicts: dict[int, str] = {}
    for entry in answer["steps"]:
        if not isinstance(entry, dict):
            raise JudgeParseError(f"step entry {entry!r} is not an object")
        index, correct = entry.get("index"), entry.get("correct")
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(step_types):
            raise JudgeParseError(f"step index {index!r} is not an integer in [0, {len(step_types)})")
        if index in verdicts:
            raise JudgeParseError(f"step index {index} appears twice")
        if not isinstance(correct, bool):
            raise JudgeParseError(f"step {index}: 'correct' is {correct!r}, not a boolean")
        matches = entry.get("matches_image")
        if matches is not None and not isinstance(matches, bool):
            raise JudgeParseError(f"step {index}: 'matches_image' is {matches!r}, not a boolean")
        good = correct and (matches is not False or step_types[index] != PERCEPTION)
        verdicts[index] = CORRECT if good else INCORRECT
    missing = [i for i in range(len(step_types)) if i not in verdicts]
    if missing:
        raise JudgeParseError(f"no verdict for step(s) {missing}")
    return [verdicts[i] for i in range(len(step_types))]


# rollout_data_generation/llm_judge_verification/prompts.py `verification_prompt`, verbatim (its trailing spaces too).
PAPER_VERIFICATION_PROMPT = (
    "I will provide a visual reasoning problem along with a solution. They will be formatted "
    "as follows, where m and n need not be equal: \n"
    "\n"
    "```\n"
    "[Visual Reasoning Problem]\n"
    "\n"
    " <visual_reasoning_problem>\n"
    " ...(visual reasoning problem)... \n"
    "</visual_reasoning_problem> \n"
    "\n"
    "[Solution]\n"
    "\n"
    "<solution>\n"
    "[Visual Elements]\n"
    "<step_1>\n"
    "...(Step 1 of step-by-step visual elements perception)...\n"
    "</step_1>\n"
    "<step_2>\n"
    "...(Step 2 of step-by-step visual elements perception)...\n"
    "</step_2>\n"
    "...\n"
    "<step_m>\n"
    "...(Step m of step-by-step visual elements perception)...\n"
    "</step_m>\n"
    "\n"
    "[Reasoning]\n"
    "<step_1>\n"
    "...(Step 1 of step-by-step reasoning)...\n"
    "</step_1>\n"
    "<step_2>\n"
    "...(Step 2 of step-by-step reasoning)...\n"
    "</step_2>\n"
    "...\n"
    "<step_n>\n"
    "...(Step n of step-by-step reasoning)...\n"
    "</step_n>\n"
    "\n"
    "<correct_answer>\n"
    "...(The correct answer to the visual reasoning problem)...\n"
    "</correct_answer>\n"
    "</solution>\n"
    "```\n"
    "\n"
    "Your task is to review each paragraph of the solution in sequence, analyzing, verifying, "
    "and critiquing the visual elements perception and reasoning in detail. You need to "
    "provide the analyses and the conclusion in the following format:\n"
    "\n"
    "[Visual Elements]\n"
    "<analysis_1>\n"
    "...(analysis of step 1)...\n"
    "</analysis_1>\n"
    "\n"
    "...\n"
    "\n"
    "<analysis_m>\n"
    "...(analysis of step m)...\n"
    "</analysis_m>\n"
    "\n"
    "[Reasoning]\n"
    "<analysis_1>\n"
    "...(analysis of step 1)...\n"
    "</analysis_1>\n"
    "\n"
    "...\n"
    "\n"
    "<analysis_n>\n"
    "...(analysis of step n)...\n"
    "</analysis_n>\n"
    "\n"
    "<conclusion>\n"
    "Correct/Incorrect\n"
    "</conclusion>\n"
    "\n"
    "* When you analyze each step, you should use proper logical or perceptual verification as "
    "appropriate, or reflection to indicate whether it is logically and perceptually valid. "
    "Please carefully go through this process.\n"
    "\n"
    "* Each analysis should:\n"
    "- Check if the described pattern/rule is actually present\n"
    "- Verify the logical consistency of the step\n"
    "- Confirm that conclusions follow from observations\n"
    "\n"
    "* If an error is detected in any step, you should describe the nature and cause of the "
    "error in detail, and suggest how to correct the error or the correct approach. \n"
    "\n"
    "* When the step is found to contain an error, stop further analysis of subsequent steps "
    "(as they may depend on the identified error) and directly provide the conclusion of "
    '"Incorrect" in the <conclusion> tag.\n'
    "\n"
    "* Only material reasoning or perception errors should trigger the early termination of "
    "the analysis.\n"
    "\n"
    "* For instance, given a solution of five steps, if an error is found in the third step, "
    "you should reply in the following format:\n"
    "\n"
    "<analysis_1>\n"
    "...(analysis of step 1)...\n"
    "</analysis_1>\n"
    "\n"
    "<analysis_2>\n"
    "...(analysis of step 2)...\n"
    "</analysis_2>\n"
    "\n"
    "<analysis_3>\n"
    "...(analysis of step 3; since an error is found here, also provide detailed critique and "
    "correction guideline)...\n"
    "</analysis_3>\n"
    "\n"
    "<conclusion>\n"
    "Incorrect\n"
    "</conclusion>\n"
    "\n"
    "* Note that the analyses of steps 4 and 5 is skipped as step 3 has been found to contain "
    "an error.\n"
    "\n"
    "------------------------------------------------------------\n"
    "\n"
    "The following is the visual reasoning problem and its corresponding solution, for you to "
    "review and verify:\n"
    "\n"
    "[Visual Reasoning Problem]\n"
    " <visual_reasoning_problem>\n"
    "{{ABSTRACT_VISUAL_REASONING_PROBLEM}}\n"
    " </visual_reasoning_problem>\n"
    "\n"
    "[Solution]\n"
    "<solution>\n"
    "{{SOLUTION}}\n"
    "</solution>\n"
    "\n"
    "Remember:\n"
    "- The <conclusion> tag must contain either Correct or Incorrect, with no additional text "
    "or punctuation."
)
PAPER_PROBLEM_SLOT, PAPER_SOLUTION_SLOT = "{{ABSTRACT_VISUAL_REASONING_PROBLEM}}", "{{SOLUTION}}"
PAPER_MAX_COMPLETION_TOKENS = 8192  # the paper's batch requests (merge_and_map_batch.split_jsonl_into_batches)

_CONCLUSION = re.compile(r"<conclusion>(.*?)</conclusion>", re.S)
# convert_mc_to_prm_signal.parse_first_incorrect_step_from_verification, as written.
_VISUAL_ANALYSES = re.compile(r"\[(Visual Elements|Perception)\](.*?)(?=\[Reasoning\]|</conclusion>|$)", re.S)
_REASONING_ANALYSES = re.compile(r"\[Reasoning\](.*?)(?=</conclusion>|$)", re.S)
_ANALYSIS = re.compile(r"<analysis_(\d+)>.*?</analysis_\d+>", re.S)


def paper_prompt_text(problem: str, solution: str) -> str:
    """The paper's verification prompt with its two slots filled, in the paper's order (problem, then solution)."""
    return PAPER_VERIFICATION_PROMPT.replace(PAPER_PROBLEM_SLOT, problem).replace(PAPER_SOLUTION_SLOT, solution)


def paper_problem_text(question: Mapping[str, Any]) -> str:
    """The problem shown to the paper's judge: the question's text, then its options when it has any. (The paper
    showed the whole policy prompt it had sent, instructions included; a record here holds the question only.)"""
    options = question.get("options")
    return question_text(question) + (f"\nOptions: {list(options)}" if options else "")


def build_paper_messages(
    question: Mapping[str, Any], steps: Sequence[str], step_types: Sequence[str | None], answer: str | None = None
) -> list[dict]:
    """One user message: the paper's prompt text (problem, solution in its format), then the image(s)."""
    solution = render_solution(steps, step_types, answer)
    content: list[dict] = [{"type": "text", "text": paper_prompt_text(paper_problem_text(question), solution)}]
    content += [
        {"type": "image_url", "image_url": {"url": image_data_url(image)}} for image in question.get("images") or []
    ]
    return [{"role": "user", "content": content}]


def paper_analysis_blocks(text: str) -> list[tuple[str, int]]:
    """(section, 0-based step index) of every `<analysis_k>` block, by the paper's regular expressions: the blocks
    under `[Visual Elements]` (or `[Perception]`, read as it) first, then those under `[Reasoning]`."""
    blocks = []
    for section in _VISUAL_ANALYSES.finditer(text):
        blocks += [("Visual Elements", int(m.group(1)) - 1) for m in _ANALYSIS.finditer(section.group(2))]
    reasoning = _REASONING_ANALYSES.search(text)
    if reasoning:
        blocks += [("Reasoning", int(m.group(1)) - 1) for m in _ANALYSIS.finditer(reasoning.group(1))]
    return blocks


def parse_paper_verdicts(text: str, step_types: Sequence[str | None]) -> list[str]:
    """One verdict per step from an answer to the paper's prompt; `JudgeParseError` when the rule gives none.

    The paper's rule: the text of the first `<conclusion>` block, stripped, compared without case. "Correct": every
    step correct. "Incorrect": the judge stops at the first error, so the *last* `<analysis_k>` block is the first
    incorrect step (its section and number locate it among `step_types`); the steps before it are correct, it and
    every later step incorrect. No conclusion, another conclusion, no analysis block at all, or a last block naming a
    step the solution does not have: a `JudgeParseError` (the verdicts become "unknown", counted, never guessed).
    """
    conclusion = _CONCLUSION.search(text)
    if conclusion is None:
        raise JudgeParseError("no <conclusion> block")
    verdict = conclusion.group(1).strip().lower()
    if verdict not in ("correct", "incorrect"):
        raise JudgeParseError(f"conclusion {conclusion.group(1).strip()!r} is neither Correct nor Incorrect")
    blocks = paper_analysis_blocks(text)
    if not blocks:
        raise JudgeParseError(f"conclusion {verdict!r} but no <analysis_k> block under a section header")
    if verdict == "correct":
        return [CORRECT] * len(step_types)
    try:
        positions = section_positions(step_types)
    except PaperFormatError as err:
        raise JudgeParseError(str(err)) from err
    section, index = blocks[-1]
    if (section, index) not in positions:
        count = sum(1 for s, _ in positions if s == section)
        raise JudgeParseError(
            f"the last analysis block is step {index + 1} of [{section}], which has {count} step(s) in the solution"
        )
    error = positions.index((section, index))
    return [CORRECT] * error + [INCORRECT] * (len(step_types) - error)


@dataclass(frozen=True)
class JudgePrompt:
    """A judge prompt of `JUDGE_PROMPTS` (see the module docstring).

    Attributes:
        messages: `(question, steps, step_types, answer) -> chat messages`.
        parse: `(answer text, step_types) -> one verdict per step`, raising `JudgeParseError`.
        sampling: `(judge config) -> the request's sampling keys` (temperature, token budget...).
    """

    messages: Callable[..., list[dict]]
    parse: Callable[[str, Sequence[str | None]], list[str]]
    sampling: Callable[[Any], dict[str, Any]]

    def request_body(self, config: Any, question, steps, step_types, answer: str | None = None) -> dict[str, Any]:
        """The chat-completions request body for one solution (`config` is a `JudgeConfig`)."""
        body = {"model": config.judge_model, "messages": self.messages(question, steps, step_types, answer)}
        return {**body, **self.sampling(config)}


JUDGE_PROMPTS: Registry[JudgePrompt] = Registry("judge prompt")
JUDGE_PROMPTS.register("json")(
    JudgePrompt(
        build_messages,
        parse_verdicts,
        lambda config: {"temperature": config.judge_temperature, "max_tokens": config.judge_max_tokens},
    )
)
# The paper's requests set only `max_completion_tokens` (o4-mini accepts no temperature but its default).
JUDGE_PROMPTS.register("paper")(
    JudgePrompt(
        build_paper_messages, parse_paper_verdicts, lambda config: {"max_completion_tokens": config.judge_max_tokens}
    )
)
