"""Generate docs/reference.md: one table per config dataclass, every field with its type, default and help sentence.

    python docs/gen_reference.py           # rewrite docs/reference.md
    python docs/gen_reference.py --check   # exit 1 when docs/reference.md is out of date
    python docs/gen_reference.py --audit   # fields whose help says less than the class docstring's sentence

The classes are listed once, in `CONFIG_CLASSES` below, in pipeline order. An entry names a class by
`"package.module:Class"` (library code) or `"recipes/file.py:Class"` (a recipe script, loaded from its file, since
recipes are not a package). `tests/test_docs_reference.py` fails when a config dataclass of the library or the
recipes is missing from this list, when a field lacks a help sentence, and when docs/reference.md is stale.

A class that extends a dataclass from outside the project (`transformers.TrainingArguments`,
`trl.ScriptArguments`) gets the fields it adds, then the inherited fields whose default it changes; the rest of
the inherited fields are documented upstream and only linked.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import importlib
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Any, NamedTuple

REPO = Path(__file__).resolve().parents[1]
OUTPUT = REPO / "docs" / "reference.md"
REGENERATE = "python docs/gen_reference.py"


class ConfigEntry(NamedTuple):
    """One documented config class: where it lives, the pipeline stage it belongs to and who parses it."""

    target: str  # "package.module:Class" or "recipes/file.py:Class"
    stage: str
    used_by: str


# Every documented config class, in pipeline order: add a line here when a config dataclass is added or moved.
CONFIG_CLASSES: tuple[ConfigEntry, ...] = (
    ConfigEntry("trl_vlprm.scripts.puzzles:PuzzlesArguments", "Testbed", "`trl-vlprm puzzles`"),
    ConfigEntry(
        "trl_vlprm.labeling.config:LabelConfig",
        "Labelling",
        "`trl-vlprm label` / `recipes/build_dataset.py` (with `JudgeConfig`; YAML via `--config`, or flags)",
    ),
    ConfigEntry(
        "trl_vlprm.labeling.judge:JudgeConfig",
        "Labelling",
        "`JudgeClient(config)`; `trl-vlprm label` parses it beside `LabelConfig` (the `judge_*` flags and YAML keys)",
    ),
    ConfigEntry(
        "trl_vlprm.labeling.mc:MCConfig",
        "Labelling",
        "`label_batch(..., mc_config=...)`; `LabelConfig`'s `mc_*` fields",
    ),
    ConfigEntry("trl_vlprm.trainer.config:VLPRMConfig", "Training", "`VLPRMTrainer(args=...)`, `recipes/train.py`"),
    ConfigEntry(
        "trl_vlprm.cpu_recipe:CPURecipe",
        "Training",
        "`make demo` and the learning test: a tiny VL-PRM trained on the testbed (`CPURecipe().train(output_dir)`)",
    ),
    ConfigEntry(
        "trl_vlprm.scripts.train:PRMScriptArguments",
        "Training",
        "`trl-vlprm train` / `recipes/train.py` (with `VLPRMConfig`, `trl.ModelConfig`)",
    ),
    ConfigEntry(
        "trl_vlprm.scripts.grpo:GRPOScriptArguments",
        "Training",
        "`trl-vlprm grpo` / `recipes/grpo.py` (with `VLPRMGRPOConfig`, `trl.ModelConfig`)",
    ),
    ConfigEntry(
        "trl_vlprm.guidance.process_grpo:VLPRMGRPOConfig",
        "Training",
        "`VLPRMGRPOTrainer(args=...)`, `trl-vlprm grpo` / `recipes/grpo.py`: `trl.GRPOConfig` plus per-step credit",
    ),
    ConfigEntry(
        "trl_vlprm.guidance.strategies.base:SearchConfig",
        "Guidance",
        "every strategy runner; `trl-vlprm tts` / `recipes/tts.py` (with `TTSArguments`)",
    ),
    ConfigEntry(
        "trl_vlprm.guidance.sampling:SamplingConfig",
        "Guidance",
        "`HFPolicy`, `VLLMPolicy`, `ServerPolicy` (`sampling=` or its fields as keywords); `TTSArguments` fills it",
    ),
    ConfigEntry(
        "trl_vlprm.guidance.sampling:PolicyTextArguments",
        "Guidance",
        "`EvalTTSConfig`, `TTSArguments` and `LabelConfig` (the step separator and system prompt of their policies)",
    ),
    ConfigEntry(
        "trl_vlprm.guidance.sampling:SamplingArguments",
        "Guidance",
        "the sampling fields of `TTSArguments` and `LabelConfig` (each a `SamplingConfig` field)",
    ),
    ConfigEntry(
        "trl_vlprm.guidance.tts:TTSArguments", "Guidance", "`trl-vlprm tts` / `recipes/tts.py` (with `SearchConfig`)"
    ),
    ConfigEntry("trl_vlprm.eval.eval_tts:EvalTTSConfig", "Evaluation", "`trl-vlprm eval` / `recipes/eval_tts.py`"),
    ConfigEntry("trl_vlprm.scripts.check:CheckArguments", "Evaluation", "`trl-vlprm check`"),
    ConfigEntry("trl_vlprm.scripts.view:ViewArguments", "Evaluation", "`trl-vlprm view`"),
)

# Upstream pages of the external bases a project config extends.
UPSTREAM_DOCS = {
    "TrainingArguments": "https://huggingface.co/docs/transformers/main_classes/trainer#transformers.TrainingArguments",
    "ScriptArguments": "https://huggingface.co/docs/trl/script_utils#trl.ScriptArguments",
}


def load_class(target: str) -> type:
    """The class an entry names; a recipe file is loaded as module `recipes.<stem>` without running its main."""
    location, _, name = target.partition(":")
    if location.endswith(".py"):
        path = REPO / location
        module_name = "recipes." + path.stem if path.parent.name == "recipes" else path.stem
        module = sys.modules.get(module_name)
        if module is None:
            spec = importlib.util.spec_from_file_location(module_name, path)
            if spec is None or spec.loader is None:
                raise ImportError(f"{target}: cannot load {path}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module  # dataclasses look their module up while the class is made
            spec.loader.exec_module(module)
    else:
        module = importlib.import_module(location)
    try:
        cls = getattr(module, name)
    except AttributeError:
        raise AttributeError(
            f"{target}: {location} has no {name!r}; update CONFIG_CLASSES in docs/gen_reference.py"
        ) from None
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{target} is not a dataclass")
    return cls


def is_project_class(cls: type) -> bool:
    return cls.__module__.split(".")[0] in ("trl_vlprm", "recipes")


def external_base(cls: type) -> type | None:
    """The nearest dataclass base defined outside the project (e.g. `TrainingArguments`), if any."""
    for base in cls.__mro__[1:]:
        if dataclasses.is_dataclass(base) and not is_project_class(base):
            return base
    return None


MISSING = object()


def field_default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return MISSING


def field_help(field: dataclasses.Field) -> str:
    return " ".join(str(field.metadata.get("help", "")).split())


def declared_type(cls: type, field: dataclasses.Field) -> Any:
    """The annotation as the class declares it. Not `field.type`: `HfArgumentParser` (so `TrlParser`) rewrites that
    in place (`int | None` becomes `int`), so a parser built earlier in the process would change the page."""
    for klass in cls.__mro__:
        annotations = klass.__dict__.get("__annotations__", {})
        if field.name in annotations:
            return annotations[field.name]
    return field.type


def format_type(annotation: Any) -> str:
    if isinstance(annotation, str):  # `from __future__ import annotations` keeps the source text
        return annotation
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def format_default(value: Any) -> str:
    return "*required*" if value is MISSING else f"`{value!r}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _help_cell(field: dataclasses.Field, docstring: dict[str, str]) -> str:
    """The help sentence as table text (`<folder>` would read as an HTML tag). A field without help shows its class
    docstring's sentence, marked as such, until it gets one."""
    text = field_help(field)
    if not text and field.name in docstring:
        text = f"{docstring[field.name]} *(from the docstring; no help yet)*"
    return _cell(text).replace("<", "&lt;").replace(">", "&gt;") or "—"


def documented_fields(cls: type) -> tuple[list[dataclasses.Field], list[tuple[dataclasses.Field, Any]]]:
    """(fields the class adds, [(inherited field whose default it changes, the upstream default)])."""
    base = external_base(cls)
    upstream = {f.name: f for f in dataclasses.fields(base)} if base else {}
    added, changed = [], []
    for field in dataclasses.fields(cls):
        if not field.init:
            continue
        if field.name not in upstream:
            added.append(field)
        elif field_default(field) != field_default(upstream[field.name]):
            changed.append((field, field_default(upstream[field.name])))
    return added, changed


def help_problem(text: str) -> str | None:
    """Why `text` is not a help sentence (None when it is one): it must start with a capital letter (or a quoted
    literal such as `'puzzles'`) and end with a period."""
    if not text:
        return "no help"
    if not (text[0].isupper() or text[0] in "'\"`"):
        return "does not start with a capital letter"
    if not text.endswith("."):
        return "does not end with a period"
    return None


def class_summary(cls: type) -> str:
    doc = (cls.__doc__ or "").strip()
    return " ".join(doc.split("\n\n")[0].split()) if doc else ""


def docstring_args(cls: type) -> dict[str, str]:
    """{field: sentence} of the `Args:` blocks of a class docstring (Google style, TRL's layout included:
    "name (`type`, *optional*, defaults to ...):" then the text on the next lines). "a / b: text" documents both."""
    entries: dict[str, list[str]] = {}
    current: list[str] = []
    pending: list[str] = []  # names of an entry whose "a / b /" list wraps onto the next line
    in_args, entry_indent = False, None
    for line in inspect.cleandoc(cls.__doc__ or "").splitlines():
        stripped, indent = line.strip(), len(line) - len(line.lstrip())
        if stripped == "Args:":
            in_args, entry_indent = True, None
            continue
        if not in_args or not stripped:
            continue
        if indent == 0:  # prose after the block
            in_args = False
            continue
        entry_indent = indent if entry_indent is None else entry_indent
        if indent == entry_indent or pending:
            head, text = _entry_head(stripped)
            names = pending + [name.strip().split(" ")[0] for name in head.split("/") if name.strip()]
            if head.rstrip().endswith("/") and not text:
                pending = names
                continue
            current, pending = ([text] if text else []), []
            for name in names:
                entries[name] = current
        else:
            current.append(stripped)
    return {name: " ".join(words) for name, words in entries.items()}


def _entry_head(line: str) -> tuple[str, str]:
    # "name (`int` or `None`, *optional*, defaults to `1024`):" -> ("name", text after "):"); "a / b: text" as is
    if " (" in line.split(":")[0]:
        name, _, rest = line.partition(" (")
        return name, rest.partition("):")[2].strip()
    head, _, text = line.partition(":")
    return head, text.strip()


def _plain(text: str) -> str:
    return " ".join("".join(c for c in text.lower() if c.isalnum() or c.isspace()).split())


def help_audit() -> list[str]:
    """Fields whose help sentence says less than their docstring's (TRL keeps the two equal), and fields the class
    docstring does not document. Differences of case and quoting alone are not reported."""
    report = []
    for entry in CONFIG_CLASSES:
        cls = load_class(entry.target)
        documented = docstring_args(cls)
        added, changed = documented_fields(cls)
        for field in [*added, *(f for f, _ in changed)]:
            doc, text = documented.get(field.name), field_help(field)
            if doc is None:
                report.append(f"{cls.__name__}.{field.name}: not in the class docstring's Args")
            elif not doc.startswith("see ") and len(_plain(text)) < 0.8 * len(_plain(doc)):
                report.append(f"{cls.__name__}.{field.name}: help {text!r} is shorter than the docstring's {doc!r}")
    return report


def render_class(entry: ConfigEntry) -> str:
    cls = load_class(entry.target)
    added, changed = documented_fields(cls)
    base = external_base(cls)
    docstring = docstring_args(cls)
    lines = [f"### `{cls.__name__}`", ""]
    lines.append(f"`{entry.target}` — used by {entry.used_by}.")
    summary = class_summary(cls)
    if summary:
        lines += ["", summary]
    if base is not None:
        link = UPSTREAM_DOCS.get(base.__name__)
        name = f"[`{base.__module__.split('.')[0]}.{base.__name__}`]({link})" if link else f"`{base.__name__}`"
        lines += ["", f"Extends {name}: every field of it applies too. The fields it adds:"]
    lines += ["", "| field | type | default | help |", "|---|---|---|---|"]
    for field in added:
        annotation = _cell(format_type(declared_type(cls, field)))
        lines.append(
            f"| `{field.name}` | `{annotation}` | {_cell(format_default(field_default(field)))} "
            f"| {_help_cell(field, docstring)}{_choices(field)} |"
        )
    if changed:
        lines += ["", f"Defaults it changes from `{base.__name__}`:", ""]
        lines += [f"| field | `{base.__name__}` default | `{cls.__name__}` default | help |", "|---|---|---|---|"]
        for field, upstream_default in changed:
            lines.append(
                f"| `{field.name}` | {_cell(format_default(upstream_default))} "
                f"| {_cell(format_default(field_default(field)))} | {_help_cell(field, docstring)} |"
            )
    return "\n".join(lines) + "\n"


def _choices(field: dataclasses.Field) -> str:
    choices = field.metadata.get("choices")
    return f" Choices: {', '.join(f'`{c}`' for c in choices)}." if choices else ""


def render() -> str:
    """The whole of docs/reference.md."""
    parts = [
        "# Configuration reference",
        "",
        f"<!-- Generated by `{REGENERATE}` from the dataclasses' `help` metadata; do not edit by hand. -->",
        "",
        "Every field of every config class, grouped by pipeline stage. Each field can be set in a recipe's YAML "
        "file (`--config`) or as a `--field value` flag on the command line (`trl.TrlParser`); in Python, pass it "
        "to the class. `trl-vlprm <command> --help` lists a command's flags.",
        "",
    ]
    stage = None
    for entry in CONFIG_CLASSES:
        if entry.stage != stage:
            stage = entry.stage
            parts += [f"## {stage}", ""]
        parts.append(render_class(entry))
    return "\n".join(parts).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="Exit 1 when docs/reference.md is out of date.")
    parser.add_argument(
        "--audit", action="store_true", help="List fields whose help is not their docstring sentence, and exit."
    )
    args = parser.parse_args(argv)
    if args.audit:
        print("\n".join(help_audit()))
        return 0
    text = render()
    current = OUTPUT.read_text() if OUTPUT.exists() else ""
    if args.check:
        if text == current:
            return 0
        diff = difflib.unified_diff(
            current.splitlines(), text.splitlines(), "docs/reference.md", "generated", lineterm=""
        )
        print("\n".join(list(diff)[:40]))
        print(f"docs/reference.md is out of date; run `{REGENERATE}`", file=sys.stderr)
        return 1
    tmp = OUTPUT.with_name(f".{OUTPUT.name}.tmp")
    tmp.write_text(text)
    tmp.replace(OUTPUT)  # never a half-written reference
    print(f"wrote {OUTPUT} ({len(CONFIG_CLASSES)} classes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
