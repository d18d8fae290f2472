"""Benchmark loaders on small local datasets written in each benchmark's published hub schema."""

import pytest
from datasets import Dataset, Features, Image, List, Value
from PIL import Image as PILImage

from trl_vlprm.data.answers import grade
from trl_vlprm.data.schema import RecordError, validate_dataset
from trl_vlprm.eval.benchmarks import BENCHMARKS, load_benchmark, mmmu_record

COLOURS = ["red", "green", "blue", "yellow"]


def picture(colour):
    return PILImage.new("RGB", (16, 12), colour)


def colour_of(image):
    return image.convert("RGB").getpixel((0, 0))


MMMU_FEATURES = Features(
    {"id": Value("string"), "question": Value("string"), "options": Value("string"), "explanation": Value("string"),
     **{f"image_{k}": Image() for k in range(1, 8)}, "img_type": Value("string"), "answer": Value("string"),
     "topic_difficulty": Value("string"), "question_type": Value("string"), "subfield": Value("string")}
)  # fmt: skip


def mmmu_row(rid, question, options, images, answer, question_type="multiple-choice"):
    row = {
        "id": rid,
        "question": question,
        "options": options,
        "explanation": "",
        "img_type": "['Diagrams']",
        "answer": answer,
        "topic_difficulty": "Medium",
        "question_type": question_type,
        "subfield": "Calculus",
    }
    row.update({f"image_{k}": images.get(k) for k in range(1, 8)})
    return row  # fmt: skip


@pytest.fixture(scope="module")
def mmmu_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("MMMU")
    rows = [
        mmmu_row("validation_Math_1", "Compare <image 2> with <image 1>. Which option matches?",
                 "['<image 3>', 'neither']", {1: picture("red"), 2: picture("green"), 3: picture("blue")}, "A"),
        mmmu_row("validation_Math_2", "What is the slope?", "[]", {1: picture("yellow")}, "0.5", "open"),
    ]  # fmt: skip
    (root / "Math").mkdir()
    Dataset.from_list(rows, features=MMMU_FEATURES).to_parquet(
        str(root / "Math" / "validation-00000-of-00001.parquet")
    )
    return root


def test_mmmu_local_copy_in_hub_layout(mmmu_dir):
    questions = load_benchmark("mmmu", str(mmmu_dir))
    assert len(questions) == 2 and validate_dataset(questions) == 2
    first, second = questions[0], questions[1]
    # <image k> citations become placeholders; images follow the citation order (2, 1, then 3 in option A).
    assert first["prompt"] == "Compare <image> with <image>. Which option matches?\n(A) <image>\n(B) neither"
    assert [colour_of(im) for im in first["images"]] == [(0, 128, 0), (255, 0, 0), (0, 0, 255)]
    assert first["options"] == ["<image 3>", "neither"]  # options as published; only the prompt is rewritten
    assert first["answer_kind"] == "multiple_choice" and first["category"] == "Calculus"
    # An image no text cites is shown first.
    assert second["prompt"] == "<image>\nWhat is the slope?" and second["answer_kind"] == "auto"
    assert grade("The answer is (A).", first["answer"], first["options"], first["answer_kind"])
    assert not grade("Answer: B", first["answer"], first["options"], first["answer_kind"])
    assert grade("The slope is \\boxed{1/2}", second["answer"], second["options"], second["answer_kind"])


def test_mmmu_record_errors_name_the_row_and_field():
    with pytest.raises(RecordError, match="row validation_Art_3: field 'image_2'"):
        mmmu_record(mmmu_row("validation_Art_3", "See <image 2>", "['a', 'b']", {1: picture("red")}, "A"))
    with pytest.raises(RecordError, match="row validation_Art_4: field 'options'"):
        mmmu_record(mmmu_row("validation_Art_4", "Q", "['a', 'b'", {}, "A"))


MATHVISTA_FEATURES = Features(
    {"pid": Value("string"), "question": Value("string"), "image": Value("string"), "decoded_image": Image(),
     "choices": List(Value("string")), "unit": Value("string"), "precision": Value("float64"),
     "answer": Value("string"), "question_type": Value("string"), "answer_type": Value("string"),
     "metadata": {"category": Value("string"), "context": Value("string"), "grade": Value("string"),
                  "img_height": Value("int64"), "img_width": Value("int64"), "language": Value("string"),
                  "skills": List(Value("string")), "source": Value("string"), "split": Value("string"),
                  "task": Value("string")},
     "query": Value("string")}
)  # fmt: skip


def mathvista_row(pid, question, choices, answer, question_type, answer_type, precision=None):
    hint = "Hint: Please answer the question and provide the correct option letter at the end."
    query = f"{hint}\nQuestion: {question}" + (f"\nChoices:\n(A) {choices[0]}" if choices else "")
    return {"pid": pid, "question": question, "image": f"images/{pid}.jpg", "decoded_image": picture("red"),
            "choices": choices, "unit": None, "precision": precision, "answer": answer, "question_type": question_type,
            "answer_type": answer_type, "query": query,
            "metadata": {"category": "math-targeted-vqa", "context": "function plot", "grade": "college",
                         "img_height": 12, "img_width": 16, "language": "english", "skills": ["algebraic reasoning"],
                         "source": "FunctionQA", "split": "testmini",
                         "task": "textbook question answering"}}  # fmt: skip


@pytest.fixture(scope="module")
def mathvista_rows():
    return [
        mathvista_row("1", "Is f(2) larger than f(5)?", ["larger than", "equal to", "smaller than"], "equal to",
                      "multi_choice", "text"),
        mathvista_row("2", "How many bars are there?", None, "7", "free_form", "integer"),
        mathvista_row("3", "What is the value of x?", None, "1.25", "free_form", "float", precision=2.0),
    ]  # fmt: skip


@pytest.mark.parametrize("layout", ["parquet", "save_to_disk"])
def test_mathvista_testmini(tmp_path, mathvista_rows, layout):
    dataset = Dataset.from_list(mathvista_rows, features=MATHVISTA_FEATURES)
    if layout == "parquet":
        (tmp_path / "data").mkdir()
        dataset.to_parquet(str(tmp_path / "data" / "testmini-00000-of-00001.parquet"))
    else:
        from datasets import DatasetDict

        DatasetDict({"testmini": dataset}).save_to_disk(str(tmp_path))
    questions = load_benchmark("mathvista", str(tmp_path))
    assert [q["answer_kind"] for q in questions] == ["multiple_choice", "numeric", "numeric"]
    first = questions[0]
    assert first["prompt"].startswith("<image>\nHint:") and "(A) larger than" in first["prompt"]
    assert first["category"] == "textbook question answering" and len(first["images"]) == 1
    assert grade("The derivative is the same, so (B)", first["answer"], first["options"], first["answer_kind"])
    assert grade("So the answer is equal to.", first["answer"], first["options"], first["answer_kind"])
    assert grade("There are 7 bars.", questions[1]["answer"], None, questions[1]["answer_kind"])
    assert grade("x = \\frac{5}{4}", questions[2]["answer"], None, questions[2]["answer_kind"])
    assert load_benchmark("mathvista", str(tmp_path), limit=2).num_rows == 2


MATHVISION_FEATURES = Features(
    {"id": Value("string"), "question": Value("string"), "options": List(Value("string")), "image": Value("string"),
     "decoded_image": Image(), "answer": Value("string"), "solution": Value("string"), "level": Value("int64"),
     "subject": Value("string")}
)  # fmt: skip


def test_mathvision_splits(tmp_path):
    rows = [
        {"id": "1", "question": "<image1>\nWhich shape comes next?", "options": ["A", "B", "C", "D", "E"],
         "image": "images/1.jpg", "decoded_image": picture("blue"), "answer": "C", "solution": None, "level": 1,
         "subject": "logic"},
        {"id": "2", "question": "How many dots are hidden?", "options": [], "image": "images/2.jpg",
         "decoded_image": picture("green"), "answer": "12", "solution": None, "level": 3, "subject": "counting"},
    ]  # fmt: skip
    (tmp_path / "data").mkdir()
    for split in ("test", "testmini"):
        path = tmp_path / "data" / f"{split}-00000-of-00001.parquet"
        Dataset.from_list(rows, features=MATHVISION_FEATURES).to_parquet(str(path))
    for split in ("test", "testmini"):
        questions = load_benchmark("mathvision", str(tmp_path), split=split)
        assert validate_dataset(questions) == 2
    first, second = questions[0], questions[1]
    assert first["prompt"] == "<image>\nWhich shape comes next?\n(A) A\n(B) B\n(C) C\n(D) D\n(E) E"
    assert first["category"] == "logic/level1" and first["answer_kind"] == "multiple_choice"
    assert second["prompt"] == "<image>\nHow many dots are hidden?" and second["answer_kind"] == "auto"
    assert grade("The answer is (C)", first["answer"], first["options"], first["answer_kind"])
    assert grade("Hidden: \\boxed{12}", second["answer"], None, second["answer_kind"])
    assert not grade("Hidden: \\boxed{13}", second["answer"], None, second["answer_kind"])


@pytest.mark.parametrize("name, categories", [("puzzlevqa", 20), ("algopuzzlevqa", 18)])
def test_puzzle_benchmarks_on_the_real_slice(name, categories):
    questions = load_benchmark(name, limit=1)
    assert len(questions) == categories and set(questions["answer_kind"]) == {"multiple_choice"}
    assert validate_dataset(questions, check_images=False) == categories
    for question in questions:
        assert grade(f"Answer: {question['answer']}", question["answer"], question["options"], "multiple_choice")


def test_registry_and_testbed():
    assert set(BENCHMARKS) == {"mmmu", "mathvista", "mathvision", "puzzlevqa", "algopuzzlevqa", "testbed"}
    testbed = load_benchmark("testbed", "4", limit=6)
    assert len(testbed) == 6 and testbed[0]["id"].endswith("-s4-00000")
    with pytest.raises(ValueError, match="unknown benchmark 'mmlu'"):
        load_benchmark("mmlu")
