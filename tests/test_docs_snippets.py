"""Every fenced ```python block in README.md and docs/*.md runs in a test, as the shell commands do
(tests/test_docs_commands.py).

Each block is, by an explicit table below (keyed by file and the block's first line):
- RUN: executed in a temporary working directory with the tiny models in an offline hub cache, after a declared
  setup (the files and names the snippet says it reads) and a few declared substitutions (a GPU-sized setting made
  CPU-sized, a path on the author's machine); registrations it makes are undone afterwards;
- EXCLUDED: with the reason (a template with <placeholders>, or a vLLM engine / server that only the vLLM venv has,
  where the named test runs the same calls).
A block in none of the tables fails `test_every_snippet_is_accounted_for`.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

CPU_TRAIN = 'max_steps=1, use_cpu=True, bf16=False, report_to="none", save_strategy="no"'


def _labelled_records(cwd: Path) -> str:
    from trl_vlprm.data.loading import write_dataset
    from trl_vlprm.testbed import sample_supervision

    write_dataset(
        sample_supervision(5, 2, seed=0, families="learnable", image_size=84), cwd / "outputs/pipeline/labels"
    )
    return ""


def _records(cwd: Path) -> str:
    return "from trl_vlprm.testbed import sample_supervision\nrecords = sample_supervision(3, 2, seed=0)\n"


def _pil_image(cwd: Path) -> str:
    return "from PIL import Image\npil_image = Image.new('RGB', (32, 32), 'red')\n"


def _vlprm300k_rows(cwd: Path) -> str:
    """One row in ob11/VL-PRM300K's layout (tests/test_converters.py's), its image under VL-PRM300K/."""
    from PIL import Image
    from test_converters import vlprm_row

    row = vlprm_row()
    (cwd / "VL-PRM300K" / row["image"]).parent.mkdir(parents=True)
    Image.new("RGB", (32, 32)).save(cwd / "VL-PRM300K" / row["image"])
    return f"source_rows = [{row!r}]\n"


def _grpo_inputs(cwd: Path) -> str:
    import shutil

    from trl_vlprm.data.loading import write_dataset
    from trl_vlprm.modeling.heads import load_prm
    from trl_vlprm.testbed import generate_puzzles
    from trl_vlprm.testing import build_tiny_vlm

    write_dataset(generate_puzzles(4, seed=0, image_size=112), cwd / "data/testbed-rl")
    policy = build_tiny_vlm(cwd / "models/Qwen2.5-VL-3B-Instruct", arch="qwen2_vl", seed=0)
    prm = cwd / "outputs/my-vl-prm"
    load_prm(str(build_tiny_vlm(cwd / "prm-base", arch="qwen2_vl", seed=1)), head="value").save_pretrained(prm)
    for path in policy.iterdir():  # tokenizer and image processor beside the PRM's weights
        if not (prm / path.name).exists():
            shutil.copy(path, prm / path.name)
    return ""


def _eval_prm(cwd: Path) -> str:
    _grpo_inputs(cwd)
    return ""


def _no_setup(cwd: Path) -> str:
    return ""


def _extending_types(cwd: Path) -> str:
    return "from typing import Protocol\nfrom collections.abc import Sequence\nfrom trl_vlprm.types import *\n"


def _aggregations(cwd: Path) -> str:
    return "from trl_vlprm.guidance.aggregation import AGGREGATIONS\n"


# (doc, first line) -> (setup returning code to run first, {text: replacement}, code that checks what it made,
#                       registrations to undo as (registry module:attribute, name))
RUN = {
    ("README.md", "from trl_vlprm import VLPRMConfig, VLPRMTrainer"): (
        _labelled_records, {"max_pixels=50176)": f"max_pixels=50176, {CPU_TRAIN})"},
        "assert (Path('vlprm') / 'model.safetensors').exists() and len(split['test']) >= 1", (),
    ),
    ("README.md", '{"prompt": "<image>What is the missing number?", "images": [pil_image],'): (
        _pil_image, {}, "", (),
    ),
    ("data_format.md", "from trl_vlprm.data.converters import convert_dataset, from_vlprm300k"): (
        _vlprm300k_rows, {"/data/VL-PRM300K": "VL-PRM300K"},
        "assert len(dataset) == 1 and record['labels'] == [True, True, False] and len(record['images']) == 1", (),
    ),
    ("data_format.md", '{"prompt": "Tom has 3 apples ...", "completions": ["Step 1: ...", "Step 2: ..."], "labels": '
                       "[True, False]}"): (_no_setup, {}, "", ()),
    ("data_format.md", "{"): (_no_setup, {}, "", ()),
    ("evaluation.md", "from trl_vlprm.eval import EvalTTSConfig, run"): (
        _eval_prm,
        {'benchmarks=["puzzlevqa"]': 'benchmarks=["testbed:0,limit=3"]',
         'policies=["vllm:Qwen/Qwen2.5-VL-7B-Instruct"]': 'policies=["scripted"]',
         "prm:outputs/Qwen2.5-VL-7B-VL-PRM": "prm:outputs/my-vl-prm", "n_values=[1, 4, 16]": "n_values=[1, 2]"},
        "assert {row['scorer'] for row in rows} >= {'prm:outputs/my-vl-prm'} and len(rows) >= 4", (),
    ),
    ("extending.md", "class Policy(Protocol):"): (_extending_types, {}, "assert Policy and StepScorer", ()),
    ("extending.md", '@AGGREGATIONS.register("harmonic")'): (
        _aggregations, {}, "assert abs(AGGREGATIONS.get('harmonic')([0.5, 0.5]) - 0.5) < 1e-9",
        (("trl_vlprm.guidance.aggregation:AGGREGATIONS", "harmonic"),),
    ),
    ("extending.md", "# trl_vlprm/guidance/backends/<name>.py: every module of this package is imported on the first "
                     "lookup"): (
        _no_setup, {}, "from trl_vlprm.guidance.backends import POLICY_BACKENDS\nassert 'mine' in POLICY_BACKENDS",
        (("trl_vlprm.guidance.backends:POLICY_BACKENDS", "mine"),),
    ),
    ("extending.md", "from trl_vlprm.guidance.scorer import PRMScorer"): (
        _no_setup, {},
        "assert (Path('hf/hub/models--me--my-prm/refs/main').exists(), scorer.head) == (True, 'generative')", (),
    ),
    ("guidance.md", "from trl_vlprm.guidance.strategies import majority_vote, select_best_of_n, weighted_vote"): (
        _no_setup, {},
        "assert (select_best_of_n(candidates, 'min'), majority_vote(candidates), weighted_vote(candidates, 'prod')) "
        "== (0, 0, 0)", (),
    ),
    ("index.md", "from trl_vlprm import VLPRMConfig, VLPRMTrainer"): (
        _records, {"path/to/Qwen2.5-VL-3B-Instruct": "Qwen/Qwen2.5-VL-3B-Instruct",
                   "max_pixels=50176)": f"max_pixels=50176, {CPU_TRAIN})"},
        "assert trainer.state.global_step == 1", (),
    ),
    ("rl.md", "import torch"): (
        _grpo_inputs,
        {"num_generations=8,": "num_generations=2, per_device_train_batch_size=2, max_completion_length=8, "
                               "max_steps=1, use_cpu=True, report_to='none', save_strategy='no',"},
        "assert trainer.state.global_step == 1", (),
    ),
    ("testbed.md", "from trl_vlprm.testbed import generate_puzzles"): (
        _no_setup, {"n=600": "n=6"}, "assert len(dataset) == 6", (),
    ),
}  # fmt: skip
VLLM = "needs a vLLM engine (the vLLM venv: `make test-vllm`), where "
EXCLUDED = {
    ("extending.md", '@outcome_selection("median_vote", takes_aggregation=_step_aggregation)  # None: the name '
                     'takes no ":<agg>"'): "a template inside a numbered step (indented; `_step_aggregation` is the "
                                           "module's own helper)",
    ("extending.md", '@benchmark("<name>", default_source="org/<Name>", default_split="test")'): (
        "a template with <name> placeholders"),
    ("extending.md", "def judge(self, question, steps, step_types=None) -> JudgeResult: ..."): (
        "two method signatures of the judge interface, not a program"),
    ("extending.md", '@combination_rule("<name>", needs_mc=True, needs_judge=False)'): (
        "a template with <name> placeholders"),
    ("extending.md", "@register_model_family"): (
        "registers a model family for gemma3 in the process-wide registry; tests/test_families.py runs the "
        "contract on every registered family"),
    ("vllm.md", "from trl_vlprm.guidance.vllm_policy import VLLMPolicy"): VLLM + "tests/test_vllm_policy.py builds "
                                                                          "the same policy",
    ("vllm.md", "from trl_vlprm.guidance.vllm_scorer import VLLMScorer"): VLLM + "tests/test_vllm_scorer.py scores "
                                                                          "with it",
    ("vllm.md", "from trl_vlprm.guidance.server_policy import ServerPolicy"): (
        "needs OpenAI-compatible servers on other hosts; tests/test_vllm_server.py runs ServerPolicy against real "
        "vLLM servers on loopback"),
    ("vllm.md", "from trl_vlprm.guidance.server_scorer import ServerPRMScorer, prm_server_args"): (
        "needs running PRM servers; tests/test_vllm_server.py serves and scores"),
    ("vllm.md", 'llm = LLM(model=path, runner="pooling", convert="classify", pooler_config={"task": '
                '"token_classify"},'): VLLM + "tests/test_vllm_scorer.py builds this engine",
}  # fmt: skip


def documented_snippets() -> dict[tuple[str, str], str]:
    """{(doc file name, first line of the block): block} of every ```python block."""
    snippets = {}
    for doc in DOC_FILES:
        for block in re.findall(r"```python\n(.*?)```", doc.read_text(), re.S):
            first = next(line.strip() for line in block.splitlines() if line.strip())
            snippets[(doc.name, first)] = block
    return snippets


def test_every_snippet_is_accounted_for():
    snippets = documented_snippets()
    assert len(snippets) >= 20  # the extraction finds the docs' blocks
    missing = [key for key in snippets if key not in RUN and key not in EXCLUDED]
    assert not missing, f"```python blocks with no entry in RUN / EXCLUDED: {missing}"
    stale = [key for key in [*RUN, *EXCLUDED] if key not in snippets]
    assert not stale, f"table entries no doc shows any more: {stale}"
    assert not set(RUN) & set(EXCLUDED)


@pytest.mark.slow
@pytest.mark.parametrize("key", list(RUN), ids=[f"{doc}:{first[:40]}" for doc, first in RUN])
def test_documented_snippet_runs(key, tiny_hub, tmp_path, monkeypatch):
    import importlib
    import textwrap

    setup, substitutions, check, registrations = RUN[key]
    monkeypatch.chdir(tmp_path)
    code = textwrap.dedent(documented_snippets()[key])
    for old, new in substitutions.items():
        assert old in code, (key, old)  # a substitution that no longer applies is a stale table entry
        code = code.replace(old, new)
    namespace = {"Path": Path}
    try:
        exec(compile(setup(tmp_path) + code + "\n" + check, f"{key[0]} snippet", "exec"), namespace)
    finally:
        for target, name in registrations:
            module, _, attribute = target.partition(":")
            registry = getattr(importlib.import_module(module), attribute)
            if name in registry:
                registry.unregister(name)
