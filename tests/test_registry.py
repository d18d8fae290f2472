"""`Registry`: decorator and lazy registration, errors that list what is available."""

import doctest
import sys

import pytest

import trl_vlprm.registry
from trl_vlprm.registry import Registry


def test_decorator_registers_under_name_and_aliases_and_returns_the_object():
    registry = Registry("strategy")

    @registry.register("best_of_n", "bon")
    def best_of_n():
        return 7

    assert best_of_n() == 7
    assert registry.get("best_of_n") is best_of_n and registry.get("bon") is best_of_n
    assert registry.names() == ["best_of_n", "bon"] and "bon" in registry and len(registry) == 2


def test_unknown_name_lists_the_available_ones():
    registry = Registry("benchmark")
    registry.register("mmmu")(object())
    registry.register("mathvista")(object())
    with pytest.raises(KeyError, match=r"unknown benchmark 'mmu'; available: mathvista, mmmu"):
        registry.get("mmu")


def test_lazy_entry_imports_only_when_asked(monkeypatch):
    monkeypatch.delitem(sys.modules, "json.tool", raising=False)
    registry = Registry("tool")
    registry.register_lazy("json_tool", "json.tool:main")
    assert "json.tool" not in sys.modules
    loaded = registry.get("json_tool")
    assert "json.tool" in sys.modules and loaded is sys.modules["json.tool"].main
    with pytest.raises(ValueError, match="must be 'module:attribute'"):
        registry.register_lazy("bad", "json.tool.main")


def test_a_name_cannot_be_taken_twice_by_different_objects():
    registry = Registry("aggregation")
    first = registry.register("min")(min)
    assert registry.register("min")(first) is min  # re-registering the same object is harmless (module reloads)
    with pytest.raises(ValueError, match="aggregation 'min' is already registered"):
        registry.register("min")(max)


def test_module_docstring_example_runs():
    result = doctest.testmod(trl_vlprm.registry)
    assert result.attempted >= 3 and result.failed == 0


def test_unknown_name_error_is_a_key_error_and_a_value_error_with_a_plain_message():
    registry = Registry("converter")
    registry.register("trl_stepwise")(object())
    with pytest.raises(ValueError) as caught:
        registry["prm800k"]
    assert isinstance(caught.value, KeyError)
    assert str(caught.value) == "unknown converter 'prm800k'; available: trl_stepwise"  # not quoted as KeyError's
    with pytest.raises(KeyError, match=r"^spec 'prm800k:x': unknown converter 'prm800k'; available: trl_stepwise$"):
        registry.get("prm800k", "spec 'prm800k:x'")
    with pytest.raises(ValueError, match=r"^Config.fmt='x': unknown converter 'x'; available: trl_stepwise$"):
        registry.check("x", "Config.fmt")
    assert registry.check("trl_stepwise", "Config.fmt") == "trl_stepwise"
    assert ["a"] not in registry  # an unhashable name (a list read from YAML) is unknown, not a TypeError
    with pytest.raises(KeyError, match=r"unknown converter \['a'\]"):
        registry.get(["a"])


def test_overwrite_and_unregister():
    registry = Registry("aggregation")
    registry.register("min")(min)
    with pytest.raises(ValueError, match="pass overwrite=True to replace it"):
        registry.register("min")(max)
    registry.register("min", overwrite=True)(max)
    assert registry.get("min") is max
    assert registry.unregister("min") is max and "min" not in registry and len(registry) == 0
    with pytest.raises(KeyError, match="unknown aggregation 'min'; available: $"):
        registry.unregister("min")
    registry.register_lazy("tool", "json.tool:main")
    assert registry.unregister("tool") == "json.tool:main"  # a lazy entry never imported comes back as its target


def test_unknown_name_suggests_the_close_ones():
    registry = Registry("aggregation")
    for name in ("last", "mean", "min", "prod", "paper"):
        registry.register(name)(object())
    with pytest.raises(KeyError) as caught:
        registry.get("mni")
    assert (
        str(caught.value) == "unknown aggregation 'mni'; available: last, mean, min, paper, prod; did you mean 'min'?"
    )
    with pytest.raises(KeyError) as caught:
        registry.get("zzz")
    assert "did you mean" not in str(caught.value)  # nothing close: no guess


def test_a_registry_with_a_base_class_refuses_other_entries_eagerly_and_lazily():
    class Base:
        pass

    class Good(Base):
        pass

    registry = Registry("family", base=Base)
    assert registry.register("good")(Good) is Good
    assert registry.register("instance")(Good()) is not None  # an instance of the base fits too
    with pytest.raises(TypeError, match=r"family 'bad': <class 'int'> is not a Base"):
        registry.register("bad")(int)
    registry.register_lazy("lazy_bad", "json:dumps")  # checked when imported, as nothing is imported before
    with pytest.raises(TypeError, match=r"family 'lazy_bad': <function dumps .*> is not a Base"):
        registry.get("lazy_bad")
    assert registry.names() == ["good", "instance", "lazy_bad"]


def test_a_discovering_registry_imports_its_package_before_the_first_lookup(tmp_path, monkeypatch):
    package = tmp_path / "plugins_for_registry_test"
    package.mkdir()
    (package / "__init__.py").write_text(
        "from trl_vlprm.registry import Registry\nTHINGS = Registry('thing', discover=__name__)\n"
    )
    for name in ("alpha", "beta"):
        (package / f"{name}.py").write_text(
            f"from . import THINGS\n\n@THINGS.register({name!r})\ndef {name}():\n    return {name!r}\n"
        )
    monkeypatch.syspath_prepend(str(tmp_path))
    from plugins_for_registry_test import THINGS

    assert "plugins_for_registry_test.alpha" not in sys.modules  # nothing imported at package load
    assert THINGS.get("beta")() == "beta" and THINGS.names() == ["alpha", "beta"] and len(THINGS) == 2
    assert "plugins_for_registry_test.alpha" in sys.modules
