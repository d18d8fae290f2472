"""docs/reference.md is generated from the config dataclasses, covers every one of them, and every field explains
itself in a help sentence (`python docs/gen_reference.py` regenerates the page). The index links every page, and
the hand-written pages name only files that exist."""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import TrainingArguments

REPO = Path(__file__).resolve().parents[1]


def _load_generator():
    spec = importlib.util.spec_from_file_location("gen_reference", REPO / "docs" / "gen_reference.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_reference"] = module
    spec.loader.exec_module(module)
    return module


gen = _load_generator()

# Fields without a help sentence today (their files belong to other work in progress). The test fails when one of
# them gains its sentence without being taken off this list, so the list can only shrink.
KNOWN_WITHOUT_HELP: set[tuple[str, str]] = set()


def _config_classes_in_source() -> dict[str, str]:
    """{name: file} of the dataclasses in the library and the recipes that are settings: named *Config / *Arguments, or
    with any field carrying `metadata={"help": ...}`. Result records (SearchResult, Rollout...) are neither."""
    found = {}
    for path in [*(REPO / "trl_vlprm").rglob("*.py"), *(REPO / "recipes").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if not isinstance(node, ast.ClassDef):
                continue
            decorators = [ast.unparse(d) for d in node.decorator_list]
            if not any(d.startswith(("dataclass", "dataclasses.dataclass")) for d in decorators):
                continue
            has_help = '"help"' in ast.unparse(node) or "'help'" in ast.unparse(node)
            if node.name.endswith(("Config", "Arguments")) or has_help:
                found[node.name] = str(path.relative_to(REPO))
    return found


def test_every_config_dataclass_is_registered():
    registered = {entry.target.rpartition(":")[2] for entry in gen.CONFIG_CLASSES}
    in_source = _config_classes_in_source()
    assert len(in_source) >= 9  # guard: the scan itself finds the classes known today
    missing = {name: path for name, path in sorted(in_source.items()) if name not in registered}
    assert not missing, (
        f"config dataclasses missing from CONFIG_CLASSES in docs/gen_reference.py: {missing}; add a ConfigEntry "
        f"for each, then run `{gen.REGENERATE}`"
    )
    gone = sorted(registered - set(in_source))
    assert not gone, f"CONFIG_CLASSES names classes no longer defined: {gone}"


def test_every_field_has_a_help_sentence():
    problems, documented = {}, set()
    for entry in gen.CONFIG_CLASSES:
        cls = gen.load_class(entry.target)
        added, changed = gen.documented_fields(cls)
        for field in [*added, *(f for f, _ in changed)]:
            documented.add((cls.__name__, field.name))
            problem = gen.help_problem(gen.field_help(field))
            if problem:
                problems[(cls.__name__, field.name)] = problem
    assert len(documented) > 80  # guard against a vacuous pass: today's classes hold more than 80 fields
    new = {key: why for key, why in problems.items() if key not in KNOWN_WITHOUT_HELP}
    assert not new, f"fields without a help sentence (capital letter ... period): {new}"
    fixed = sorted(KNOWN_WITHOUT_HELP - set(problems))
    assert not fixed, f"these fields have a help sentence now; take them off KNOWN_WITHOUT_HELP: {fixed}"


def test_help_sentence_rule():
    assert gen.help_problem("Maximum tokens of a row.") is None
    assert gen.help_problem("'puzzles' or a dataset folder.") is None
    assert gen.help_problem("") == "no help"
    assert gen.help_problem("records, trl_stepwise, vlprm300k, ...") == "does not start with a capital letter"
    assert gen.help_problem("PRM head") == "does not end with a period"


def test_docstring_args_reads_both_layouts():
    @dataclasses.dataclass
    class Example:
        """Settings.

        Args:
            max_length (`int` or `None`, *optional*, defaults to `1024`):
                Maximum tokens of a row.
                Whole steps are dropped.
            seed: seed of the sampler.
            low / high: bounds of the
                range.
            first / second /
                third: names wrapped onto a second line.

        Prose after the block.
        """

    assert gen.docstring_args(Example) == {
        "max_length": "Maximum tokens of a row. Whole steps are dropped.",
        "seed": "seed of the sampler.",
        "low": "bounds of the range.",
        "high": "bounds of the range.",
        "first": "names wrapped onto a second line.",
        "second": "names wrapped onto a second line.",
        "third": "names wrapped onto a second line.",
    }


def test_only_added_fields_and_changed_defaults_of_an_upstream_base():
    @dataclasses.dataclass
    class ExampleConfig(TrainingArguments):
        beta: float = dataclasses.field(default=0.5, metadata={"help": "Weight | of the thing."})
        logging_steps: float = dataclasses.field(default=7, metadata={"help": "Log every 7 steps."})
        seed: int = dataclasses.field(default=42, metadata={"help": "Same as upstream."})

    assert gen.external_base(ExampleConfig) is TrainingArguments
    added, changed = gen.documented_fields(ExampleConfig)
    assert [f.name for f in added] == ["beta"]
    upstream_logging = next(f for f in dataclasses.fields(TrainingArguments) if f.name == "logging_steps").default
    assert [(f.name, default) for f, default in changed] == [("logging_steps", upstream_logging)]  # seed unchanged


def test_rendered_reference_holds_every_field_with_its_default():
    text = gen.render()
    vlprm = text.split("### `VLPRMConfig`")[1].split("### ")[0]
    head_row = next(line for line in vlprm.splitlines() if line.startswith("| `head` |"))
    assert head_row.startswith("| `head` | `str` | `'value'` | ") and head_row.endswith(
        "Choices: `value`, `generative`. |"
    )
    assert "| `remove_unused_columns` | `True` | `False` |" in vlprm  # a TrainingArguments default it changes
    assert "| `adam_beta1` |" not in vlprm  # unchanged TrainingArguments fields are only linked
    eval_tts = text.split("### `EvalTTSConfig`")[1].split("### ")[0]
    assert "| `n_values` | `list[int]` | `[1, 2, 4, 8, 16]` |" in eval_tts  # default_factory evaluated
    for entry in gen.CONFIG_CLASSES:
        cls = gen.load_class(entry.target)
        added, _ = gen.documented_fields(cls)
        section = text.split(f"### `{cls.__name__}`")[1].split("\n### ")[0]
        assert [line.split("`")[1] for line in section.splitlines() if line.startswith("| `")][: len(added)] == [
            f.name for f in added
        ]


def test_rendering_does_not_depend_on_parsers_built_before():
    """`HfArgumentParser` rewrites `field.type` of the dataclasses it parses (`int | None` -> `int`); the page must
    read the declared annotations, or it changes with the tests that ran before (seen in the full suite)."""
    from trl import TrlParser

    before = gen.render()
    label_config = gen.load_class("trl_vlprm.labeling.config:LabelConfig")
    TrlParser((label_config,))
    assert next(f for f in dataclasses.fields(label_config) if f.name == "num_questions").type is int  # rewritten
    assert gen.render() == before
    assert "| `num_questions` | `int \\| None` | `None` |" in before


def test_reference_md_is_up_to_date():
    current = (REPO / "docs" / "reference.md").read_text()
    assert current == gen.render(), "docs/reference.md is out of date: run `python docs/gen_reference.py`"


@pytest.mark.slow
def test_check_flag_reports_a_stale_page(tmp_path, monkeypatch):
    """`--check` exits 0 on the committed page and 1 on a stale one (run as a script, as a contributor would)."""
    script = REPO / "docs" / "gen_reference.py"
    ok = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True, cwd=REPO)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    monkeypatch.setattr(gen, "OUTPUT", tmp_path / "reference.md")
    (tmp_path / "reference.md").write_text("# stale\n")
    assert gen.main(["--check"]) == 1
    assert gen.main([]) == 0 and gen.main(["--check"]) == 0
    assert (tmp_path / "reference.md").read_text() == gen.render()


# Pages whose file references must stay true as the code moves (the reference is generated, the rest written).
HAND_WRITTEN = ("docs/index.md", "docs/extending.md", "CONTRIBUTING.md")


def test_index_links_every_docs_page():
    index = (REPO / "docs" / "index.md").read_text()
    pages = sorted(path.name for path in (REPO / "docs").glob("*.md") if path.name != "index.md")
    assert len(pages) >= 10
    unlinked = [page for page in pages if f"]({page})" not in index]
    assert not unlinked, f"docs/index.md links no entry for {unlinked}: add one line per page to 'Every page'"


def test_hand_written_docs_name_only_files_that_exist():
    """Every repository path and markdown link in the index, extending page and CONTRIBUTING exists (a path with a
    `<name>` placeholder is a file to create and is skipped)."""
    checked, missing = 0, []
    for page in HAND_WRITTEN:
        text = (REPO / page).read_text()
        links = re.findall(r"\]\(([^)#:]+)\)", text)
        paths = re.findall(r"`((?:trl_vlprm|tests|recipes|benchmarks|docs|\.ci)/[^`\s]*)`", text)
        for target in [*(str((REPO / page).parent.relative_to(REPO) / link) for link in links), *paths]:
            if "<" in target:
                continue
            checked += 1
            if not (REPO / target).exists():
                missing.append(f"{page}: {target}")
    assert checked > 40  # guard: the pages name many files
    assert not missing, f"docs name files that do not exist (moved or renamed?): {missing}"
