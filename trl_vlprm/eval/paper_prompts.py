"""The paper's policy prompts (Ong et al., 2025; theogbrand/vlprm, eval/tts_eval/reward_guided_search/).

The policy sees `PAPER_POLICY_SYSTEM_PROMPT` as its system message and, as its user message, the image(s) followed by
the text one of the builders below returns; the PRM is given that same user text as its question. Each builder
follows the paper's function of the same benchmark (`puzzleTest_helpers.build_puzzlevqa_prompt`,
`build_algopuzzlevqa_prompt`, `mathvista_helper_functions.build_mathvista_prompt`,
`mathvision_helper_functions.build_mathvision_prompt` + the detailed instruction, and the MMMU branch of
`vllm_bon_greedy_search_no_template.main`). The texts are the paper's, verbatim: a prompt that differs by a word
changes what the policy writes.
"""

from __future__ import annotations

from collections.abc import Sequence

from trl_vlprm.data.schema import option_letter

# prompts.POLICY_VISUAL_ANALYST_SYS_PROMPT_V3
PAPER_POLICY_SYSTEM_PROMPT = (
    "You are an expert visual analyst who solves complex visual reasoning problems by systematically connecting "
    "what you observe in images to the specific requirements of each problem. First, identify and inventory all "
    "problem-relevant visual elements through a step-by-step perceptual process, documenting their spatial "
    "relationships, object identities, and perceptual details with precision at each stage of observation. Then, "
    "construct a step-by-step logical pathway that explicitly shows how each visual observation leads to your "
    "solution, explaining why each detail matters and citing specific image evidence at every step. Your analysis "
    "will be evaluated by a teacher on two criteria: ***Visual Elements*** (accuracy of perception, spatial "
    "understanding, and object recognition) and ***Reasoning*** (logical consistency, valid deductive steps, and "
    "sound analytical conclusions). Multiple solution pathways will be explored in parallel at each step, "
    "building upon previous reasoning to generate diverse approaches, with the teacher scoring each path to "
    "accept or reject based on visual accuracy and logical validity. This approach increases the odds of reaching "
    "a correct final answer by exploring and focusing on perception and reasoning traces that are valid and "
    "correct while ignoring incorrect ones. This makes your precise step-by-step perception and reasoning "
    "essential for identifying the most promising solution."
)

# The "detailed_cot_prompt" every benchmark's user message ends with.
PAPER_COT_INSTRUCTION = (
    "If you are uncertain or the problem is too complex, make a reasoned guess based on the information provided. "
    "Avoid repeating steps indefinitely—provide your best guess even if unsure. Determine whether to think step "
    "by step based on the difficulty of the question, considering all relevant information before answering. If "
    "you do need to think step by step, first, carefully observe and describe everything you see: the image "
    "itself and how it connects to the problem being presented. Then, work through your reasoning step by step to "
    "arrive at your answer. **Your teacher will review your descriptions of visual elements to ensure you're "
    "observing all relevant details accurately, and will critique each step of your reasoning to provide guidance "
    "and ensure you're on the right track.** Put your final answer within \\boxed{}. If multiple-choice options "
    "for answers to the question are provided, select the alphabetical letter of the corresponding best option "
    "within \\boxed{} when you are ready to provide your final answer."
)

_SELECT = "Please select the correct answer from the options above."
_SIZE_OPTIONS = {"small", "medium", "large"}


def _lettered(options: Sequence[str]) -> list[str]:
    return [f"({option_letter(i)}) {option}" for i, option in enumerate(options)]


def puzzlevqa_prompt(question: str, options: Sequence[str]) -> str:
    """PuzzleVQA: question, options (A)-(D) one a line ((D) dropped for the 3-option size puzzles), instructions."""
    options = [str(o) for o in options]
    parts = [f"Question: {question.rstrip()} Options:", *_lettered(options[:3])]
    if not (len(options) == 3 and set(options) == _SIZE_OPTIONS) and len(options) >= 4:
        parts.append(f"(D) {options[3]}")
    return "\n".join([*parts, _SELECT, PAPER_COT_INSTRUCTION])


def algopuzzlevqa_prompt(question: str, options: Sequence[str]) -> str:
    """AlgoPuzzleVQA: as PuzzleVQA, for 2 (Yes/No), 3 (sizes) or 4 options."""
    options = [str(o) for o in options]
    parts = [f"Question: {question.rstrip()} Options:", *_lettered(options[:4])]
    return "\n".join([*parts, _SELECT, PAPER_COT_INSTRUCTION])


def mathvista_prompt(
    question: str,
    choices: Sequence[str],
    question_type: str,
    answer_type: str,
    precision: float | None = None,
    unit: str | None = None,
) -> str:
    """MathVista: question (with unit), lettered choices, the official hint for its answer type, instructions."""
    question_text = f"Question: {question}" + (f" (Unit: {unit})" if unit else "")
    choices_text = "\n".join(["Choices:", *_lettered(choices)]) if choices else ""
    if question_type == "multi_choice":
        hint = "Hint: Please answer the question and provide the correct option letter, e.g., A, B, C, D, at the end."
    elif answer_type == "integer":
        hint = (
            "Hint: Please answer the question requiring an integer answer and provide the final value, e.g., 1, 2, 3, "
            "at the end."
        )
    elif answer_type == "float" and precision == 1:
        hint = (
            "Hint: Please answer the question requiring a floating-point number with one decimal place and provide "
            "the final value, e.g., 1.2, 1.3, 1.4, at the end."
        )
    elif answer_type == "float" and precision == 2:
        hint = (
            "Hint: Please answer the question requiring a floating-point number with two decimal places and provide "
            "the final value, e.g., 1.23, 1.34, 1.45, at the end."
        )
    elif answer_type == "list":
        hint = (
            "Hint: Please answer the question requiring a Python list as an answer and provide the final list, e.g., "
            "[1, 2, 3], [1.2, 1.3, 1.4], at the end."
        )
    else:
        hint = "Hint: Please answer the question and provide the final answer at the end."
    return "\n".join(e for e in (question_text, choices_text, hint, PAPER_COT_INSTRUCTION) if e).strip()


def mathvision_options_shown(options: Sequence[str]) -> bool:
    """MathVision lists options only when they say more than their letters: "A".."E" alone are left out."""
    return bool(options) and "".join(str(o) for o in options) != "ABCDE"


def mathvision_prompt(question: str, options: Sequence[str]) -> str:
    """MathVision: question, options (A)-(E) unless they are just the letters, instructions."""
    text = f"Question: {question}\n"
    if mathvision_options_shown(options):
        text += "Options:" + "".join(f"({option_letter(i)}) {o}\n" for i, o in enumerate(options))
        text += _SELECT + "\n"
    return text + PAPER_COT_INSTRUCTION


def mmmu_prompt(question: str, options: Sequence[str], hint: str | None = None) -> str:
    """MMMU: optional hint, question, options "A. ...", instructions (the paper asks to select even for open ones)."""
    text = f"Hint: {hint}\n" if hint else ""
    text += f"Question: {question}\n"
    if options:
        text += "Options:\n" + "".join(f"{option_letter(i)}. {o}\n" for i, o in enumerate(options))
    text += _SELECT + "\n" + PAPER_COT_INSTRUCTION
    return text.rstrip()
