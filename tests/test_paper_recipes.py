"""The paper's recipes run as written, by hub id, with only CPU overrides on the command line.

The tiny models sit in an offline Hugging Face cache under the recipes' own ids (`tiny_hub`), so
`recipes/configs/vlprm_qwen2_5_vl_{3b,7b}.yaml` and `eval_tts_paper.yaml` are read unchanged: the overrides are the
ones a CPU needs (dtype, attention implementation, bf16, use_cpu, a few steps, a local dataset, no vLLM).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForImageTextToText

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "recipes" / "configs"
# What a CPU needs, nothing else: the recipe's model, head, loss, pixels, optimiser and schedule stay as written.
CPU_TRAIN_OVERRIDES = ["--dtype", "float32", "--attn_implementation", "sdpa", "--bf16", "false", "--use_cpu", "true"]


def _run(args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, *args], cwd=cwd, env=dict(os.environ), capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result


@pytest.mark.slow
@pytest.mark.parametrize("size", ["3b", "7b"])
def test_paper_training_recipe_runs_as_written(tiny_hub, tmp_path, small_supervision_path, size):
    config_file = CONFIGS / f"vlprm_qwen2_5_vl_{size}.yaml"
    recipe = yaml.safe_load(config_file.read_text())
    assert recipe["model_name_or_path"] == f"Qwen/Qwen2.5-VL-{size.upper()}-Instruct"  # the real id, by the cache
    local_data = ["--dataset_name", str(small_supervision_path), "--dataset_format", "records", "--max_steps", "1"]
    _run([str(ROOT / "recipes/train.py"), "--config", str(config_file), *CPU_TRAIN_OVERRIDES, *local_data], tmp_path)

    output = tmp_path / recipe["output_dir"]  # relative in the recipe: under the working directory
    config = json.loads((output / "config.json").read_text())
    assert (config["model_type"], config["prm_head"]) == ("qwen2_5_vl", recipe["head"])
    trained = AutoModelForImageTextToText.from_pretrained(output).state_dict()
    cached = AutoModelForImageTextToText.from_pretrained(recipe["model_name_or_path"]).state_dict()
    vision = [k for k in cached if k.startswith("model.visual.blocks.")]
    language = [k for k in cached if k.startswith("model.language_model.layers.") and k.endswith("proj.weight")]
    assert vision and language
    # The cached model was the starting point: the frozen vision tower is saved unchanged (freeze_vision_tower: true)
    # and the language model moved by one optimiser step at the recipe's learning rate (1e-5).
    assert all(torch.equal(trained[k], cached[k]) for k in vision)
    changes = [float((trained[k] - cached[k]).abs().max()) for k in language]
    assert 0 < max(changes) < 1e-4
    processor_config = json.loads((output / "processor_config.json").read_text())
    size_config = processor_config["image_processor"]["size"]
    assert (size_config["shortest_edge"], size_config["longest_edge"]) == (recipe["min_pixels"], recipe["max_pixels"])


@pytest.mark.slow
@pytest.mark.parametrize(
    "config_name,model_id",
    [
        ("vlprm_qwen3_vl_2b.yaml", None),  # the Qwen3-VL recipe as written
        ("vlprm_qwen2_5_vl_3b.yaml", "Qwen/Qwen3-VL-2B-Instruct"),  # the paper's 3B recipe, only the model changed
    ],
)
def test_qwen3_vl_recipes_train_by_repo_id(
    tiny_hub, tmp_path, small_supervision_path, monkeypatch, config_name, model_id
):
    config_file = CONFIGS / config_name
    recipe = yaml.safe_load(config_file.read_text())
    args = ["--config", str(config_file), *CPU_TRAIN_OVERRIDES, "--max_steps", "1", "--output_dir", "out"]
    args += ["--dataset_name", str(small_supervision_path), "--dataset_format", "records"]
    if model_id is None:  # in this process (the recipe script is `run("train", argv)`), saving a second start-up
        from trl_vlprm.cli import run

        monkeypatch.chdir(tmp_path)
        assert run("train", args) == 0
        model_id = recipe["model_name_or_path"]
    else:  # as the recipe is launched
        _run([str(ROOT / "recipes/train.py"), *args, "--model_name_or_path", model_id], tmp_path)

    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert (config["model_type"], config["prm_head"]) == ("qwen3_vl", recipe["head"])
    trained = AutoModelForImageTextToText.from_pretrained(tmp_path / "out").state_dict()
    cached = AutoModelForImageTextToText.from_pretrained(model_id).state_dict()
    vision = [k for k in cached if k.startswith("model.visual.blocks.")]
    deepstack = [k for k in cached if k.startswith("model.visual.deepstack_merger_list.")]
    language = [k for k in cached if k.startswith("model.language_model.layers.") and k.endswith("proj.weight")]
    assert vision and deepstack and language
    assert all(torch.equal(trained[k], cached[k]) for k in vision)  # freeze_vision_tower: true
    assert 0 < max(float((trained[k] - cached[k]).abs().max()) for k in language) < 1e-4  # one step at lr 1e-5


# One recipe per family where the family is a sensible PRM backbone (recipes/configs/vlprm_<family>_<size>.yaml),
# each trained as written by its published id with the CPU overrides only.
FAMILY_RECIPES = {
    "vlprm_smolvlm2_500m.yaml": "smolvlm",
    "vlprm_internvl3_1b.yaml": "internvl",
    "vlprm_gemma3_4b.yaml": "gemma3",
    "vlprm_llava_onevision_0_5b.yaml": "llava_onevision",
}


@pytest.mark.slow
@pytest.mark.parametrize("config_name", list(FAMILY_RECIPES))
def test_family_recipes_train_by_repo_id(tiny_hub, tmp_path, small_supervision_path, monkeypatch, config_name):
    """The recipe as written (its published model id, generative head, frozen vision tower, the paper's optimiser)
    trains one step in this process; only the family's vision tower stays unchanged, the language model moves."""
    from trl_vlprm.cli import run
    from trl_vlprm.modeling.families import get_family

    config_file = CONFIGS / config_name
    recipe = yaml.safe_load(config_file.read_text())
    args = ["--config", str(config_file), *CPU_TRAIN_OVERRIDES, "--max_steps", "1", "--output_dir", "out"]
    args += ["--dataset_name", str(small_supervision_path), "--dataset_format", "records"]
    monkeypatch.chdir(tmp_path)
    assert run("train", args) == 0

    config = json.loads((tmp_path / "out" / "config.json").read_text())
    model_type = FAMILY_RECIPES[config_name]
    assert (config["model_type"], config["prm_head"]) == (model_type, recipe["head"])
    trained = AutoModelForImageTextToText.from_pretrained(tmp_path / "out").state_dict()
    cached = AutoModelForImageTextToText.from_pretrained(recipe["model_name_or_path"]).state_dict()
    assert trained.keys() == cached.keys()
    family = get_family(model_type)
    vision = [k for k in cached if family.is_vision_tower_parameter(k)]
    language = [k for k in cached if ".layers." in k and not family.is_vision_tower_parameter(k)]
    assert vision and language
    assert all(torch.equal(trained[k], cached[k]) for k in vision)  # freeze_vision_tower: true
    assert 0 < max(float((trained[k] - cached[k]).abs().max()) for k in language) < 1e-4  # one step at lr 1e-5


@pytest.mark.slow
def test_quantization_flag_reaches_the_loader(tiny_hub, tmp_path, small_supervision_path):
    """Not ignored: the recipe asks transformers for a bitsandbytes model, which this CPU machine cannot give (8-bit
    takes the same path: `test_hub_ids.py::test_model_config_quantization_is_honoured`)."""
    flag = "--load_in_4bit"
    args = [str(ROOT / "recipes" / "train.py"), "--config", str(CONFIGS / "vlprm_qwen2_5_vl_3b.yaml")]
    args += [*CPU_TRAIN_OVERRIDES, "--dataset_name", str(small_supervision_path), "--dataset_format", "records", flag]
    result = subprocess.run(
        [sys.executable, *args], cwd=tmp_path, env=dict(os.environ), capture_output=True, text=True, timeout=600
    )
    assert result.returncode != 0
    assert "bitsandbytes" in result.stderr, result.stderr[-3000:]


@pytest.mark.slow
def test_model_revision_flag_trains_that_revision(tiny_hub, tmp_path, small_supervision_path):
    import shutil

    from trl_vlprm.testing import build_tiny_vlm, offline_hub, save_to_hub_cache, write_upstream_layout

    # The second revision goes into this test's own copy of the session's cache: test_hub_ids.py expects one revision.
    home = shutil.copytree(tiny_hub, tmp_path / "hf", symlinks=True)
    other = write_upstream_layout(build_tiny_vlm(tmp_path / "other", arch="qwen2_5_vl", seed=123))
    save_to_hub_cache(other, "Qwen/Qwen2.5-VL-3B-Instruct", home / "hub", revision="tiny-other")
    args = [str(ROOT / "recipes" / "train.py"), "--config", str(CONFIGS / "vlprm_qwen2_5_vl_3b.yaml")]
    args += [*CPU_TRAIN_OVERRIDES, "--dataset_name", str(small_supervision_path), "--dataset_format", "records"]
    with offline_hub(home):
        _run([*args, "--max_steps", "1", "--model_revision", "tiny-other", "--output_dir", "out"], tmp_path)
    trained = AutoModelForImageTextToText.from_pretrained(tmp_path / "out").state_dict()
    expected = AutoModelForImageTextToText.from_pretrained(build_tiny_vlm(tmp_path / "ref", "qwen2_5_vl", 123))
    key = "model.visual.blocks.0.mlp.up_proj.weight"  # frozen: equals the revision's own weights
    assert torch.equal(trained[key], expected.state_dict()[key])


@pytest.mark.slow
def test_paper_eval_recipe_runs_as_written(tiny_hub, tmp_path):
    """eval_tts_paper.yaml by its own ids (3 Qwen2.5-VL policies, 2 published PRM ids), its VisualProcessBench path,
    with CPU overrides: transformers instead of vLLM, short generations, a local benchmark, small N."""
    import csv

    from PIL import Image

    config_file = CONFIGS / "eval_tts_paper.yaml"
    recipe = yaml.safe_load(config_file.read_text())
    bench_path = Path("data/VisualProcessBench/test.jsonl")  # the recipe's relative path, under the working dir
    assert f"visualprocessbench:{bench_path}" in recipe["process_benches"]
    (tmp_path / bench_path.parent).mkdir(parents=True)
    Image.new("RGB", (64, 64), "green").save(tmp_path / bench_path.parent / "square.png")
    lines = [
        {"id": "vpb-1", "image": "square.png", "question": "<image>What colour is the square?", "answer": "green",
         "response": {"steps": ["The square is green.", "Answer: green"], "process_correctness": [1, 1]}},
        {"id": "vpb-2", "image": "square.png", "question": "<image>What colour is the square?", "answer": "green",
         "response": {"steps": ["The square is red.", "Answer: red"], "process_correctness": [-1, -1]}},
    ]  # fmt: skip
    (tmp_path / bench_path).write_text("".join(json.dumps(line) + "\n" for line in lines))
    cpu = ["--policy_backend", "hf", "--max_new_tokens_cap", "24", "--benchmarks", "testbed:0,limit=2"]
    cpu += ["--n_values", "1", "2"]
    cpu += ["--process_benches", f"visualprocessbench:{bench_path}"]
    _run([str(ROOT / "recipes/eval_tts.py"), "--config", str(config_file), *cpu], tmp_path, timeout=1200)

    output = tmp_path / recipe["output_dir"]
    results = list(csv.DictReader((output / "results.csv").open()))
    policies = {spec.partition("@")[0] for spec in recipe["policies"]}
    scorers = {spec.partition("@")[0] for spec in recipe["scorers"]}
    assert {row["policy"] for row in results} == policies
    assert {row["scorer"] for row in results} == scorers | {"-"}  # "-": strategies that read no scorer
    assert {row["n"] for row in results} == {"1", "2"}
    process = list(csv.DictReader((output / "process_bench.csv").open()))
    assert {row["scorer"] for row in process} == scorers
    assert (output / "accuracy_vs_n.png").stat().st_size > 0
