"""The commands of `trl-vlprm` (`trl_vlprm.cli`), one module each, in TRL's script layout (`trl/scripts/*.py`).

Every module has `make_parser(prog=None)`, which returns a `trl.TrlParser` over the command's argument dataclasses
(built by `command_parser`, so `--config file.yaml` and `--field value` flags work alike), and `main(...)`, which
takes the parsed dataclasses and runs. `recipes/*.py` are thin wrappers around the same `main`. The failures a user
causes are listed once, in `trl_vlprm.cli.USER_ERRORS`: the CLI prints them as one line and exits 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

# name -> one-line help, in pipeline order; the module is `trl_vlprm.scripts.<name>`.
COMMANDS = {
    "puzzles": "write procedural testbed puzzles in the stepwise-supervision schema",
    "label": "build a step-labelled dataset: rollouts, Monte-Carlo labels, a VLM judge, a combination rule",
    "train": "train a (vision-language) process reward model",
    "grpo": "reinforcement learning: GRPO of a vision-language policy with a trained VL-PRM as its reward",
    "tts": "test-time scaling: run one search strategy over a dataset with a policy and a step scorer",
    "eval": "test-time-scaling evaluation: benchmarks x policies x scorers x strategies x N",
    "check": "guard-rails for a trained PRM: image-swap sensitivity and best-of-N vs a random pick",
    "view": "one HTML page of every question, solution and step score of a run, a labelled dataset or a bench",
}

# Fields whose value is a name from a registry (or a closed tuple): `--help` lists the names, so a user need not read
# the code. "module:attribute"; every entry must resolve (tests/test_cli.py), so a rename shows up there.
NAMED_CHOICES = {
    "strategy": "trl_vlprm.guidance.strategies:STRATEGIES",
    "aggregation": "trl_vlprm.guidance.aggregation:AGGREGATIONS",
    "prm_aggregation": "trl_vlprm.guidance.aggregation:AGGREGATIONS",
    "rule": "trl_vlprm.labeling.combine:RULES",
    "mc_mode": "trl_vlprm.labeling.mc:MC_MODES",
    "head": "trl_vlprm.modeling.heads:HEADS",
    "step_truncation": "trl_vlprm.trainer.config:STEP_TRUNCATIONS",
    "prm_layout": "trl_vlprm.modeling.encoding:LAYOUTS",
    "selections": "trl_vlprm.eval.selection:OUTCOME_SELECTIONS",
    "benchmarks": "trl_vlprm.eval.benchmarks:BENCHMARKS",
    "process_benches": "trl_vlprm.eval.process_bench:PROCESS_BENCHES",
}


def named_choices(target: str) -> list[str]:
    """The names a `NAMED_CHOICES` entry offers (a registry's `names()`, or the items of a tuple)."""
    import importlib

    module, _, attribute = target.partition(":")
    choices = getattr(importlib.import_module(module), attribute)
    return sorted(choices.names()) if hasattr(choices, "names") else list(choices)


class ReadableDefaultsFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the command's docstring as written; shows a default that is blank or holds a newline as a quoted
    escape ("\\n", "") instead of a blank line."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        default = action.default
        if isinstance(default, str) and (default.strip() != default or not default.isprintable() or not default):
            text = (action.help or "").replace("%", "%%")
            return f"{text} (default: {json.dumps(default)})" if "%(default)" not in (action.help or "") else text
        return super()._get_help_string(action)


def _declaring_class(dataclass_type: type, name: str) -> type:
    """The class of `dataclass_type`'s MRO that declares field `name` (a subclass re-declaring it owns it)."""
    return next(c for c in dataclass_type.__mro__ if name in c.__dict__.get("__annotations__", {}))


def _group_by_declaring_class(parser: argparse.ArgumentParser, dataclass_types: tuple[type, ...]) -> None:
    """TRL-style help: one group per class that declares fields, this library's classes first, then TRL's, then
    transformers' (`TrainingArguments`' ~200 inherited fields last instead of burying the PRM's own)."""
    owners: dict[type, list[str]] = {}
    for dataclass_type in dataclass_types:
        for field in dataclasses.fields(dataclass_type):
            if field.init:
                owners.setdefault(_declaring_class(dataclass_type, field.name), []).append(field.name)

    def rank(owner: type) -> int:
        package = owner.__module__.split(".")[0]
        return {"trl_vlprm": 0, "trl": 1}.get(package, 2)

    by_dest: dict[str, list[argparse.Action]] = {}
    for action in parser._optionals._group_actions:
        by_dest.setdefault(action.dest, []).append(action)
    for owner in sorted(owners, key=rank):  # stable: declaration order within a rank
        package = owner.__module__.split(".")[0]
        where = "this library" if package == "trl_vlprm" else f"inherited from {package}"
        group = parser.add_argument_group(f"{owner.__name__} ({where})")
        # A field the class re-declares with its own default (`bf16`, `learning_rate`) comes after its new fields.
        inherited = {
            f.name for base in owner.__mro__[1:] if dataclasses.is_dataclass(base) for f in dataclasses.fields(base)
        }
        for name in sorted(owners[owner], key=lambda name: name in inherited):
            for action in by_dest.pop(name, []):
                parser._optionals._group_actions.remove(action)
                group._group_actions.append(action)


def command_parser(dataclass_types: tuple[type, ...], prog: str | None = None, description: str | None = None):
    """The `trl.TrlParser` of a command: its dataclasses' fields as flags and `--config` keys, with a help that
    groups them by declaring class (this library's first), lists the names a named field accepts and shows blank or
    newline defaults readably."""
    from trl import TrlParser

    # The usage line names the two ways to set a field rather than listing every flag (hundreds for `train`).
    usage = f"{prog or '%(prog)s'} [--config FILE.yaml] [--<field> VALUE ...]"
    parser = TrlParser(
        dataclass_types, prog=prog, usage=usage, description=description, formatter_class=ReadableDefaultsFormatter
    )
    for action in parser._actions:
        target = NAMED_CHOICES.get(action.dest)
        listed = action.choices is not None or action.help is None or action.option_strings[0].startswith("--no_")
        if target is not None and not listed:
            action.help = f"{action.help} Names: {', '.join(named_choices(target))}."
    _group_by_declaring_class(parser, dataclass_types)
    return parser


__all__ = ["COMMANDS", "command_parser"]
