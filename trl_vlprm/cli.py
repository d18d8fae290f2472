"""`trl-vlprm` / `python -m trl_vlprm`: one command line for the whole pipeline, in TRL's pattern (`trl/cli`).

    trl-vlprm puzzles --n 200 --out data/puzzles.parquet     # testbed data
    trl-vlprm label --config recipes/configs/label_testbed.yaml
    trl-vlprm train --config recipes/configs/vlprm_tiny_cpu.yaml
    trl-vlprm grpo --config recipes/configs/grpo_tiny_cpu.yaml --prm_model_path outputs/vlprm-tiny ...
    trl-vlprm tts --config recipes/configs/tts_testbed.yaml
    trl-vlprm eval --config recipes/configs/eval_tts_testbed.yaml
    trl-vlprm check --prm outputs/demo/hybrid/vlprm

Each command is a module of `trl_vlprm.scripts` with `make_parser` and `main` (see there); only the module of the
command given is imported, so `trl-vlprm puzzles` does not pay for transformers. Every command reads
`--config file.yaml` and `--field value` flags (`trl.TrlParser`); `accelerate launch -m trl_vlprm train ...` runs
training (or `grpo`) on several processes.
"""

from __future__ import annotations

import argparse
import difflib
import errno
import importlib
import os
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import NoReturn

from trl_vlprm.scripts import COMMANDS


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trl-vlprm", description=__doc__.split("\n")[0].strip('"'))
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(COMMANDS) + "}")
    for name, help_text in COMMANDS.items():
        # the command's own parser reads the rest (and answers `trl-vlprm <command> --help`)
        subparsers.add_parser(name, help=help_text, add_help=False)
    return parser


# Failures a user causes in any command, as "module:Class": a name no registry has (a typo'd strategy, benchmark,
# backend, rule...), a file that is not there, a record that breaks the schema (the message names its row and
# field), a setting that cannot work, a rerun with other settings or into a locked output, a failed rank, a model no
# family covers or that is no PRM, a labelling shard or judge failure, a file the viewer cannot read. A class counts
# once its module is imported: an exception of a module the command never imported cannot have been raised, and
# importing them all here would make `trl-vlprm puzzles` pay for torch.
USER_ERRORS: tuple[str, ...] = (
    "builtins:FileNotFoundError",
    "trl_vlprm.registry:UnknownNameError",
    "trl_vlprm.data.schema:RecordError",
    "trl_vlprm.utils.errors:UsageError",
    "trl_vlprm.utils.resume:SettingsMismatchError",
    "trl_vlprm.utils.resume:OutputLockedError",
    "trl_vlprm.utils.ranks:RankFailedError",
    "trl_vlprm.modeling.families.base:UnsupportedModelError",
    "trl_vlprm.modeling.heads:MissingPRMMetadataError",
    "trl_vlprm.modeling.heads:BackboneNotLoadedError",
    "trl_vlprm.modeling.hub:RemoteCodeError",
    "trl_vlprm.modeling.processor:MissingImageProcessorError",
    "trl_vlprm.guidance.backends:MissingModelError",
    "trl_vlprm.labeling.shards:ShardError",
    "trl_vlprm.labeling.labeler:JudgeFailureError",
    "trl_vlprm.eval.viewer.readers:ViewInputError",
    # a policy server down or breaking its contract, a policy returning fewer samples than asked, an image path that
    # names no image file, part files whose output was deleted
    "trl_vlprm.utils.http:ServerUnavailableError",
    "trl_vlprm.utils.http:ServerContractError",
    "trl_vlprm.types:ShortSampleError",
    "trl_vlprm.utils.resume:ImageFileError",
    "trl_vlprm.utils.ranks:OrphanPartsError",
)
# A disk that cannot take the output: full, over quota, read-only. One line naming the file, and what to do.
DISK_ERRNOS = {errno.ENOSPC: "free space there", errno.EDQUOT: "free space there", errno.EROFS: "it is read-only"}
# While the arguments are parsed, every ValueError is a bad setting: an unknown field in the YAML file, or a config
# dataclass' `__post_init__` refusing a value (each names the field).
SETTING_ERRORS: tuple[type[Exception], ...] = (ValueError, FileNotFoundError)
# Set to 1 to see the traceback of a failure the CLI would print as one line.
TRACEBACK_VARIABLE = "TRL_VLPRM_TRACEBACK"


def user_errors() -> tuple[type[Exception], ...]:
    """The classes of `USER_ERRORS` whose modules are imported (the others cannot have been raised)."""
    found = []
    for entry in USER_ERRORS:
        module_name, _, name = entry.partition(":")
        module = sys.modules.get(module_name)
        if module is not None:
            found.append(getattr(module, name))  # an AttributeError here means a renamed class: a bug to fix here
    return tuple(found)


def _fail(command: str, err: Exception) -> NoReturn:
    """Prints a user's mistake as one line and exits with status 1 (the traceback with TRL_VLPRM_TRACEBACK=1)."""
    if os.environ.get(TRACEBACK_VARIABLE, "0") not in ("", "0"):
        raise err
    message = str(err).strip() or type(err).__name__
    if isinstance(err, FileNotFoundError) and err.filename is not None:  # OSError's str() leads with "[Errno 2]"
        message = f"no such file or folder: {err.filename}"
    elif isinstance(err, OSError) and err.errno in DISK_ERRNOS:
        where = err.filename or "the output"
        message = f"{err.strerror} writing {where}: {DISK_ERRNOS[err.errno]}; or write the output elsewhere"
    # One line: a message of several lines (a library's own, a table) is joined, not cut after its first line.
    print(f"trl-vlprm {command}: {' '.join(message.split())}", file=sys.stderr)
    raise SystemExit(1) from err


def check_config_fields(parser: argparse.ArgumentParser, argv: Sequence[str], command: str) -> None:
    """A `--config` YAML key that is no field of the command is a `ValueError` naming the file, the key and the
    fields it may have meant (TRL's own message names neither the file nor a remedy a user can apply)."""
    argv = list(argv)
    if "--config" not in argv or argv.index("--config") + 1 >= len(argv):
        return
    import yaml

    path = argv[argv.index("--config") + 1]
    with open(path) as file:
        try:
            config = yaml.safe_load(file)
        except yaml.YAMLError as err:  # e.g. a `!!python/...` tag, which safe_load refuses to construct
            where = getattr(err, "problem_mark", None)
            line = f" (line {where.line + 1})" if where is not None else ""
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ValueError(
                f"{path}{line}: not a plain YAML config: {problem}; a config holds plain values only"
            ) from err
    if not isinstance(config, dict):
        raise ValueError(
            f"{path}: a config file must hold a YAML mapping of field: value, got {type(config).__name__}"
        )
    fields = {action.dest for action in parser._actions} - {"help", "config"}
    unknown = [key for key in config if key not in fields and key != "env"]  # `env:` sets environment variables
    if unknown:
        guesses = {key: difflib.get_close_matches(str(key), sorted(fields), n=3) for key in unknown}
        described = "; ".join(
            f"{key!r}" + (f" (did you mean {', '.join(guess)}?)" if guess else "") for key, guess in guesses.items()
        )
        raise ValueError(f"{path}: unknown field {described}; `trl-vlprm {command} --help` lists every field")


def run(command: str, argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Parse `argv` with the command's parser and run its `main`; returns the exit status.

    A failure the user caused is printed as one line on stderr and exits with status 1 (`SystemExit`): a bad
    setting while parsing (`SETTING_ERRORS`); while running, any of `USER_ERRORS`. Anything else is a bug and keeps
    its traceback.
    """
    module: ModuleType = importlib.import_module(f"trl_vlprm.scripts.{command}")
    parser = module.make_parser(prog=prog or f"trl-vlprm {command}")
    try:
        check_config_fields(parser, argv or [], command)
        parsed = parser.parse_args_and_config(list(argv or []))
    except SETTING_ERRORS as err:
        _fail(command, err)
    try:
        result = module.main(*parsed)
    except user_errors() as err:
        _fail(command, err)
    except OSError as err:
        if err.errno not in DISK_ERRNOS:
            raise
        _fail(command, err)
    # `check` returns its exit status; the other commands return what they made
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args, rest = _top_parser().parse_known_args(argv[:1])
    return run(args.command, rest + argv[1:])
