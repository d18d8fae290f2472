"""Every shell command in README.md and docs/*.md runs in a test.

The commands are extracted from the fenced `bash`/`sh`/`shell` blocks. Each one is, by an explicit table below:
- RUN: run here as written plus CPU overrides appended (arguments given later win in every parser used), in a
  temporary working directory, with the tiny models in an offline Hugging Face cache under the ids the configs name;
  a few need a substitution first (a GPU-only launcher option, a path on the author's machine), listed beside it;
- COVERED: run, with the same CPU overrides, by another test (named; its existence is checked);
- EXCLUDED: with the reason.
A command in the docs that is in none of the tables fails `test_every_documented_command_is_accounted_for`.
"""

import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TRAIN_CPU = "--dtype float32 --attn_implementation sdpa --bf16 false --use_cpu true --max_steps 1"
TINY_DATA = "--dataset_name {supervision} --dataset_format records"  # a local dataset instead of VL-PRM300K
VPB = "data/VisualProcessBench/test.jsonl"
EVAL_CPU = f"--policy_backend hf --max_new_tokens_cap 16 --n_values 1 2 --process_benches visualprocessbench:{VPB}"

# documented command -> (CPU overrides appended, {text to replace: replacement} applied first, what it must write)
RUN: dict[str, tuple[str, dict[str, str], str]] = {
    "accelerate launch --config_file recipes/accelerate/zero2.yaml recipes/train.py "
    "--config recipes/configs/vlprm_qwen2_5_vl_7b.yaml": (
        f"{TRAIN_CPU} {TINY_DATA}",
        {},
        "outputs/Qwen2.5-VL-7B-VL-PRM/model.safetensors",
    ),
    "trl-vlprm puzzles --n 600 --solutions 4 --out data/testbed": ("--n 6", {}, "data/testbed/*.arrow"),
    "trl-vlprm puzzles --n 20000 --image_size 448 --out data/testbed-rl": (
        "--n 6",
        {},
        "data/testbed-rl/*.arrow",
    ),
    "trl-vlprm label --config recipes/configs/label_testbed.yaml": (
        "--num_questions 4",
        {},
        "outputs/labels/testbed/shard-*.parquet",
    ),
    "trl-vlprm tts --config recipes/configs/tts_testbed.yaml": (
        "--num_questions 4",
        {},
        "outputs/tts/testbed_beam_search.jsonl",
    ),
    "trl-vlprm eval --config recipes/configs/eval_tts_testbed.yaml": (
        "--benchmarks testbed:0,limit=8 --process_benches testbed:num_questions=8,solutions_per_question=2",
        {},
        "outputs/eval_tts_testbed/process_bench.csv",
    ),
    "trl-vlprm eval --config recipes/configs/eval_tts_paper.yaml --benchmarks "
    "mathvista:/data/MathVista --policies qwen7b@vllm:Qwen/Qwen2.5-VL-7B-Instruct --num_subsamples 16 "
    "--output_dir outputs/eval_mathvista": (
        EVAL_CPU,
        {"/data/MathVista": "{mathvista}"},
        "outputs/eval_mathvista/results.csv",
    ),
    "trl-vlprm tts --config recipes/configs/tts_qwen2_5_vl.yaml": (
        "--policy hf --dataset puzzles --num_questions 2 --n 2 --max_new_tokens 16 --max_step_tokens 8",
        {},
        "outputs/tts/qwen2_5_vl_weighted_vote.jsonl",
    ),
    "trl-vlprm label --config recipes/configs/label_server.yaml --judge_base_url http://host:8000/v1": (
        "--dataset puzzles --num_questions 2 --num_rollouts 2 --mc_num_completions 2 --max_new_tokens 16",
        {"http://host:8000/v1": "{judge_url}"},
        "outputs/labels/questions/shard-*.parquet",
    ),
}
# The CPU pipeline of README.md and docs/training.md: run as written, in order, in one working directory, so each
# command reads what the one before wrote (nothing is prepared for it); the CPU overrides only shrink the work
# (fewer puzzles, questions and training steps). (command, overrides appended, what it must write)
CHAIN: list[tuple[str, str, str]] = [
    ("python -m trl_vlprm.cpu_recipe outputs/tiny-qwen2-vl", "", "outputs/tiny-qwen2-vl/model.safetensors"),
    ("trl-vlprm puzzles --n 1200 --families learnable --image_size 84 --out outputs/pipeline/puzzles.parquet",
     "--n 16", "outputs/pipeline/puzzles.parquet"),
    ("trl-vlprm puzzles --n 100 --seed 1 --families learnable --image_size 84 --out "
     "outputs/pipeline/held_out.parquet", "--n 6", "outputs/pipeline/held_out.parquet"),
    ("trl-vlprm label --config recipes/configs/label_learnable.yaml", "--show_progress false",
     "outputs/pipeline/labels/shard-*.parquet"),
    ("trl-vlprm train --config recipes/configs/vlprm_tiny_cpu.yaml", "--max_steps 6 --eval_fraction 0.3",
     "outputs/pipeline/vlprm/model.safetensors"),
    ("trl-vlprm check --prm outputs/pipeline/vlprm --data outputs/pipeline/labels --limit 400", "--limit 24", ""),
    ("trl-vlprm tts --config recipes/configs/tts_testbed.yaml --dataset outputs/pipeline/held_out.parquet --scorer "
     "prm --prm_model_path outputs/pipeline/vlprm --output_file outputs/pipeline/tts_prm.jsonl", "--n 4",
     "outputs/pipeline/tts_prm.jsonl"),
    ("trl-vlprm eval --config recipes/configs/eval_tts_testbed.yaml --output_dir outputs/pipeline/eval --benchmarks "
     "testbed:outputs/pipeline/held_out.parquet --scorers vlprm@prm:outputs/pipeline/vlprm oracle random "
     "--process_benches testbed:num_questions=60,solutions_per_question=4,families=learnable,image_size=84",
     "--n_values 1 2 --num_subsamples 2 --process_benches "
     "testbed:num_questions=3,solutions_per_question=2,families=learnable,image_size=84",
     "outputs/pipeline/eval/results.csv"),
]  # fmt: skip
COVERED: dict[str, str] = {
    "trl-vlprm view --inputs outputs/eval_tts/samples/testbed__scripted.jsonl": (
        "tests/test_viewer.py::test_eval_samples_find_their_images_through_the_pinned_benchmark"
    ),
    "trl-vlprm view --inputs outputs/labels --output outputs/labels.html": (
        "tests/test_viewer.py::test_labelled_dataset_view_shows_labels_mc_and_judge"
    ),
    "make demo": "tests/test_loading_and_demo.py::test_demo_runs_every_stage_and_resumes",
    # GRPO needs a policy, a trained PRM and (as written) colocated vLLM on 8 GPUs; its recipe's 2-process launch
    # with the tiny CPU config is run there.
    "accelerate launch --config_file recipes/accelerate/zero2.yaml --num_processes 8 recipes/grpo.py --config "
    "recipes/configs/grpo_qwen2_5_vl_3b.yaml": (
        "tests/test_rewards_grpo.py::test_recipe_under_a_two_process_ddp_launch"
    ),
    "accelerate launch --config_file recipes/accelerate/zero2.yaml --num_processes 8 recipes/grpo.py --config "
    "recipes/configs/grpo_process_qwen2_5_vl_3b.yaml": (
        "tests/test_process_grpo.py::test_gpu_process_recipe_runs_as_written"
    ),
    "trl-vlprm eval --config recipes/configs/eval_tts_paper.yaml": (
        "tests/test_paper_recipes.py::test_paper_eval_recipe_runs_as_written"
    ),
    "trl-vlprm tts --config recipes/configs/tts_paper_step_search.yaml": (
        "tests/test_paper_prompts.py::test_step_search_preset_runs_on_tiny_models"
    ),
    "trl-vlprm label --config recipes/configs/label_paper.yaml": (
        "tests/test_builder.py::test_paper_label_recipe_runs_with_cpu_overrides"
    ),
    "trl-vlprm label --rollouts_file rollouts.jsonl --verdict_files batch_0001_verification_results.json --rule "
    "vlprm --judge_unknown drop --judge_prompt paper --judge none --output_dir outputs/labels/imported": (
        "tests/test_import.py::test_the_papers_files_are_labelled_as_convert_mc_to_prm_signal_labels_them"
    ),
    "trl-vlprm label --config recipes/configs/label_paper.yaml --judge batch --judge_base_url "
    "https://api.openai.com/v1": (
        "tests/test_batch_judge.py::test_a_batch_judged_labelling_run_killed_while_waiting_then_resumed"
    ),
    # <cfg> stands for any recipe: the launch test runs each launcher with the tiny CPU config and checks world size 2.
    "accelerate launch --config_file recipes/accelerate/ddp.yaml recipes/train.py --config "
    "recipes/configs/<cfg>.yaml": "tests/test_launch.py::test_two_process_launch",
    "accelerate launch --config_file recipes/accelerate/zero2.yaml recipes/train.py --config "
    "recipes/configs/<cfg>.yaml": "tests/test_launch.py::test_two_process_launch",
    "accelerate launch --config_file recipes/accelerate/zero3.yaml recipes/train.py --config "
    "recipes/configs/<cfg>.yaml": "tests/test_launch.py::test_two_process_launch",
    # The scale-out launches: each test launches the recipe with 2 processes and checks both ranks worked.
    "accelerate launch --multi_gpu --num_processes 2 recipes/build_dataset.py --config "
    "recipes/configs/label_testbed.yaml": (
        "tests/test_scaleout.py::test_two_ranks_label_the_same_questions_as_one_process"
    ),
    "accelerate launch --multi_gpu --num_processes 2 recipes/tts.py --config recipes/configs/tts_testbed.yaml": (
        "tests/test_scaleout.py::test_tts_ranks_answer_each_question_once_and_a_rerun_finishes_a_killed_run"
    ),
    "accelerate launch --multi_gpu --num_processes 2 recipes/eval_tts.py --config "
    "recipes/configs/eval_tts_testbed.yaml": "tests/test_scaleout.py::test_two_ranks_evaluate_each_question_once",
}
TORCHVISION_VENV = (
    "needs torchvision, which must never enter this project's venvs (CONTRIBUTING.md): the throwaway venv in which "
    "tools/processor_parity.py compares the torchvision and PIL processors (figures in docs/models.md)"
)
EXCLUDED: dict[str, str] = {
    "make test": "the test suite itself (this file is part of it)",
    "python3.11 -m venv /tmp/tv-venv": TORCHVISION_VENV,
    "nice /tmp/tv-venv/bin/pip install torch==2.14.1 torchvision==0.29.1 transformers==5.25.0 pillow==13.0.0 "
    "numpy==2.4.6": TORCHVISION_VENV,
    "PYTHONPATH=$PWD HF_HUB_OFFLINE=1 /tmp/tv-venv/bin/python tools/processor_parity.py --images "
    "../shared/benchmarks/PuzzleVQA/data/images": TORCHVISION_VENV,
    "MODEL=/models/Qwen2.5-VL-7B-Instruct sbatch recipes/slurm/serve_fleet_eval.sbatch": (
        "needs a SLURM cluster with GPUs; its parts run in tests/test_vllm_server.py (real vLLM servers on loopback, "
        "a fleet of base URLs through the server: policy spec of the evaluation sweep)"
    ),
    "MODEL=/models/Qwen2.5-VL-7B-Instruct sbatch recipes/slurm/label_multinode.sbatch": (
        "needs a SLURM cluster with GPUs; the rank protocol runs in tests/test_scaleout.py (2-process launches, a "
        "killed rank, reruns)"
    ),
}


def documented_commands() -> dict[str, list[str]]:
    """{command: [doc files showing it]}: fenced shell blocks, continuation lines joined, comments and runs of
    spaces removed."""
    commands: dict[str, list[str]] = {}
    for doc in DOC_FILES:
        for block in re.findall(r"```(?:bash|sh|shell)\n(.*?)```", doc.read_text(), re.S):
            for line in block.replace("\\\n", " ").splitlines():
                command = " ".join(re.sub(r"(^|\s)#.*$", "", line).split())
                if command:
                    commands.setdefault(command, []).append(doc.name)
    return commands


def test_every_documented_command_is_accounted_for():
    commands = documented_commands()
    assert len(commands) >= 10  # the extraction finds the docs' blocks
    chain = {c: "chain" for c, _, _ in CHAIN}
    tables = {**{c: "run" for c in RUN}, **{c: "covered" for c in COVERED}, **{c: "excluded" for c in EXCLUDED}}
    assert not set(chain) & set(tables)
    tables.update(chain)
    missing = {c: docs for c, docs in commands.items() if c not in tables}
    assert not missing, f"commands in the docs with no entry in RUN / CHAIN / COVERED / EXCLUDED: {missing}"
    stale = [c for c in tables if c not in commands]
    assert not stale, f"table entries no doc shows any more: {stale}"
    assert len(RUN) + len(CHAIN) + len(COVERED) + len(EXCLUDED) == len(tables)  # no command in two tables


@pytest.mark.parametrize("command", sorted(set(COVERED.values())))
def test_covering_tests_exist(command):
    path, _, name = command.partition("::")
    assert re.search(rf"^def {name}\(", (ROOT / path).read_text(), re.M), command


def _write_mathvista(folder: Path) -> Path:
    from datasets import Dataset, DatasetDict, Features, Image, Sequence, Value
    from PIL import Image as PILImage

    rows = [
        {"pid": str(i), "question": "What colour is the square?", "query": "What colour is the square?",
         "decoded_image": PILImage.new("RGB", (64, 64), colour), "choices": ["red", "green"], "answer": colour,
         "question_type": "multi_choice", "answer_type": "text", "metadata": {"task": "figure QA"}}
        for i, colour in enumerate(["red", "green"])
    ]  # fmt: skip
    features = Features(
        {"pid": Value("string"), "question": Value("string"), "query": Value("string"), "decoded_image": Image(),
         "choices": Sequence(Value("string")), "answer": Value("string"), "question_type": Value("string"),
         "answer_type": Value("string"), "metadata": {"task": Value("string")}}
    )  # fmt: skip
    DatasetDict({"testmini": Dataset.from_list(rows, features=features)}).save_to_disk(str(folder))
    return folder


def _write_visual_process_bench(cwd: Path) -> None:
    from PIL import Image

    (cwd / VPB).parent.mkdir(parents=True)
    Image.new("RGB", (64, 64), "green").save(cwd / Path(VPB).parent / "square.png")
    line = {"id": "v1", "image": "square.png", "question": "<image>Colour?", "answer": "green",
            "response": {"steps": ["It is green.", "Answer: green"], "process_correctness": [1, 1]}}  # fmt: skip
    (cwd / VPB).write_text(json.dumps(line) + "\n")


def _argv(command: str, cwd: Path) -> list[str]:
    """The command's argv, runnable from `cwd`: the repo's recipes by absolute path, console scripts of this venv."""
    argv = shlex.split(command)
    argv = [str(ROOT / a) if a.startswith("recipes/") else a for a in argv]
    bin_dir = Path(sys.executable).parent
    if argv[0] == "python":
        argv[0] = sys.executable
    elif (bin_dir / argv[0]).exists():
        argv[0] = str(bin_dir / argv[0])
    return argv


def _slug(command: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.]+", "-", command.replace("recipes/", ""))[:90]


@pytest.mark.slow
@pytest.mark.parametrize("command", list(RUN), ids=[_slug(c) for c in RUN])
def test_documented_command_runs(command, tiny_hub, tmp_path, small_supervision_path):
    overrides, substitutions, expected_output = RUN[command]
    values = {"supervision": str(small_supervision_path)}
    if "{mathvista}" in substitutions.values():
        values["mathvista"] = str(_write_mathvista(tmp_path / "MathVista"))
    if "--process_benches visualprocessbench" in overrides:
        _write_visual_process_bench(tmp_path)
    server = None
    if "{judge_url}" in substitutions.values():
        from trl_vlprm.testbed.judge_server import JudgeServer

        server = JudgeServer({}).start()  # a real chat-completions server on loopback
        server.gold = _EveryStepJudged()  # the tiny policy's steps are not known in advance: judge each of them
        values["judge_url"] = server.base_url
    for old, new in substitutions.items():
        command = command.replace(old, new.format(**values))
    argv = _argv(command, tmp_path) + shlex.split(overrides.format(**values))
    try:
        result = subprocess.run(argv, cwd=tmp_path, env=dict(os.environ), capture_output=True, text=True, timeout=900)
    finally:
        if server is not None:
            server.stop()
    assert result.returncode == 0, f"{argv}\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    written = [p for p in tmp_path.glob(expected_output) if p.stat().st_size > 0]
    assert written, f"{command}: nothing at {expected_output}; wrote {sorted(map(str, tmp_path.rglob('*')))[:20]}"


@pytest.mark.slow
def test_documented_pipeline_runs_as_a_chain(tmp_path):
    """puzzles -> label (reads the puzzles file) -> train (reads the labels) -> check, tts and eval (read the PRM and
    the held-out puzzles): every step exits 0 and writes what the next one reads."""
    env = dict(os.environ)
    outputs = {}
    for command, overrides, expected in CHAIN:
        argv = _argv(command, tmp_path) + shlex.split(overrides)
        result = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, f"{argv}\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
        if expected:
            assert [p for p in tmp_path.glob(expected) if p.stat().st_size > 0], (command, expected)
        outputs[command.split()[1] if command.startswith("trl-vlprm") else "model"] = result.stdout
    assert "16 puzzles" in outputs["puzzles"] or "6 puzzles" in outputs["puzzles"]
    assert "records from 64 solutions" in outputs["label"]  # 16 puzzles x 4 rollouts, from the puzzles file
    assert "best-of-N vs a random pick" in outputs["check"]
    assert "N=4: prm picks right on" in outputs["tts"] and "image swap, " in outputs["tts"]
    lines = [json.loads(line) for line in (tmp_path / "outputs/pipeline/tts_prm.jsonl").read_text().splitlines()]
    held_out = tmp_path / "outputs/pipeline/held_out.parquet"
    import pyarrow.parquet as pq

    assert sorted(line["id"] for line in lines) == sorted(pq.read_table(held_out).column("id").to_pylist())
    assert "| vlprm | best_of_n:min |" in outputs["eval"]


class _EveryStepJudged(dict):
    """Gold verdicts for every step a judge is asked about: a deterministic coin from the step's key."""

    def __contains__(self, key) -> bool:
        return True

    def __getitem__(self, key) -> bool:
        return int(hashlib.sha256(str(key).encode()).hexdigest()[:8], 16) % 2 == 0
