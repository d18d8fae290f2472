import pytest

from trl_vlprm.data.answers import (
    ANSWER_KINDS,
    AnswerKind,
    answer_span,
    extract_answer,
    format_number,
    gold_letter,
    grade,
    last_boxed,
    normalize_text,
    numbers_match,
    parse_number,
    reads_as_number_list,
    register_answer_kind,
    resolve_kind,
)

OPTIONS = ["8", "12", "16", "20"]
COLOURS = ["red", "green", "blue", "light blue"]


@pytest.mark.parametrize(
    "output, letter",
    [
        ("The answer is (B).", "B"),
        ("B. 12", "B"),
        ("Answer: B", "B"),
        ("**Answer:** (C) 16", "C"),
        ("Counting the circles gives 4 rows of 3.\nSo there are 12 circles.\nThe final answer is B", "B"),
        ("Each side is 4 cm, so the perimeter is 16.\nAnswer: 16", "C"),
        ("\\boxed{D}", "D"),
        ("The correct option is (a)", "A"),
        ("So the answer is 20.", "D"),
        ("Looking at the options, (A) is too small, and (C) fits.", "C"),
        ("The answer is twelve", None),
    ],
)
def test_extract_multiple_choice(output, letter):
    assert extract_answer(output, OPTIONS) == letter


@pytest.mark.parametrize(
    "output, letter",
    [
        ("The missing circle is blue.", "C"),
        ("Answer: light blue", "D"),
        ("The colour of the missing part is Green", "B"),
        ("Answer: a", "A"),  # a lone lower-case letter is the option letter
    ],
)
def test_extract_choice_by_option_text(output, letter):
    assert extract_answer(output, COLOURS) == letter


@pytest.mark.parametrize(
    "output, number",
    [
        ("So $x = \\boxed{3/4}$.", "0.75"),
        ("\\boxed{\\frac{3}{4}}", "0.75"),
        ("The total is 1,234 apples.\nAnswer: 1,234", "1234"),
        ("The answer is -2.50", "-2.5"),
        ("Final answer: 75%", "75%"),
        ("The length is 12 cm.", "12"),
        ("The answer is $\\$3.5$ per item", "3.5"),
        ("2^3 = 8, so the answer is 8.", "8"),
        ("The answer is 1e-3", "0.001"),
        ("I cannot tell.", None),
    ],
)
def test_extract_numeric(output, number):
    assert extract_answer(output, kind="numeric") == number


@pytest.mark.parametrize(
    "prediction, gold, correct",
    [
        ("\\boxed{3/4}", "0.75", True),
        ("The answer is 0.75", "3/4", True),
        ("Answer: 75%", "0.75", True),
        ("Answer: 75%", "75", True),
        ("Answer: 1,000", "1000", True),
        ("The answer is 12.0", "12", True),
        ("The answer is 12.01", "12", False),
        ("The answer is 13", "12", False),
        ("no number here", "12", False),
        (None, "12", False),
        ("", "12", False),
    ],
)
def test_grade_numeric(prediction, gold, correct):
    assert grade(prediction, gold) is correct


def test_numeric_tolerance_is_relative_and_absolute():
    assert grade("The answer is 3.14", "3.1416", tol=1e-3)
    assert not grade("The answer is 3.14", "3.1416", tol=1e-6)
    assert numbers_match("1000001", "1000000", tol=1e-6)
    assert not numbers_match("1000011", "1000000", tol=1e-6)


@pytest.mark.parametrize(
    "prediction, gold, correct",
    [
        ("The answer is (B).", "B", True),
        ("The answer is (B).", "12", True),  # gold given as the option text
        ("B. 12", "(B)", True),
        ("Answer: C", "B", False),
        ("So there are 12 circles.", "B", True),
        ("B", "B", True),
        ("nothing useful", "B", False),
    ],
)
def test_grade_multiple_choice(prediction, gold, correct):
    assert grade(prediction, gold, OPTIONS) is correct


def test_grade_multiple_choice_rejects_a_gold_outside_the_options():
    with pytest.raises(ValueError, match="'Z'"):
        grade("B", "Z", OPTIONS)


@pytest.mark.parametrize(
    "prediction, gold, correct",
    [
        ("The answer is Blue Whale.", "blue whale", True),
        ("Answer: \\text{triangle}", "Triangle", True),
        ("The answer is square", "triangle", False),
    ],
)
def test_grade_free_form(prediction, gold, correct):
    assert grade(prediction, gold) is correct


def test_resolve_kind_auto():
    assert resolve_kind("auto", ["a", "b"], "a") == "multiple_choice"
    assert resolve_kind("auto", None, "3/4") == "numeric"
    assert resolve_kind("auto", None, "12 cm") == "numeric"
    assert resolve_kind("auto", None, "a triangle with 3 sides") == "free_form"
    with pytest.raises(ValueError, match="unknown answer kind 'symbolic'"):
        resolve_kind("symbolic", None, "x")


def test_helpers():
    assert last_boxed("a \\boxed{\\frac{1}{2}} then \\boxed{x^{2}}") == "x^{2}"
    assert last_boxed("\\boxed{cut off") is None
    assert answer_span("Step 1: look.\nThe answer is: **7**.") == "7"
    assert answer_span("first line\n\nlast line.\n") == "last line"
    assert answer_span("So \\boxed{x = 12}") == "12" and answer_span("Answer: y = 2x + 1") == "y = 2x + 1"
    assert extract_answer("The answer is x = 3/4") == extract_answer("The answer is 0.75") == "0.75"
    assert parse_number("\\frac{-1}{4}") == (-0.25, False)
    assert parse_number("50\\%") == (50.0, True)
    assert format_number(3.0) == "3" and format_number(0.1 + 0.2) == "0.3"
    assert normalize_text('  "Light  Blue". ') == "light blue"
    assert gold_letter("green", COLOURS) == "B" and gold_letter("c", COLOURS) == "C"


def test_register_answer_kind_is_used_by_grade():
    def extract(text, options):
        return answer_span(text).replace(" ", "")

    register_answer_kind("nospace", AnswerKind(extract=extract, match=lambda p, g, o, tol: p == g.replace(" ", "")))
    try:
        assert grade("Answer: x + 1", "x+1", kind="nospace")
        assert not grade("Answer: x + 2", "x+1", kind="nospace")
        with pytest.raises(ValueError, match="already registered"):
            register_answer_kind("nospace", ANSWER_KINDS["nospace"])
    finally:
        ANSWER_KINDS.unregister("nospace")


@pytest.mark.parametrize("solution", ["So \\boxed{[1, 2]}", "The answer is (1, 2)", "Answer: 1, 2", "\\boxed{3; 2}"])
def test_numeric_does_not_read_a_list_as_its_last_number(solution):
    # A list answer names several numbers: reading only the last one would grade "[1, 2]" right against gold 2.
    assert extract_answer(solution, kind="numeric") is None
    assert not grade(solution, "2", kind="numeric")
    assert not grade(solution, "1", kind="numeric")


def test_thousands_separators_still_read_as_one_number():
    assert reads_as_number_list("[3, 4]") and not reads_as_number_list("1,234") and not reads_as_number_list("1,234.5")
    assert grade("\\boxed{1,234}", "1234", kind="numeric") and grade("Answer: 12 cm", "12", kind="numeric")
