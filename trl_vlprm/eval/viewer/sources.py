"""Where the questions of a results file came from, read from what the run pinned, so a page finds in-memory images
(generated testbed puzzles, dataset cells of bytes) without the user naming the questions again.

An evaluation samples file has a sidecar `<file>.meta.json` whose `benchmark.spec` is the spec it was sampled from;
a tts results line's `settings` hold its `dataset` (a file, a folder or "benchmark:<spec>"; generated "puzzles" are
not rebuilt: their count is not pinned) and `dataset_split`. Which questions are the same ones is checked by image
digest when the page resolves each image (`images.ImageTable`), so a source that changed since shows as missing
images, never as wrong ones.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def pinned_sources(paths: Sequence[Path], kind: str, first_lines: Sequence[Mapping[str, Any] | None]) -> list[str]:
    """The question sources the inputs' pins name ("benchmark:<spec>" or a dataset path), each once."""
    sources = []
    for path, first in zip(paths, first_lines):
        if kind == "samples":
            meta = path.with_suffix(".meta.json")
            if meta.is_file():
                benchmark = json.loads(meta.read_text()).get("benchmark")
                if isinstance(benchmark, Mapping) and benchmark.get("spec"):
                    sources.append(f"benchmark:{benchmark['spec']}")
        elif kind == "tts" and first is not None:
            dataset = (first.get("settings") or {}).get("dataset")
            if dataset and dataset != "puzzles":
                split = (first.get("settings") or {}).get("dataset_split") or "test"
                sources.append(dataset if dataset.startswith("benchmark:") else f"{dataset}@{split}")
    return list(dict.fromkeys(sources))


def load_source(source: str) -> Any:
    """The question records of one `pinned_sources` entry."""
    if source.startswith("benchmark:"):
        from trl_vlprm.eval.specs import load_benchmark_spec

        return load_benchmark_spec(source.removeprefix("benchmark:"))[1]
    from trl_vlprm.data.loading import load_questions

    dataset, _, split = source.rpartition("@")
    return load_questions(dataset, split)
