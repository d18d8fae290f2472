"""Every subpackage exports its main names, each resolvable; the light ones stay light (no torch for data users)."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

PACKAGES = ["data", "testbed", "modeling", "trainer", "guidance", "labeling", "eval", "utils", "testing"]


@pytest.mark.parametrize("package", PACKAGES)
def test_every_exported_name_resolves(package):
    module = importlib.import_module(f"trl_vlprm.{package}")
    assert len(module.__all__) >= 3, package
    for name in module.__all__:
        assert getattr(module, name) is not None, f"trl_vlprm.{package}.{name}"
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        module.not_a_name  # noqa: B018


def test_data_and_testbed_import_without_torch():
    code = "import sys, trl_vlprm.data, trl_vlprm.testbed, trl_vlprm.modeling, trl_vlprm.guidance; "
    code += "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", result.stdout


# What `trl-vlprm view` and `trl-vlprm tts` import on their way (benchmark, process-bench and puzzle questions, the
# viewer, the TTS runner and its guard-rails): none of them talks to a judge.
VIEW_AND_TTS_MODULES = [
    "trl_vlprm.scripts.view",
    "trl_vlprm.scripts.tts",
    "trl_vlprm.eval.specs",
    "trl_vlprm.eval.benchmarks",
    "trl_vlprm.eval.process_bench",
    "trl_vlprm.eval.viewer",
    "trl_vlprm.eval.guardrails",
    "trl_vlprm.guidance.tts",
    "trl_vlprm.testbed",
]


def test_view_and_tts_do_not_import_the_judge_client():
    code = "import importlib, sys\n"
    code += f"for name in {VIEW_AND_TTS_MODULES!r}:\n    importlib.import_module(name)\n"
    code += "print(sum(name in sys.modules for name in " + repr(VIEW_AND_TTS_MODULES) + "), 'openai' in sys.modules)\n"
    code += "import trl_vlprm.labeling.judge\nprint('openai' in sys.modules)"  # the check can see openai at all
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == [str(len(VIEW_AND_TTS_MODULES)), "False", "True"], result.stdout
