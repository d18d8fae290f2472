"""The paper's benchmark prompts and subsets (expected texts written from theogbrand/vlprm's prompt builders)."""

from pathlib import Path

import pytest
import yaml
from PIL import Image as PILImage

from trl_vlprm.data.schema import validate_dataset
from trl_vlprm.eval.benchmarks import (
    PAPER_ALGOPUZZLEVQA_TYPES,
    PAPER_PUZZLEVQA_TYPES,
    load_benchmark,
    mathvision_record,
    mathvista_record,
    mmmu_record,
)
from trl_vlprm.eval.paper_prompts import PAPER_COT_INSTRUCTION, PAPER_POLICY_SYSTEM_PROMPT, algopuzzlevqa_prompt
from trl_vlprm.eval.specs import load_benchmark_spec

SELECT = "Please select the correct answer from the options above."
CONFIG = Path(__file__).parent.parent / "recipes" / "configs" / "eval_tts_paper.yaml"


def picture():
    return PILImage.new("RGB", (16, 12), "red")


def test_instruction_and_system_prompt_are_the_papers():
    assert PAPER_POLICY_SYSTEM_PROMPT.startswith("You are an expert visual analyst who solves complex visual")
    assert PAPER_POLICY_SYSTEM_PROMPT.endswith("essential for identifying the most promising solution.")
    assert len(PAPER_POLICY_SYSTEM_PROMPT) == 1420 and "***Visual Elements***" in PAPER_POLICY_SYSTEM_PROMPT
    assert PAPER_COT_INSTRUCTION.startswith("If you are uncertain or the problem is too complex, make a reasoned")
    assert "Avoid repeating steps indefinitely—provide" in PAPER_COT_INSTRUCTION
    assert PAPER_COT_INSTRUCTION.endswith("within \\boxed{} when you are ready to provide your final answer.")
    assert len(PAPER_COT_INSTRUCTION) == 1024


def test_puzzlevqa_paper_subset_and_prompt_on_the_real_slice():
    questions = load_benchmark("puzzlevqa", limit=50, prompt_style="paper")
    # The shared slice holds 50 questions per type: the paper's 1,000-question subset, in its type order.
    assert len(questions) == 1000 and validate_dataset(questions, check_images=False) == 1000
    order = list(dict.fromkeys(questions["category"]))
    assert order == list(PAPER_PUZZLEVQA_TYPES)
    size = next(q for q in questions if len(q["options"]) == 3)
    four = next(q for q in questions if len(q["options"]) == 4)
    assert four["prompt"] == "\n".join(
        [f"<image>Question: {_question(four)} Options:"]
        + [f"({letter}) {option}" for letter, option in zip("ABCD", four["options"])]
        + [SELECT, PAPER_COT_INSTRUCTION]
    )
    assert "(C) " in size["prompt"] and "(D)" not in size["prompt"]
    default = load_benchmark("puzzlevqa", limit=1)
    assert not default[0]["prompt"].startswith("<image>Question:")  # the default style is unchanged


def _question(record):
    """The raw question of a paper-style puzzle record (between "Question: " and " Options:")."""
    return record["prompt"].split("Question: ", 1)[1].split(" Options:\n", 1)[0]


def test_algopuzzlevqa_paper_types_and_two_options():
    questions = load_benchmark("algopuzzlevqa", limit=50, prompt_style="paper")
    assert list(dict.fromkeys(questions["category"])) == list(PAPER_ALGOPUZZLEVQA_TYPES)
    # This slice holds 10 questions a type (the paper's subset is 50 a type, 900 questions).
    assert len(questions) == 10 * len(PAPER_ALGOPUZZLEVQA_TYPES)
    yes_no = next(q for q in questions if sorted(q["options"]) == ["No", "Yes"])
    assert "(C)" not in yes_no["prompt"] and "\n\n" not in yes_no["prompt"].split(SELECT)[0]
    assert algopuzzlevqa_prompt("Q?", ["Yes", "No"]) == f"Question: Q? Options:\n(A) Yes\n(B) No\n{SELECT}\n" + (
        PAPER_COT_INSTRUCTION
    )


def test_mathvision_options_left_out_when_they_are_letters():
    base = {"image": "x.jpg", "decoded_image": picture(), "answer": "C", "level": 1, "subject": "logic"}
    letters = mathvision_record({**base, "id": "1", "question": "<image1>\nWhich?", "options": list("ABCDE")}, "paper")
    assert letters["prompt"] == "<image>Question: <image1>\nWhich?\n" + PAPER_COT_INSTRUCTION
    assert letters["options"] == list("ABCDE") and len(letters["images"]) == 1
    texts = mathvision_record(
        {**base, "id": "2", "question": "How many?", "options": ["1", "2", "3", "4", "5"]}, "paper"
    )
    options = "".join(f"({letter}) {n}\n" for letter, n in zip("ABCDE", "12345"))
    assert texts["prompt"] == f"<image>Question: How many?\nOptions:{options}{SELECT}\n" + PAPER_COT_INSTRUCTION
    with pytest.raises(ValueError, match="unknown prompt_style 'fancy'"):
        mathvision_record({**base, "id": "3", "question": "?", "options": []}, "fancy")


def test_mathvista_paper_prompt_per_answer_type():
    row = {"pid": "1", "decoded_image": picture(), "question": "Is f(2) larger than f(5)?", "unit": None,
           "choices": ["larger than", "equal to"], "answer": "equal to", "question_type": "multi_choice",
           "answer_type": "text", "precision": None, "metadata": {"task": "tqa"}}  # fmt: skip
    hint = "Hint: Please answer the question and provide the correct option letter, e.g., A, B, C, D, at the end."
    assert mathvista_record(row, "paper")["prompt"] == (
        f"<image>Question: Is f(2) larger than f(5)?\nChoices:\n(A) larger than\n(B) equal to\n{hint}\n"
        + PAPER_COT_INSTRUCTION
    )
    floating = {**row, "choices": None, "question_type": "free_form", "answer_type": "float", "precision": 2.0,
                "unit": "cm", "answer": "1.25"}  # fmt: skip
    prompt = mathvista_record(floating, "paper")["prompt"]
    assert prompt.startswith("<image>Question: Is f(2) larger than f(5)? (Unit: cm)\nHint: Please answer the")
    assert "two decimal places" in prompt and "Choices" not in prompt


def test_mmmu_paper_prompt_keeps_images_in_place():
    row = {"id": "validation_Math_1", "question": "What does <image 1> show?", "options": "['a cat', 'a dog']",
           "image_1": picture(), "answer": "A", "question_type": "multiple-choice"}  # fmt: skip
    record = mmmu_record(row, "Math", "paper")
    assert record["prompt"] == f"Question: What does <image> show?\nOptions:\nA. a cat\nB. a dog\n{SELECT}\n" + (
        PAPER_COT_INSTRUCTION
    )
    assert len(record["images"]) == 1


def test_paper_config_runs_the_paper_protocol():
    config = yaml.safe_load(CONFIG.read_text())
    assert config["system_prompt"] == PAPER_POLICY_SYSTEM_PROMPT
    assert all("prompt=paper" in spec for spec in config["benchmarks"])
    assert "best_of_n:paper" in config["selections"] and "majority" in config["selections"]
    assert max(config["n_values"]) == 16 and config["step_separator"] == "\n\n"
    sampled = [spec for spec in config["policies"] if "greedy@" not in spec]
    greedy = [spec for spec in config["policies"] if "greedy@" in spec]
    assert len(sampled) == 3 and len(greedy) == 1 and "temperature=0," in greedy[0]
    for spec in sampled:
        for setting in ("temperature=0.7", "top_p=0.8", "top_k=20", "repetition_penalty=1.05"):
            assert setting + "," in spec
    step_search = yaml.safe_load((CONFIG.parent / "tts_paper_step_search.yaml").read_text())
    assert (step_search["strategy"], step_search["n"], step_search["aggregation"]) == ("step_selection", 16, "paper")
    assert (step_search["top_k"], step_search["repetition_penalty"], step_search["step_separator"]) == (
        20,
        1.05,
        "\n\n",
    )
    assert step_search["system_prompt"] == PAPER_POLICY_SYSTEM_PROMPT
    name, questions = load_benchmark_spec("puzzlevqa:limit=2,prompt=paper")
    assert name == "puzzlevqa" and len(questions) == 40 and questions[0]["prompt"].startswith("<image>Question: ")


def test_paper_configs_parse():
    from trl import TrlParser

    from trl_vlprm.eval.eval_tts import EvalTTSConfig

    (config,) = TrlParser((EvalTTSConfig,)).parse_args_and_config(["--config", str(CONFIG)])
    assert config.system_prompt == PAPER_POLICY_SYSTEM_PROMPT and config.step_separator == "\n\n"


def test_step_search_preset_runs_on_tiny_models(tmp_path):
    """The second protocol end to end on CPU: paper prompts, HF policy, tiny generative PRM, paper step rule."""
    import importlib.util
    import json

    from trl import TrlParser

    from trl_vlprm.guidance.strategies import SearchConfig
    from trl_vlprm.guidance.tts import TTSArguments
    from trl_vlprm.testing import build_tiny_prm, build_tiny_vlm

    spec = importlib.util.spec_from_file_location("tts_recipe", Path(__file__).parent.parent / "recipes" / "tts.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    model = build_tiny_vlm(tmp_path / "vlm", arch="qwen2_5_vl", seed=0)
    prm = build_tiny_prm(tmp_path / "prm", arch="qwen2_5_vl", seed=0)  # a random generative PRM with its metadata
    out = tmp_path / "steps.jsonl"
    overrides = ["--policy", "hf", "--policy_model_path", str(model), "--prm_model_path", str(prm)]
    overrides += ["--num_questions", "2", "--n", "3", "--max_steps", "2", "--max_step_tokens", "6"]
    overrides += ["--max_new_tokens", "8", "--output_file", str(out)]
    config = CONFIG.parent / "tts_paper_step_search.yaml"
    args, search = TrlParser((TTSArguments, SearchConfig)).parse_args_and_config(["--config", str(config), *overrides])
    summary = recipe.main(args, search)
    assert summary.num_run == 2
    for line in map(json.loads, out.read_text().splitlines()):
        assert line["settings"]["aggregation"] == "paper" and line["settings"]["top_k"] == 20
        for step in line["details"]["steps"]:
            (walk,) = step["walks"]
            # Each kept step is the best by the paper's reward (-1 or a small positive length-scaled value).
            assert all(s == -1 or 0 < s < 1 for s in walk["scores"]) and len(walk["scores"]) == 3
            assert walk["scores"][walk["kept"]] == max(walk["scores"])


def test_every_option_is_lettered_from_the_one_alphabet():
    """Eleven or more options: the paper layouts once lettered only A-J (an IndexError at the 11th option), the answer
    judge went past Z into punctuation; now every place letters with `data.schema.option_letter`."""
    from trl_vlprm.data.answers import grade
    from trl_vlprm.data.schema import option_letter
    from trl_vlprm.eval.answer_judge import AnswerJudge
    from trl_vlprm.eval.paper_prompts import mathvista_prompt, mmmu_prompt
    from trl_vlprm.labeling.judge import JudgeConfig

    options = [f"choice {i}" for i in range(12)]
    assert "K. choice 10\nL. choice 11\n" in mmmu_prompt("Which?", options)
    assert "(K) choice 10\n(L) choice 11" in mathvista_prompt("Which?", options, "multi_choice", "text")
    assert grade("The answer is (L)", "choice 11", options=options)
    with pytest.raises(ValueError, match="at most 26 options"):
        option_letter(26)
    judge = AnswerJudge(JudgeConfig())
    with pytest.raises(ValueError, match="at most 26 options"):  # was "([) option 26"
        judge.messages("Which?", "B", [f"option {i}" for i in range(27)])
