"""`trl-vlprm` / `python -m trl_vlprm`: one command line for the whole pipeline, in TRL's pattern (`trl/cli`).

    trl-vlprm puzzles --n 200 --out data/puzzles.parquet     # testbed data
    trl-vlprm label --config recipes/configs/label_testbed.yaml
    trl-vlprm train --config recipes/configs/vlprm_tiny_cpu.yaml
    trl-vlprm tts --config recipes/configs/tts_testbed.yaml
    trl-vlprm eval --config recipes/configs/eval_tts_testbed.yaml
    trl-vlprm check --prm outputs/demo/vlprm

Each command is a module of `trl_vlprm.scripts` with `make_parser` and `main` (see there); only the module of the
command given is imported, so `trl-vlprm puzzles` does not pay for transformers. Every command reads
`--config file.yaml` and `--field value` flags (`trl.TrlParser`); `accelerate launch -m trl_vlprm train ...` runs
training on several processes.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from types import ModuleType

from trl_vlprm.scripts import COMMANDS


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trl-vlprm", description=__doc__.split("\n")[0].strip('"'))
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(COMMANDS) + "}")
    for name, help_text in COMMANDS.items():
        # the command's own parser reads the rest (and answers `trl-vlprm <command> --help`)
        subparsers.add_parser(name, help=help_text, add_help=False)
    return parser


def run(command: str, argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Parse `argv` with the command's parser and run its `main`; returns the exit status.

    A failure the user caused (the command module's `EXPECTED_ERRORS`) is printed as one line on stderr and exits
    with status 1 (`SystemExit`); anything else is a bug and keeps its traceback.
    """
    module: ModuleType = importlib.import_module(f"trl_vlprm.scripts.{command}")
    parsed = module.make_parser(prog=prog or f"trl-vlprm {command}").parse_args_and_config(list(argv or []))
    try:
        result = module.main(*parsed)
    except module.EXPECTED_ERRORS as err:
        print(f"trl-vlprm {command}: {err}", file=sys.stderr)
        raise SystemExit(1) from err
    # `check` returns its exit status; the other commands return what they made
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args, rest = _top_parser().parse_known_args(argv[:1])
    return run(args.command, rest + argv[1:])
