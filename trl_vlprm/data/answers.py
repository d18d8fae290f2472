"""Read the final answer out of a model's solution and grade it against the gold answer.

Used by labelling (Monte-Carlo rollouts), guidance (votes) and evaluation, so all three agree on what "correct" means.

Three answer kinds come built in; each is an `AnswerKind` in the `ANSWER_KINDS` registry and more can be added with
`register_answer_kind` (or `ANSWER_KINDS.register(name)(kind)`):

| kind              | extracted form                      | matches when                                       |
|-------------------|-------------------------------------|----------------------------------------------------|
| `multiple_choice` | the option letter ("B")             | same letter as the gold (gold: letter or option text) |
| `numeric`         | a canonical number ("0.75")         | equal within `tol` (relative and absolute)         |
| `free_form`       | normalized text ("blue whale")      | equal after normalization                          |

`kind="auto"` picks `multiple_choice` when options are given, else `numeric` when the gold answer (or, in
`extract_answer`, the answer span) reads as a number, else `free_form`. A prediction written as a percent ("75%")
also matches the gold 0.75.

Finding the answer span: the last `\\boxed{...}`, else the text after the last "answer is" / "Answer:" /
"final answer", else the last non-empty line.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from trl_vlprm.data.schema import OPTION_LETTERS, option_letter
from trl_vlprm.registry import Registry, UnknownNameError

_MARKER = re.compile(
    r"(?:final\s+answer|correct\s+(?:answer|option|choice)|answer|option|choice)\s*(?:is|would\s+be|should\s+be|=)?"
    r"\s*[:：]?\s*",
    re.IGNORECASE,
)
_NUMBER = re.compile(
    r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?(?:[eE][-+]?\d+)?(?:\s*/\s*-?\d+(?:\.\d+)?)?\s*(?:\\?%)?"
)
_FRAC = re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` (or `\\fbox{...}`), braces balanced; None when there is none."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth = 1
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j]
    return None  # unbalanced: the solution was cut off


def answer_span(text: str) -> str:
    """The part of a solution that states the final answer (see the module docstring for the order tried)."""
    boxed = last_boxed(text)
    if boxed is not None:
        return _strip_decoration(boxed)
    matches = list(_MARKER.finditer(text))
    for match in reversed(matches):
        rest = text[match.end() :].split("\n", 1)[0].strip()
        if rest:
            return _strip_decoration(rest)
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return _strip_decoration(lines[-1]) if lines else ""


def _strip_decoration(span: str) -> str:
    previous = None
    while span != previous:  # "**7**." -> "7": markdown, dollars and the full stop come in any order
        previous = span
        span = re.sub(r"^\$+|\$+$", "", span.strip().strip("*").strip()).strip().rstrip(".")
    # "x = 12" states the number 12: keep the value so it votes with a bare "12" (equations with unknowns stay).
    assignment = re.fullmatch(r"[A-Za-z]\w{0,10}\s*=\s*(.+)", span.strip())
    if assignment and _reads_as_number(assignment.group(1)):
        return assignment.group(1).strip()
    return span.strip()


# ---------------------------------------------------------------- numbers


def parse_number(text: str) -> tuple[float, bool] | None:
    """The last number in `text` as (value, written_as_percent); None when there is none.

    Reads "1,234", "-0.5", "3/4", "\\frac{3}{4}", "1e-3", "75%", "$12", "12 cm".
    """
    text = _FRAC.sub(lambda m: f"{m.group(1).strip()}/{m.group(2).strip()}", text)
    text = text.replace("\\!", "").replace("{,}", ",").replace("−", "-")
    found = [m.group(0).strip() for m in _NUMBER.finditer(text) if re.search(r"\d", m.group(0))]
    if not found:
        return None
    token = found[-1]
    percent = token.endswith("%")
    token = token.rstrip("%").rstrip("\\").strip().replace(",", "")
    try:
        if "/" in token:
            numerator, denominator = (float(part) for part in token.split("/"))
            if denominator == 0:
                return None
            value = numerator / denominator
        else:
            value = float(token)
    except ValueError:
        return None
    return value, percent


def format_number(value: float) -> str:
    """Canonical text of a number: integers without ".0", others with up to 10 significant digits."""
    if math.isfinite(value) and value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.10g}"


def numbers_match(prediction: str, gold: str, tol: float = 1e-6) -> bool:
    """Both read as numbers equal within `tol`; a prediction written as a percent also matches gold / 100 forms."""
    parsed_prediction, parsed_gold = parse_number(prediction), parse_number(gold)
    if parsed_prediction is None or parsed_gold is None:
        return False
    (value, percent), (gold_value, _) = parsed_prediction, parsed_gold
    candidates = [value, value / 100] if percent else [value]
    return any(math.isclose(v, gold_value, rel_tol=tol, abs_tol=tol) for v in candidates)


# ---------------------------------------------------------------- free form


def normalize_text(text: str) -> str:
    """Lower case, no LaTeX `\\text{}` wrapper, no surrounding quotes/punctuation, single spaces."""
    text = re.sub(r"\\(?:text|mathrm|textbf)\{([^{}]*)\}", r"\1", text)
    text = text.replace("$", "").casefold()
    text = re.sub(r"\s+", " ", text).strip()
    return text.strip(" .,;:!?\"'`*()[]")


# ---------------------------------------------------------------- multiple choice


def _letter_in_span(span: str, num_options: int) -> str | None:
    allowed = OPTION_LETTERS[:num_options]
    match = re.match(r"^\(?\s*([A-Za-z])\s*\)?(?:$|[.:)\s])", span.strip())
    if match and match.group(1).upper() in allowed:
        letter = match.group(1)
        # A bare lower-case word start ("a cat") is text, not option (a), unless it is the whole span.
        if letter.isupper() or span.strip().strip("().").strip() == letter or span.strip().startswith("("):
            return letter.upper()
    return None


def _option_from_text(span: str, options: Sequence[str]) -> str | None:
    normalized = normalize_text(span)
    for index, option in enumerate(options):
        if normalize_text(option) == normalized:
            return option_letter(index)
    parsed = parse_number(span)
    if parsed is not None and re.fullmatch(r"[-+$\d.,/%\s\\a-z{}]*", span.casefold()):
        numeric = [i for i, option in enumerate(options) if parse_number(option) and numbers_match(span, option)]
        if len(numeric) == 1:
            return option_letter(numeric[0])
    contained = [
        i
        for i, option in enumerate(options)
        if normalize_text(option) and re.search(rf"(?<!\w){re.escape(normalize_text(option))}(?!\w)", normalized)
    ]
    if len(contained) == 1:
        return option_letter(contained[0])
    if len(contained) > 1:  # "red, not blue": the longest option named wins only when it contains the others
        longest = max(contained, key=lambda i: len(options[i]))
        if all(normalize_text(options[i]) in normalize_text(options[longest]) for i in contained):
            return option_letter(longest)
    return None


def extract_choice(text: str, options: Sequence[str]) -> str | None:
    """The option letter a solution picks: "(B)", "B. 12", "Answer: B", the option's text, or a matching number."""
    if not options:
        raise ValueError("extract_choice needs the options")
    span = answer_span(text)
    letter = _letter_in_span(span, len(options)) or _option_from_text(span, options)
    if letter is not None:
        return letter
    # No marker nor box: the last parenthesised letter anywhere ("... so (C) holds").
    found = re.findall(r"\(([A-Z])\)", text)
    found = [x for x in found if x in OPTION_LETTERS[: len(options)]]
    return found[-1] if found else None


def gold_letter(gold: str, options: Sequence[str]) -> str | None:
    """The gold answer as an option letter (gold may be the letter, "(B)", or the option's text)."""
    stripped = gold.strip().strip("()").strip().rstrip(".")
    if len(stripped) == 1 and stripped.upper() in OPTION_LETTERS[: len(options)]:
        return stripped.upper()
    for index, option in enumerate(options):
        if normalize_text(option) == normalize_text(gold):
            return option_letter(index)
    return None


# ---------------------------------------------------------------- registry


@dataclass(frozen=True)
class AnswerKind:
    """How one kind of answer is read and compared.

    Attributes:
        extract: `(text, options) -> str | None`: the answer in canonical form, None when none can be read.
        match: `(prediction, gold, options, tol) -> bool`: prediction (already extracted) against the gold answer.
    """

    extract: Callable[[str, Sequence[str] | None], str | None]
    match: Callable[[str, str, Sequence[str] | None, float], bool]


def reads_as_number_list(span: str) -> bool:
    """The span lists several numbers ("[1, 2]", "(3; 4)", "1, 2, 3"): an answer that is not one number.

    A thousands separator is not a list: "1,234" is one number.
    """
    text = _FRAC.sub(lambda m: f"{m.group(1).strip()}/{m.group(2).strip()}", span).strip()
    item = r"[-+]?\s*(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?(?:/\d+)?"
    if re.fullmatch(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?", text):
        return False
    return re.fullmatch(rf"[\[(\{{]?\s*{item}(?:\s*[,;]\s*{item})+\s*[\])\}}]?", text) is not None and bool(
        re.search(r"\d", text)
    )


def _extract_numeric(text: str, options: Sequence[str] | None) -> str | None:
    span = answer_span(text)
    if reads_as_number_list(span):  # "\boxed{[1, 2]}" answers with a list; reading its last item would say "2"
        return None
    parsed = parse_number(span)
    if parsed is None:
        return None
    value, percent = parsed
    return format_number(value) + ("%" if percent else "")


def _extract_free_form(text: str, options: Sequence[str] | None) -> str | None:
    return normalize_text(answer_span(text)) or None


def _match_choice(prediction: str, gold: str, options: Sequence[str] | None, tol: float) -> bool:
    options = options or []
    expected = gold_letter(gold, options)
    if expected is None:
        raise ValueError(f"gold answer {gold!r} is neither an option letter nor one of the options {list(options)}")
    stripped = prediction.strip()
    predicted = stripped if stripped in OPTION_LETTERS[: len(options)] else extract_choice(prediction, options)
    return predicted == expected


ANSWER_KINDS: Registry[AnswerKind] = Registry("answer kind")
ANSWER_KINDS.register("multiple_choice")(
    AnswerKind(extract=lambda text, options: extract_choice(text, options or []), match=_match_choice)
)
ANSWER_KINDS.register("numeric")(
    AnswerKind(extract=_extract_numeric, match=lambda p, g, o, tol: numbers_match(p, g, tol))
)
ANSWER_KINDS.register("free_form")(
    AnswerKind(extract=_extract_free_form, match=lambda p, g, o, tol: normalize_text(p) == normalize_text(g) != "")
)


def register_answer_kind(name: str, kind: AnswerKind, overwrite: bool = False) -> None:
    """Add an answer kind (e.g. a symbolic-math checker) usable as `kind=name` everywhere.

    Unlike `ANSWER_KINDS.register`, which lets a module re-register the very object it registered, a name already
    taken is an error unless `overwrite` is set: a caller registering a kind twice is confused about which one holds.
    """
    if name in ANSWER_KINDS and not overwrite:
        raise ValueError(f"answer kind {name!r} is already registered; pass overwrite=True to replace it")
    ANSWER_KINDS.register(name, overwrite=True)(kind)


def resolve_kind(kind: str, options: Sequence[str] | None, reference: str | None) -> str:
    """The concrete kind for `kind="auto"` (see the module docstring); other names are checked and returned."""
    if kind == "auto":
        if options:
            return "multiple_choice"
        if reference is not None and parse_number(reference) is not None and _reads_as_number(reference):
            return "numeric"
        return "free_form"
    if kind not in ANSWER_KINDS:
        raise UnknownNameError(f"{ANSWER_KINDS.unknown(kind)} (or 'auto')")
    return kind


def _reads_as_number(text: str) -> bool:
    """The text is a number with at most a unit or a sign around it ("12", "$3.5", "75%", "3/4", "12 cm")."""
    text = _FRAC.sub("1/1", text).strip()
    return re.fullmatch(r"[-+$]?\s*[\d.,/eE%\\\s-]+\s*[A-Za-z°]{0,6}\.?", text) is not None


def extract_answer(text: str, options: Sequence[str] | None = None, kind: str = "auto") -> str | None:
    """The final answer of a solution in canonical form: an option letter, a number, or normalized text.

    Args:
        text: the model's solution (or just its final answer).
        options: multiple-choice options, in order (letters A, B, ... refer to them).
        kind: "auto", "multiple_choice", "numeric", "free_form", or any registered kind.

    Returns:
        The canonical answer, or None when no answer of that kind can be read.
    """
    if text is None:
        return None
    resolved = resolve_kind(kind, options, answer_span(text) if kind == "auto" else None)
    return ANSWER_KINDS[resolved].extract(text, options)


def grade(
    prediction: str | None,
    gold: str,
    options: Sequence[str] | None = None,
    kind: str = "auto",
    tol: float = 1e-6,
) -> bool:
    """Whether a prediction (a bare answer or a whole solution) gives the gold answer.

    Args:
        prediction: the model's answer or solution text; None (no answer) is always wrong.
        gold: the reference answer (for multiple choice: the letter or the option's text).
        options: multiple-choice options, in order.
        kind: "auto" (options -> multiple_choice; numeric gold -> numeric; else free_form) or a registered kind.
        tol: relative and absolute tolerance of numeric comparisons.
    """
    return grade_with_fallback(prediction, gold, options, kind, tol)[0]


# `grader(prediction, gold, options) -> bool`: how labelling rollouts and test-time-scaling runs decide that an answer
# is right; `grade` is the default one.
Grader = Callable[[str | None, str, Sequence[str] | None], bool]


def question_kind(question: Mapping[str, Any], default: str = "auto") -> str:
    """The answer kind a question record is graded by: its own `answer_kind` (evaluation benchmarks set it, e.g.
    MathVista's free-form text answers), else `default`."""
    return question.get("answer_kind") or default


def grade_question(
    prediction: str | None, question: Mapping[str, Any], grader: Grader | None = None, default_kind: str = "auto"
) -> bool:
    """Whether `prediction` gives the answer of a question record (its `answer`, `options` and `answer_kind`), by
    `grader`; the default grader is `grade` with the question's kind (`question_kind`), as the evaluation sweep
    grades. No answer (None) is wrong without asking the grader."""
    if prediction is None:
        return False
    gold, options = str(question["answer"]), question.get("options") or None
    if grader is not None:
        return bool(grader(prediction, gold, options))
    return grade(prediction, gold, options, kind=question_kind(question, default_kind))


def grade_with_fallback(
    prediction: str | None,
    gold: str,
    options: Sequence[str] | None = None,
    kind: str = "auto",
    tol: float = 1e-6,
    extractor: Callable[[str], str | None] | None = None,
) -> tuple[bool, str]:
    """`grade`, with an answer extractor (e.g. an LLM judge) asked only when the rules read no answer.

    The extractor's answer is graded by the same rules, so a judge can find the answer but never decide what is
    correct. Returns (correct, how): how is "rule", "fallback" (the extractor's answer was graded) or "none" (no
    answer could be read either way).
    """
    if prediction is None or not str(prediction).strip():
        return False, "none"
    resolved = resolve_kind(kind, options, gold)
    answer_kind = ANSWER_KINDS[resolved]
    extracted = answer_kind.extract(str(prediction), options)
    if extracted is not None:
        return answer_kind.match(extracted, gold, options, tol), "rule"
    if extractor is None:
        return False, "none"
    stated = extractor(str(prediction))
    if stated is None:
        return False, "none"
    extracted = answer_kind.extract(stated, options)
    return (extracted is not None and answer_kind.match(extracted, gold, options, tol)), "fallback"
