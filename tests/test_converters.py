"""Converters from TRL stepwise, VL-PRM300K and VisualPRM400K records, on hand-written rows in the exact layouts."""

import re

import pytest
from datasets import Dataset
from PIL import Image

from trl_vlprm.data.converters import (
    ConversionReport,
    SkippedRecord,
    convert_dataset,
    from_trl_stepwise,
    from_visualprm400k,
    from_vlprm300k,
    with_image_placeholders,
)
from trl_vlprm.data.schema import RecordError, validate_dataset, validate_record


def _write_image(path, size=(12, 8), color=(200, 30, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return str(path)


# ---------------------------------------------------------------- TRL stepwise
# Layout: TRL's former stepwise-supervision format (trl-lib/math_shepherd, trl-lib/prm800k):
# {"prompt": str, "completions": list[str], "labels": list[bool]}.
TRL_ROW = {
    "prompt": "Tom has 3 apples and buys 2 more. How many apples does he have?",
    "completions": ["Step 1: He starts with 3 apples.", "Step 2: 3 + 2 = 6. The answer is 6."],
    "labels": [True, False],
}


def test_trl_stepwise_keeps_fields_and_adds_no_images():
    record = from_trl_stepwise(TRL_ROW)
    assert record["prompt"] == TRL_ROW["prompt"]
    assert record["completions"] == TRL_ROW["completions"]
    assert record["labels"] == [True, False]
    assert record["images"] == [] and record["step_types"] is None and record["id"] is None
    validate_record(record, 0)


def test_trl_stepwise_dataset_round_trip():
    rows = [{**TRL_ROW, "id": "q1"}, {**TRL_ROW, "labels": [True, True], "id": "q2"}]
    converted = convert_dataset(Dataset.from_list(rows), "trl_stepwise")
    assert converted.num_rows == 2
    assert converted[1]["labels"] == [True, True] and converted[1]["id"] == "q2"
    assert converted[0]["images"] == [] and converted[0]["step_types"] is None
    assert validate_dataset(converted) == 2


def test_trl_stepwise_missing_labels_names_row():
    rows = [TRL_ROW, {"prompt": "p", "completions": ["a"]}]
    with pytest.raises(RecordError, match=re.escape("row 1: field 'labels': missing")):
        convert_dataset(rows, "trl_stepwise")


# ---------------------------------------------------------------- VL-PRM300K
# Layout: ob11/VL-PRM300K (train/VL_PRM300K_V2.parquet). Columns from the dataset card and viewer: id, conversations,
# first_incorrect_step (a string such as "['Visual Elements', 2]"), steps_with_score ({step, score, num_mc_correct,
# num_mc_total}), rollout_ground_truth_answer, consensus_filtering_algo_label,
# verifier_identified_first_incorrect_step_solution, image, image_qwen_smart_resize, source, question_type, question.
# The user turns follow the paper's item2conv_prm: the first holds "### Question:\n...\n\n### Solution Process:\n
# [Visual Elements]\n<step_1>...</step_1>", a section change prepends "[Reasoning]", each answer is "+" or "-".
QUESTION = "Which shape completes the grid? Answer with [Visual Elements] then [Reasoning] sections."
STEPS = [
    "The grid is 3x3 and its bottom-right cell is missing.",
    "Each row holds a triangle, a square and a circle.",
    "The third row already has a circle, so the answer is a square.",
    "Final answer: square.",
]


def _text(text):
    return [{"type": "text", "text": text}]


def vlprm_row(image="images/RAVEN/train/8135.png", verdicts=("+", "+", "-"), first_incorrect="['Reasoning', 0]"):
    turns = [
        f"### Question:\n{QUESTION}\n\n### Solution Process:\n[Visual Elements]\n<step_1>\n{STEPS[0]}\n</step_1>",
        f"<step_2>\n{STEPS[1]}\n</step_2>",
        f"[Reasoning]\n<step_1>\n{STEPS[2]}\n</step_1>",
    ]
    conversations = [{"role": "system", "content": _text("You are an advanced AI assistant, ...")}]
    for turn, verdict in zip(turns, verdicts):
        conversations += [{"role": "user", "content": _text(turn)}, {"role": "assistant", "content": _text(verdict)}]
    scores = [(12, 16), (8, 16), (0, 16), (0, 16)]
    return {
        "id": "698d978c-5835-4e74-b17d-331d45903bd9",
        "conversations": conversations,
        "first_incorrect_step": first_incorrect,
        "steps_with_score": [
            {"step": step, "score": c / t, "num_mc_correct": c, "num_mc_total": t}
            for step, (c, t) in zip(STEPS, scores)
        ],
        "rollout_ground_truth_answer": "circle",
        "consensus_filtering_algo_label": "o4-mini_incorrect_and_MC_agrees",
        "verifier_identified_first_incorrect_step_solution": "[Perception]\n<analysis_1>\nStep 1 is correct.",
        "image": image,
        "image_qwen_smart_resize": image.replace(".png", "_qwen_smart_resize.png"),
        "source": "RAVEN",
        "question_type": "abstract_visual_reasoning",
        "question": QUESTION,
    }


@pytest.fixture
def vlprm_root(tmp_path):
    _write_image(tmp_path / "images/RAVEN/train/8135.png")
    _write_image(tmp_path / "images/RAVEN/train/8135_qwen_smart_resize.png", size=(28, 28))
    return tmp_path


def test_vlprm300k_fields(vlprm_root):
    record = from_vlprm300k(vlprm_row(), image_root=str(vlprm_root))
    assert record["prompt"] == "<image>\n" + QUESTION
    assert record["images"] == [str(vlprm_root / "images/RAVEN/train/8135.png")]
    assert record["completions"] == STEPS[:3]  # the 4th step is past the first error: not in the conversation
    assert record["labels"] == [True, True, False]
    assert record["step_types"] == ["perception", "perception", "reasoning"]
    assert (record["id"], record["answer"], record["category"]) == (vlprm_row()["id"], "circle", "RAVEN")
    validate_record(record, 0)


def test_vlprm300k_soft_labels_and_resized_image(vlprm_root):
    record = from_vlprm300k(
        vlprm_row(), image_root=str(vlprm_root), soft_labels=True, image_field="image_qwen_smart_resize"
    )
    assert record["labels"] == [0.75, 0.5, 0.0]
    assert record["images"] == [str(vlprm_root / "images/RAVEN/train/8135_qwen_smart_resize.png")]


def test_vlprm300k_sharegpt_turns_and_perception_error(vlprm_root):
    row = vlprm_row(verdicts=("+", "-", "-"), first_incorrect="['Visual Elements', 1]")
    row["conversations"] = [
        {
            "from": {"system": "system", "user": "human", "assistant": "gpt"}[t["role"]],
            "value": t["content"][0]["text"],
        }
        for t in row["conversations"]
    ]
    record = from_vlprm300k(row, image_root=str(vlprm_root))
    assert record["labels"] == [True, False, False]


def test_vlprm300k_all_correct(vlprm_root):
    record = from_vlprm300k(vlprm_row(verdicts=("+", "+", "+"), first_incorrect=None), image_root=str(vlprm_root))
    assert record["labels"] == [True, True, True]


def test_vlprm300k_dataset(vlprm_root):
    # Through Arrow, as load_dataset gives it: struct columns, a string first_incorrect_step.
    source = Dataset.from_list([vlprm_row(), vlprm_row(verdicts=("+", "+", "+"), first_incorrect="")])
    converted = convert_dataset(source, "vlprm300k", image_root=str(vlprm_root))
    assert converted.num_rows == 2
    assert converted.features["images"].feature.__class__.__name__ == "Image"
    image = converted[0]["images"][0]
    assert image.size == (12, 8)
    assert converted[1]["step_types"] == ["perception", "perception", "reasoning"]
    assert [row["labels"] for row in converted] == [[True, True, False], [True, True, True]]
    assert validate_dataset(converted) == 2


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda r: r.pop("conversations"), "row 3: field 'conversations': missing"),
        (lambda r: r.pop("image"), "row 3: field 'image': missing"),
        (
            lambda r: r.update(steps_with_score=r["steps_with_score"][:2]),
            "row 3: field 'steps_with_score': 2 step(s) for 3 conversation turn(s)",
        ),
        (
            lambda r: r["steps_with_score"][1].update(score=1.5),
            "row 3: field 'steps_with_score': step 1 has score 1.5; expected a number in [0, 1]",
        ),
        (
            lambda r: r["conversations"][2].update(content=_text("maybe")),
            "row 3: field 'conversations': assistant turn 0 is 'maybe'; expected '+' or '-'",
        ),
        (
            lambda r: r["steps_with_score"][0].update(step="A different step."),
            "row 3: field 'conversations': user turn 0 does not hold step 0 of steps_with_score",
        ),
    ],
)
def test_vlprm300k_bad_record_names_row_and_field(vlprm_root, edit, message):
    rows = [vlprm_row() for _ in range(4)]
    edit(rows[3])
    with pytest.raises(RecordError, match=re.escape(message)):
        convert_dataset(rows, "vlprm300k", image_root=str(vlprm_root))


def test_vlprm300k_row_with_inconsistent_first_incorrect_step_is_skipped_and_reported(vlprm_root, caplog):
    rows = [vlprm_row() for _ in range(5)]
    for index in (1, 3):
        rows[index]["id"] = f"bad-{index}"
        rows[index]["first_incorrect_step"] = "['Visual Elements', 1]"  # the first '-' turn is reasoning step 0
    with pytest.raises(SkippedRecord, match=re.escape("is ('reasoning', 0)")):  # alone, the row is still an error
        from_vlprm300k(rows[1], image_root=str(vlprm_root))
    report = ConversionReport()
    converted = convert_dataset(rows, "vlprm300k", image_root=str(vlprm_root), report=report)
    assert converted.num_rows == 3 and report.converted == 3
    assert report.skipped_ids == ["bad-1", "bad-3"] and [e["row"] for e in report.skipped] == [1, 3]
    assert all("first_incorrect_step" in e["reason"] for e in report.skipped)
    assert "skipped 2: bad-1, bad-3" in caplog.text


def test_vlprm300k_paper_text_keeps_the_papers_turns(vlprm_root):
    row = vlprm_row()
    row["conversations"][-2]["content"] = _text(
        f"[Reasoning]\n<step_1>\n{STEPS[2]}\n</step_1>\n<correct_answer>\nsquare\n</correct_answer>"
    )
    row["question"] = "a shorter question than the one the PRM read"
    record = from_vlprm300k(row, image_root=str(vlprm_root), paper_text=True)
    # The question as written in the wrapper of the first turn, image first, as in the paper's messages.
    assert record["prompt"] == "<image>" + QUESTION
    assert record["completions"] == [
        f"[Visual Elements]\n<step_1>\n{STEPS[0]}\n</step_1>",
        f"<step_2>\n{STEPS[1]}\n</step_2>",
        f"[Reasoning]\n<step_1>\n{STEPS[2]}\n</step_1>\n<correct_answer>\nsquare\n</correct_answer>",
    ]
    # Rebuilding the paper's first user turn from the record gives the upstream turn back, character for character.
    first_turn = row["conversations"][1]["content"][0]["text"]
    question = record["prompt"].removeprefix("<image>")
    assert f"### Question:\n{question}\n\n### Solution Process:\n{record['completions'][0]}" == first_turn
    assert record["labels"] == [True, True, False] and record["step_types"] == [
        "perception",
        "perception",
        "reasoning",
    ]
    validate_record(record, 0)
    plain = from_vlprm300k(row, image_root=str(vlprm_root))
    assert plain["completions"] == STEPS[:3] and plain["prompt"] == "<image>\n" + row["question"]


def test_vlprm300k_missing_image_file(vlprm_root):
    row = vlprm_row(image="images/RAVEN/train/404.png")
    missing = vlprm_root / "images/RAVEN/train/404.png"
    with pytest.raises(RecordError, match=re.escape(f"row 0: field 'image': image file not found: {missing}")):
        convert_dataset([row], "vlprm300k", image_root=str(vlprm_root))


# ---------------------------------------------------------------- VisualPRM400K
# Layout: OpenGVLab/VisualPRM400K-v1.1-Raw dataset card ("Data fields": image, question, answer, response,
# steps_with_score, num_mc_sequences) and InternVL's
# internvl_chat/tools/reasoning_data_pipeline/visualprm_data_pieline.py, which writes per step
# {step, score, num_mc_correct, num_mc_total}, keeps the source question in `question_orig`, stores the prompted
# question with "<image>\n" in front, and gives the steps after an early stop score 0 with 0 samples.
def visualprm_row(image="MAVIS-Geometry/depth1/17/17_vision_dominant.jpg", question=None):
    steps = [("Angle A is 40 degrees by the figure.", 9), ("So x = 180 - 40 - 40 = 90.", 0), ("Final answer: 90", 0)]
    return {
        "image": image,
        "question": question or "<image>\nYour task is to answer the question below.\n\nQuestion:\n\nFind x.",
        "question_orig": "Find x.",
        "answer": "100",
        "response": "\n\n".join(text for text, _ in steps),
        "steps_with_score": [
            {"step": text, "score": c / 16 if i < 2 else 0.0, "num_mc_correct": c, "num_mc_total": 16 if i < 2 else 0}
            for i, (text, c) in enumerate(steps)
        ],
        "num_mc_sequences": 16,
    }


@pytest.fixture
def visualprm_root(tmp_path):
    _write_image(tmp_path / "MAVIS-Geometry/depth1/17/17_vision_dominant.jpg")
    _write_image(tmp_path / "extra/b.png", size=(5, 5))
    return tmp_path


def test_visualprm400k_threshold_labels(visualprm_root):
    record = from_visualprm400k(visualprm_row(), image_root=str(visualprm_root))
    assert record["prompt"] == visualprm_row()["question"]  # the placeholder is already there
    assert record["images"] == [str(visualprm_root / "MAVIS-Geometry/depth1/17/17_vision_dominant.jpg")]
    assert record["completions"] == [
        "Angle A is 40 degrees by the figure.",
        "So x = 180 - 40 - 40 = 90.",
        "Final answer: 90",
    ]
    assert record["labels"] == [True, False, False]
    assert record["answer"] == "100" and record["step_types"] is None
    validate_record(record, 0)
    assert from_visualprm400k(visualprm_row(), str(visualprm_root), threshold=0.6)["labels"] == [False] * 3


def test_visualprm400k_soft_labels_and_early_stop(visualprm_root):
    soft = from_visualprm400k(visualprm_row(), image_root=str(visualprm_root), threshold=None)
    assert soft["labels"] == [0.5625, 0.0, 0.0]
    stopped = from_visualprm400k(visualprm_row(), image_root=str(visualprm_root), stop_at_first_error=True)
    assert stopped["labels"] == [True, False] and len(stopped["completions"]) == 2


def test_visualprm400k_placeholders_and_image_list(visualprm_root):
    row = visualprm_row(image=["MAVIS-Geometry/depth1/17/17_vision_dominant.jpg", "extra/b.png"], question="Find x.")
    record = from_visualprm400k(row, image_root=str(visualprm_root))
    assert record["prompt"] == "<image><image>\nFind x."
    assert len(record["images"]) == 2
    validate_record(record, 0)
    bad = visualprm_row(image=row["image"], question="<image>\nFind x.")
    with pytest.raises(
        RecordError, match=re.escape("row 5: field 'question': 1 '<image>' placeholder(s) for 2 image(s)")
    ):
        from_visualprm400k(bad, image_root=str(visualprm_root), row=5)


def test_visualprm400k_dataset_soft_labels_are_floats(visualprm_root):
    converted = convert_dataset([visualprm_row()] * 3, "visualprm400k", image_root=str(visualprm_root), threshold=None)
    assert converted.features["labels"].feature.dtype == "float32"
    assert converted[2]["labels"] == [0.5625, 0.0, 0.0]
    assert validate_dataset(converted) == 3


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda r: r.pop("question"), "row 1: field 'question': missing"),
        (lambda r: r.pop("steps_with_score"), "row 1: field 'steps_with_score': missing"),
        (
            lambda r: r["steps_with_score"][2].pop("score"),
            "row 1: field 'steps_with_score': step 2 must be a dict with 'step' and 'score'",
        ),
        (
            lambda r: r["steps_with_score"][1].update(step="  "),
            "row 1: field 'steps_with_score': step 1 text is empty",
        ),
        (lambda r: r.update(image=None), "row 1: field 'image': missing"),
    ],
)
def test_visualprm400k_bad_record_names_row_and_field(visualprm_root, edit, message):
    rows = [visualprm_row(), visualprm_row()]
    edit(rows[1])
    with pytest.raises(RecordError, match=re.escape(message)):
        convert_dataset(rows, "visualprm400k", image_root=str(visualprm_root))


def test_relative_image_without_root_says_so(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RecordError, match=re.escape("(relative path and no image_root given)")):
        from_visualprm400k(visualprm_row(), row=0)


def test_with_image_placeholders():
    assert with_image_placeholders("Q?", 0) == "Q?"
    assert with_image_placeholders("Q?", 2) == "<image><image>\nQ?"
    assert with_image_placeholders("a <image> b", 1) == "a <image> b"


def test_unknown_format():
    with pytest.raises(ValueError, match="unknown source format 'prm800k'"):
        convert_dataset([TRL_ROW], "prm800k")
