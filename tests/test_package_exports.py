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
