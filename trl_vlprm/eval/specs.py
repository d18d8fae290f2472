"""Labelled specs of an evaluation run, and what each label stands for.

Policies and scorers are built by `trl_vlprm.guidance.backends` from specs "kind:positional,key=value,..." (numbers
converted), here optionally labelled "label@kind:...": e.g. "qwen-7b@vllm:models/Qwen2.5-VL-7B-Instruct,
temperature=0.7" or "testbed:0,limit=120". Labels name rows and sample files, so two benchmarks, policies or scorers
with one label are refused. What a label stands for is pinned (`spec_pin`: the spec, the seed, the defaults it
received, and the fingerprint of every model folder it names), so a rerun never reuses samples or scores made by
something else under the same label.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from trl_vlprm.guidance.backends import POLICY_BACKENDS, SCORER_BACKENDS, Backend, get_backend, parse_spec, split_label
from trl_vlprm.utils.resume import path_fingerprint


def labelled_specs(specs: list[str], what: str, name_of: Callable[[str], str] = lambda spec: spec) -> dict[str, str]:
    """{label: spec} of "label@spec" entries (an unlabelled spec's label is `name_of(spec)`); one label per spec."""
    labelled: dict[str, str] = {}
    for entry in specs:
        label, spec = split_label(entry)
        if "@" not in entry.partition(":")[0]:
            label = name_of(spec)
        if label in labelled:
            raise ValueError(
                f"{what} specs {labelled[label]!r} and {spec!r} share the label {label!r}, so their rows and sample "
                f"files would be one; label them, e.g. '{label}-a@{labelled[label]}'"
            )
        labelled[label] = spec
    return labelled


def load_benchmark_spec(spec: str):
    """(name, Dataset) of a benchmark spec "name[:source][,split=..][,limit=..][,prompt=paper]"."""
    from trl_vlprm.eval.benchmarks import load_benchmark

    name, args, kwargs = parse_spec(spec)
    unknown = set(kwargs) - {"split", "limit", "prompt"}
    if unknown or len(args) > 1:
        raise ValueError(f"benchmark spec {spec!r}: expected 'name[:source][,split=...][,limit=...][,prompt=paper]'")
    source = args[0] if args else None
    split = kwargs.get("split")
    limit = kwargs.get("limit")
    return name, load_benchmark(name, source, split, limit, kwargs.get("prompt", "default"))


def spec_pin(
    spec: str, seed: int, defaults: Mapping[str, Any] | None = None, backends: Mapping[str, Backend] | None = None
) -> dict[str, Any]:
    """What a spec builds, for resume checks: the spec, the seed, the defaults a model-backed kind receives, and a
    fingerprint of the model it names: every file's size and mtime for a folder (a model retrained in place
    differs), the resolved commit for a Hub repo id (`modeling.hub.model_fingerprint`). `backends` (default: every
    registered policy and scorer backend) tells which kinds take defaults and name a model."""
    if backends is None:
        backends = {name: SCORER_BACKENDS.get(name) for name in SCORER_BACKENDS}
        backends.update({name: POLICY_BACKENDS.get(name) for name in POLICY_BACKENDS})
    kind, args, kwargs = parse_spec(spec)
    takes_defaults = kind in backends and get_backend(backends, kind).takes_defaults
    # "prm:vllm:<folder>" names the same model as "prm:<folder>", served by another backend: fingerprint the model.
    models = {arg: arg.removeprefix("vllm:") for arg in args}
    files = {arg: path_fingerprint(model) for arg, model in models.items() if Path(model).exists()}
    if takes_defaults and len(args) == 1 and args[0] not in files:
        files[args[0]] = _repo_fingerprint(models[args[0]], kwargs.get("revision"))
    return {
        "spec": spec,
        "seed": seed,
        "defaults": dict(defaults or {}) if takes_defaults else {},
        "files": files,
    }


def _repo_fingerprint(repo_id: str, revision: str | None) -> Any:
    from trl_vlprm.modeling.hub import model_fingerprint

    try:
        return model_fingerprint(repo_id, revision)
    except Exception:  # not resolvable here (offline, not cached): building it fails later with the real reason
        return {"repo_id": repo_id, "revision": revision}
