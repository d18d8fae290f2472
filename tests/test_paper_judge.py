"""The paper's judge preset: its verification prompt, its solution format and its parsing rule.

The answers below are written in the format of the paper's o4-mini outputs (theogbrand/vlprm,
`rollout_data_generation/llm_judge_verification/verification_pipeline_outputs/o4-mini/`: section headers, one
`<analysis_k>` block a step, stopping at the first error, then `<conclusion>`); the repository carries no licence, so
its texts are not copied. `reference_first_incorrect_step` is written from mmr_rollout_data
`convert_mc_to_prm_signal.parse_first_incorrect_step_from_verification` (regular expressions as written there).
"""

from __future__ import annotations

import hashlib
import re

import pytest
from PIL import Image

from trl_vlprm.data.paper_solution import render_solution, section_positions, solution_answer, split_solution
from trl_vlprm.labeling.judge import JudgeClient, JudgeConfig
from trl_vlprm.labeling.judge_prompts import (
    CORRECT,
    INCORRECT,
    JUDGE_PROMPTS,
    PAPER_VERIFICATION_PROMPT,
    UNKNOWN,
    JudgeParseError,
    paper_analysis_blocks,
    parse_paper_verdicts,
)
from trl_vlprm.testbed.judge_server import JudgeServer

P, R = "perception", "reasoning"
TYPES = [P, P, P, R, R, R, R]


def reference_first_incorrect_step(verification_solution):
    """convert_mc_to_prm_signal.parse_first_incorrect_step_from_verification, minus its logging."""
    conclusion_match = re.search(r"<conclusion>(.*?)</conclusion>", verification_solution, re.DOTALL)
    if not conclusion_match:
        raise ValueError("No conclusion tag")
    if conclusion_match.group(1).strip().lower() != "incorrect":
        raise ValueError("Expected Incorrect")
    analysis_blocks = []
    visual_pattern = r"\[(Visual Elements|Perception)\](.*?)(?=\[Reasoning\]|</conclusion>|$)"
    for section_match in re.finditer(visual_pattern, verification_solution, re.DOTALL):
        for analysis_match in re.finditer(r"<analysis_(\d+)>.*?</analysis_\d+>", section_match.group(2), re.DOTALL):
            analysis_blocks.append((section_match.group(1), int(analysis_match.group(1))))
    reasoning_match = re.search(r"\[Reasoning\](.*?)(?=</conclusion>|$)", verification_solution, re.DOTALL)
    if reasoning_match:
        for analysis_match in re.finditer(r"<analysis_(\d+)>.*?</analysis_\d+>", reasoning_match.group(1), re.DOTALL):
            analysis_blocks.append(("Reasoning", int(analysis_match.group(1))))
    if not analysis_blocks:
        raise ValueError("No analysis block")
    last_section, last_step_num = analysis_blocks[-1]
    if last_section == "Perception":
        last_section = "Visual Elements"
    return (last_section, last_step_num - 1)


def analyses(section, notes, start=1):
    blocks = [f"<analysis_{start + i}>\n{note}\n</analysis_{start + i}>" for i, note in enumerate(notes)]
    return f"[{section}]\n" + "\n".join(blocks)


CORRECT_ANSWER = (
    analyses("Visual Elements", ["The three shapes are described as they appear.", "The colours match.", "Right."])
    + "\n\n"
    + analyses("Reasoning", ["The question is restated faithfully.", "Valid count.", "Follows.", "The sum is 9."])
    + "\n\n<conclusion>\nCorrect\n</conclusion>"
)
# The judge stops at the first perception step it finds wrong (a one-block answer, as o4-mini often gives).
PERCEPTION_ERROR = (
    analyses("Visual Elements", ["The step claims the numbers are sequential; 6483 and 6410 are not."])
    + "\n\n<conclusion>\nIncorrect\n</conclusion>"
)
REASONING_ERROR = (
    analyses("Visual Elements", ["Accurate.", "Accurate.", "Accurate."])
    + "\n\n"
    + analyses("Reasoning", ["Restates the question.", "Correct inference.", "Adds 4 and 4 to get 9: wrong."])
    + "\n\n<conclusion>\nIncorrect\n</conclusion>"
)
# "[Perception]" for the first section, lower-case conclusion, and commentary after it (seen in the paper's parser
# docstring): the rule still reads the last block.
PERCEPTION_HEADER = (
    analyses("Perception", ["Accurate.", "The second circle is blue, not red."])
    + "\n\n<conclusion>\nincorrect\n</conclusion>\n\n---\n\n**Explanation:** step 2 misreads a colour."
)


@pytest.mark.parametrize(
    ("answer", "expected_error"),
    [(PERCEPTION_ERROR, 0), (REASONING_ERROR, 5), (PERCEPTION_HEADER, 1)],
)
def test_incorrect_answers_locate_the_first_error_as_the_papers_parser_does(answer, expected_error):
    section, index = reference_first_incorrect_step(answer)
    assert section_positions(TYPES).index((section, index)) == expected_error
    assert paper_analysis_blocks(answer)[-1] == (section, index)
    verdicts = parse_paper_verdicts(answer, TYPES)
    assert verdicts == [CORRECT] * expected_error + [INCORRECT] * (len(TYPES) - expected_error)


def test_correct_answers_and_what_is_unknown():
    assert parse_paper_verdicts(CORRECT_ANSWER, TYPES) == [CORRECT] * len(TYPES)
    unknown = {
        "no <conclusion>": analyses("Visual Elements", ["Accurate."]),
        "neither Correct nor Incorrect": CORRECT_ANSWER.replace("Correct\n</conclusion>", "Correct.\n</conclusion>"),
        "no <analysis_k> block": "The solution is right.\n<conclusion>\nCorrect\n</conclusion>",
        "step 5 of \\[Reasoning\\], which has 4": analyses("Reasoning", ["a", "b", "c", "d", "e"])
        + "\n<conclusion>\nIncorrect\n</conclusion>",
    }
    for message, answer in unknown.items():
        with pytest.raises(JudgeParseError, match=message):
            parse_paper_verdicts(answer, TYPES)
    # the paper's parser fails on the same answers (and never reads a Correct answer for a step)
    for answer in list(unknown.values())[:3]:
        with pytest.raises(ValueError):
            reference_first_incorrect_step(answer)


def test_the_prompt_text_is_the_papers_and_the_solution_is_rendered_as_the_paper_renders_it():
    # length and digest of `verification_prompt` in theogbrand/vlprm @27babae
    # rollout_data_generation/llm_judge_verification/prompts.py
    assert len(PAPER_VERIFICATION_PROMPT) == 3246
    digest = hashlib.sha256(PAPER_VERIFICATION_PROMPT.encode()).hexdigest()
    assert digest == "5bb1f1fd5e71fef1742ff068a57ecb0e26ca02d2894f18c4a87da41df661f7e6"
    steps = ["There are two circles.", "Both are red.", "Two red circles: the answer is 2."]
    text = render_solution(steps, [P, P, R], "2")
    assert text == (
        "[Visual Elements]\n<step_1>\nThere are two circles.\n</step_1>\n<step_2>\nBoth are red.\n</step_2>\n\n"
        "[Reasoning]\n<step_1>\nTwo red circles: the answer is 2.\n</step_1>\n\n"
        "<correct_answer>\n$\\boxed{2}$\n</correct_answer>"
    )
    assert split_solution(text) == (steps, [P, P, R]) and solution_answer(text) == "$\\boxed{2}$"
    question = {"id": "q", "prompt": "<image>How many red circles?", "images": [Image.new("RGB", (4, 4))]}
    config = JudgeConfig(judge_prompt="paper", judge_model="o4-mini")
    body = JUDGE_PROMPTS.get("paper").request_body(config, question, steps, [P, P, R], "2")
    assert set(body) == {"model", "messages", "max_completion_tokens"}
    (message,) = body["messages"]
    assert message["role"] == "user" and [part["type"] for part in message["content"]] == ["text", "image_url"]
    prompt = message["content"][0]["text"]
    assert prompt.endswith(
        "[Visual Reasoning Problem]\n <visual_reasoning_problem>\nHow many red circles?\n </visual_reasoning_problem>"
        f"\n\n[Solution]\n<solution>\n{text}\n</solution>\n\nRemember:\n- The <conclusion> tag must contain either "
        "Correct or Incorrect, with no additional text or punctuation."
    )


def test_the_online_judge_speaks_the_papers_prompt_to_a_real_server():
    """The JudgeClient with `judge_prompt: paper` against the loopback JudgeServer, which answers in the paper's
    format from gold: verdicts follow the first-error convention; a malformed answer becomes unknown, counted."""
    question = {"id": "q7", "prompt": "<image>Count.", "images": [Image.new("RGB", (4, 4))], "answer": "3"}
    solutions = {
        "clean": ([f"clean {i}" for i in range(4)], [True] * 4),
        "reasoning slip": ([f"slip {i}" for i in range(4)], [True, True, False, True]),
        "misread": ([f"misread {i}" for i in range(4)], [False, True, True, True]),
    }
    types = [P, P, R, R]
    with JudgeServer({}) as server:
        for steps, gold in solutions.values():
            server.add_solution("q7", steps, gold)
        config = JudgeConfig(judge_base_url=server.base_url, judge_prompt="paper", judge_max_retries=0)
        client = JudgeClient(config)
        results = client.judge_many([(question, steps, types, "3") for steps, _ in solutions.values()])
        first_errors = [next((i for i, g in enumerate(gold) if not g), 4) for _, gold in solutions.values()]
        for result, error in zip(results, first_errors):
            assert result.verdicts == [CORRECT] * error + [INCORRECT] * (4 - error)
        assert server.counts["requests"] == 3
    with JudgeServer({}, failures={"*": "malformed"}) as server:
        server.add_solution("q7", *solutions["clean"])
        config = JudgeConfig(judge_base_url=server.base_url, judge_prompt="paper", judge_max_retries=1)
        client = JudgeClient(config)
        (result,) = client.judge_many([(question, solutions["clean"][0], types, "3")])
        assert result.verdicts == [UNKNOWN] * 4 and result.attempts == 2
        assert client.counts["error parse"] == 2 and "no <conclusion>" in result.errors[0]
