"""ServerPolicy against a real `vllm serve` on loopback (the CPU vLLM venv's own server process, a tiny random
Qwen2-VL: it writes gibberish, so the contract is tested, not answers), then labelling, test-time search and evaluation
driven through it. One server start per module. Runs in the CPU vLLM venv (`bash .ci/vllm_test.sh`).
"""

import threading
import time
from types import SimpleNamespace

import pytest
from PIL import Image

from trl_vlprm.guidance.policy import Policy
from trl_vlprm.guidance.server_policy import ServerPolicy, chat_messages
from trl_vlprm.guidance.vllm_policy import render_prompt
from trl_vlprm.guidance.vllm_server import free_port, launch_vllm_server
from trl_vlprm.modeling.processor import load_processor
from trl_vlprm.testing import build_tiny_vlm

START_TIMEOUT = 300  # seconds; ~25 s on an idle 2-core box, several times that under load
# Tiny limits keep the server's memory reservation small; eager mode skips a torch.compile warm-up.
SERVER_ARGS = [
    "--served-model-name", "tiny", "--enforce-eager", "--dtype", "float32", "--max-model-len", "1024",
    "--max-num-seqs", "16", "--gpu-memory-utilization", "0.05", "--kv-cache-memory-bytes", str(64 << 20),
    "--limit-mm-per-prompt", '{"image": 1, "video": 0}', "--seed", "0",
]  # fmt: skip


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there: connection refused


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The policy: a tiny Qwen2-VL (width 128: the CPU attention kernels need head size 32) behind a real server."""
    root = tmp_path_factory.mktemp("served")
    path = build_tiny_vlm(root / "policy", arch="qwen2_vl", hidden_size=128, seed=0)
    with launch_vllm_server([str(path)], SERVER_ARGS, root / "serve.log", timeout=START_TIMEOUT) as url:
        yield SimpleNamespace(url=f"{url}/v1", port=int(url.rpartition(":")[2]), path=path)


@pytest.fixture(scope="module")
def prm_folder(tmp_path_factory):
    """A generative-head PRM folder as the trainer leaves it (head and separator recorded)."""
    from trl_vlprm.modeling.heads import load_prm

    root = tmp_path_factory.mktemp("prm")
    base = build_tiny_vlm(root / "base", arch="qwen2_vl", hidden_size=128, seed=1)
    model = load_prm(base, head="generative")
    model.config.prm_step_separator = "\n"
    model.save_pretrained(root / "prm")
    load_processor(base).save_pretrained(root / "prm")
    return root / "prm"


@pytest.fixture(scope="module")
def prm_server(prm_folder, tmp_path_factory):
    from trl_vlprm.guidance.server_scorer import prm_server_args

    log = tmp_path_factory.mktemp("prm_log") / "serve.log"
    with launch_vllm_server(prm_server_args(prm_folder), SERVER_ARGS, log, timeout=START_TIMEOUT) as url:
        yield url


@pytest.fixture(scope="module")
def question():
    return {"id": "q7", "prompt": "<image>How many circles are there?", "images": [Image.new("RGB", (64, 48), "red")]}


def make_policy(server, **kwargs):
    urls = kwargs.pop("base_urls", server.url)
    settings = {"seed": 0, "temperature": 1.0, "max_step_tokens": 12, "max_new_tokens": 30, **kwargs}
    return ServerPolicy(urls, **settings)


# -- the policy contract ------------------------------------------------------------------------------------------


def test_server_is_a_policy_and_names_its_model(server):
    policy = ServerPolicy(server.url)
    assert isinstance(policy, Policy) and policy.model == "tiny"


def test_prefix_is_continued_exactly_as_the_in_process_policy_renders_it(server, question):
    """The server's prompt tokens for a question with a prefix equal VLLMPolicy's prompt (image expanded)."""
    policy = make_policy(server, step_separator="\n\n")
    prefix = ["Count the circles.", "There are 3."]
    body = policy.build_request(question, prefix, 1, 1, stop=True)
    response = policy.clients[0].chat.completions.create(**body)
    served_ids = response.model_extra["prompt_token_ids"]
    processor = load_processor(server.path)
    text, _ = render_prompt(processor, question, prefix, "\n\n")
    local_ids = processor.tokenizer(text, add_special_tokens=False)["input_ids"]
    image_id = processor.image_token_id
    collapse = [t for i, t in enumerate(served_ids) if t != image_id or served_ids[i - 1] != image_id]
    assert collapse == local_ids
    assert served_ids.count(image_id) == 4  # 64x48 -> 56x56 -> 4 merged patches, as transformers counts
    with pytest.raises(ValueError, match=r"question q8: field 'images': 2 image\(s\) but 1 placeholder"):
        chat_messages({**question, "id": "q8", "images": question["images"] * 2}, [], "\n\n")


def test_next_steps_stop_at_separator_and_count_tokens(server, question):
    policy = make_policy(server, step_separator=" ")  # a space is frequent: most samples stop on it
    steps = policy.sample_next_steps(question, ["First step", "second step"], 6)
    assert len(steps) == 6
    for continuation in steps:
        assert len(continuation.steps) <= 1
        assert all(" " not in s and s == s.strip() for s in continuation.steps)
        assert 0 < continuation.num_tokens <= 12
    assert any(c.num_tokens < 12 and not c.finished for c in steps)  # stopped by the separator, not the budget
    assert policy.stats.as_dict() == {"calls": 1, "sequences": 6, "tokens": sum(c.num_tokens for c in steps)}


def test_seeds_reproduce_and_split_requests_keep_them(server, question):
    def texts(**kwargs):
        policy = make_policy(server, **kwargs)
        return [c.steps for c in policy.sample_solutions(question, 4)], [
            c.steps for c in policy.sample_solutions(question, 4)
        ]

    first, second = texts()
    assert len({tuple(s) for s in first}) > 1 and first != second
    assert texts() == (first, second)
    # n=4 as requests of 1 sample: request k is seeded like sample k of the single request, so vLLM draws the same.
    split = make_policy(server, max_samples_per_request=1)
    assert [c.steps for c in split.sample_solutions(question, 4)] == first
    assert split.requests_per_server == [4]


def test_greedy_samples_once(server, question):
    policy = make_policy(server, temperature=0.0, seed=None)
    solutions = policy.complete(question, [], 3)
    assert [s.steps for s in solutions] == [solutions[0].steps] * 3
    assert solutions[0].num_tokens > 0 and solutions[1].num_tokens == 0
    assert policy.requests_per_server == [1]


def test_fleet_spreads_requests_and_survives_a_dead_server(server, question):
    # Two names of the live server and one dead address: every call still succeeds, each URL gets its share.
    urls = [server.url, f"http://localhost:{server.port}/v1", dead_url()]
    policy = make_policy(server, base_urls=urls, model="tiny", backoff=0.01)
    for _ in range(6):
        assert len(policy.sample_next_steps(question, [], 2)) == 2
    assert policy.stats.calls == 6
    assert all(count >= 2 for count in policy.requests_per_server), policy.requests_per_server
    assert sum(policy.requests_per_server) == 6 + policy.requests_per_server[2]  # each dead attempt was retried


def test_dead_fleet_fails_within_the_deadline(question):
    policy = ServerPolicy([dead_url(), dead_url()], model="tiny", max_retries=50, deadline=1.5, backoff=0.2)
    start = time.monotonic()
    with pytest.raises(RuntimeError, match=r"ServerPolicy: question q7: no answer after \d+ attempt\(s\)") as info:
        policy.sample_next_steps(question, [], 2)
    assert time.monotonic() - start < 1.5 + 1.0
    assert "APIConnectionError" in str(info.value)
    assert policy.stats.calls == 0


def test_concurrency_is_bounded_across_threads(server, question):
    policy = make_policy(server, max_concurrency=2)
    create = policy.clients[0].chat.completions.create
    in_flight, peak, lock = 0, 0, threading.Lock()

    def counted(**kwargs):  # the real call, with a count of the calls in flight around it
        nonlocal in_flight, peak
        with lock:
            in_flight += 1
            peak = max(peak, in_flight)
        try:
            return create(**kwargs)
        finally:
            with lock:
                in_flight -= 1

    policy.clients[0].chat.completions.create = counted
    threads = [threading.Thread(target=policy.sample_next_steps, args=(question, [], 2)) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert peak == 2
    assert policy.stats.calls == 6 and policy.stats.sequences == 12


# -- the pipeline on a served policy ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def puzzles():
    from trl_vlprm.testbed import generate_puzzles

    return [dict(row) for row in generate_puzzles(2, seed=0, image_size=112)]


@pytest.fixture(scope="module")
def prm(prm_folder):
    from trl_vlprm.guidance.scorer import PRMScorer

    return PRMScorer.from_pretrained(prm_folder)


def test_labelling_runs_on_the_served_policy(server, puzzles):
    from trl_vlprm.labeling.labeler import label_batch
    from trl_vlprm.labeling.mc import MCConfig

    policy = make_policy(server, step_separator="\n", max_new_tokens=24)
    rows, stats = label_batch(puzzles, policy, "mc_only", 2, MCConfig(num_completions=2, mode="every_step"))
    assert stats.solutions == 4  # 2 questions x 2 rollouts
    # Every policy call and token is accounted to a labelling stage.
    assert stats.rollout_cost.calls + stats.mc_cost.calls == policy.stats.calls
    assert stats.rollout_cost.tokens + stats.mc_cost.tokens == policy.stats.tokens > 0
    assert stats.rollout_cost.calls == 2
    for row in rows:
        assert len(row["completions"]) == len(row["labels"]) >= 1


def test_label_cli_and_tts_arguments_take_a_served_policy_spec(server, puzzles, tmp_path, capsys):
    """`trl-vlprm label --policy server:<url>,...` and `TTSArguments(policy="server:...")` build the served policy
    through the backend factory (labelling knew only the scripted and transformers policies before)."""
    import re

    from trl_vlprm.cli import run
    from trl_vlprm.guidance.strategies.base import SearchConfig
    from trl_vlprm.guidance.tts import TTSArguments, build_policy, build_scorer, run_tts
    from trl_vlprm.labeling import load_labelled

    spec = f"server:{server.url},model=tiny,max_step_tokens=8"
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
    argv += ["--max_new_tokens", "24", "--step_separator", "\n", "--output_dir", str(tmp_path / "labels")]
    run("label", [*argv, "--show_progress", "false"])
    records, solutions = map(int, re.search(r"(\d+) records from (\d+) solutions", capsys.readouterr().out).groups())
    assert solutions == 2 * 2 and records == len(load_labelled(tmp_path / "labels"))
    args = TTSArguments(policy=spec, scorer="random", max_new_tokens=24, step_separator="\n", num_questions=2)
    policy = build_policy(args)
    summary = run_tts(
        puzzles, "best_of_n", policy, build_scorer(args), SearchConfig(n=2),
        tmp_path / "tts.jsonl", show_progress=False,
    )  # fmt: skip
    assert summary.num_questions == summary.num_run == 2 and policy.stats.calls == 2 and policy.stats.sequences == 4


def test_search_runs_on_the_served_policy(server, puzzles, prm, tmp_path):
    from trl_vlprm.guidance.strategies.base import SearchConfig
    from trl_vlprm.guidance.tts import read_results, run_tts

    for strategy, config in [
        ("best_of_n", SearchConfig(n=3, aggregation="min")),
        ("beam_search", SearchConfig(beam_width=2, expansions_per_beam=2, max_steps=2)),
    ]:
        policy = make_policy(server, step_separator="\n", max_new_tokens=24, max_step_tokens=8)
        summary = run_tts(puzzles, strategy, policy, prm, config, tmp_path / f"{strategy}.jsonl", show_progress=False)
        results = read_results(tmp_path / f"{strategy}.jsonl")
        assert summary.num_questions == len(results) == 2
        if strategy == "best_of_n":
            assert policy.stats.calls == 2 and policy.stats.sequences == 6
        else:  # step by step: the server continued prefixes of steps (2 expansions of each of <= 2 beams)
            assert policy.stats.calls > 2


def test_evaluation_sweep_runs_on_the_served_policy_and_prm(server, prm_server, prm_folder, puzzles, prm, tmp_path):
    """Policy and PRM both served: the served PRM's step scores equal the in-process PRMScorer's on every sample."""
    from trl_vlprm.eval.tts_sweep import read_results, run_sweep, samples_path
    from trl_vlprm.guidance.backends import build_policy
    from trl_vlprm.guidance.server_scorer import ServerPRMScorer

    # The spec recipes/eval_tts.py reads: two base URLs (here two names of one server), keywords after them.
    spec = f"server:{server.url},http://localhost:{server.port}/v1,model=tiny,max_new_tokens=24,temperature=1.0"
    policy = build_policy(spec, 0, {"step_separator": "\n", "system_prompt": None})
    assert isinstance(policy, ServerPolicy) and policy.base_urls[1].startswith("http://localhost")
    served_prm = ServerPRMScorer.from_pretrained(prm_server, prm_folder)
    scorers = {"prm": prm, "served_prm": served_prm}
    rows = run_sweep(
        {"testbed": puzzles}, {"served": policy}, scorers, ["majority", "best_of_n:min"], [1, 2], tmp_path
    )
    assert len(rows) == 2 + 2 * 2  # majority x N, best_of_n x N x scorers
    assert all(0.0 <= r["accuracy"] <= 1.0 and r["num_questions"] == 2 for r in rows)
    assert policy.stats.calls == 2 and policy.stats.sequences == 4  # sampled once at max N, every N derived
    assert policy.requests_per_server == [1, 1]
    samples = [s for record in read_results(samples_path(tmp_path, "testbed", "served")) for s in record["samples"]]
    pairs = [(a, b) for s in samples for a, b in zip(s["step_scores"]["prm"], s["step_scores"]["served_prm"])]
    assert len(pairs) == sum(len(s["steps"]) for s in samples) > 0
    assert max(abs(a - b) for a, b in pairs) < 1e-5
    assert served_prm.counters["requests"] == sum(1 for s in samples if s["steps"])
    assert served_prm.counters["layout_mismatches"] == 0


def test_served_prm_scores_equal_transformers_on_images(prm_server, prm_folder, prm, question):
    from trl_vlprm.guidance.policy import Candidate
    from trl_vlprm.guidance.server_scorer import ServerPRMScorer

    scorer = ServerPRMScorer.from_pretrained(prm_server + "/v1", prm_folder, max_concurrency=3)
    assert scorer.model == "tiny" and scorer.step_separator == "\n"
    steps = ["The image shows 3 circles.", "So 2 * 3 = 6.", "Answer: B", "Count the red ones."]
    candidates = [Candidate(steps=steps[: k + 1]) for k in range(4)] + [Candidate(steps=[])]
    expected = prm.score_plain(question, candidates)
    got = scorer.score(question, candidates)
    assert [len(g) for g in got] == [1, 2, 3, 4, 0]
    assert max(abs(a - b) for g, e in zip(got, expected) for a, b in zip(g, e)) < 1e-5
    assert max(max(g) for g in got if g) - min(min(g) for g in got if g) > 1e-4  # not one value everywhere
    assert scorer.counters == {
        "requests": 4,
        "prompt_tokens": scorer.counters["prompt_tokens"],
        "layout_mismatches": 0,
    }


def test_served_prm_flags_a_layout_the_trainer_never_made(prm_folder, question):
    """With a space separator the server's one-text tokenization merges it into the next step (" B" is one token),
    unlike the trainer's step-by-step tokenization: the scorer detects it from its local copy of the tokenization."""
    from trl_vlprm.guidance.server_scorer import ServerPRMScorer

    scorer = ServerPRMScorer.from_pretrained(dead_url(), prm_folder, model="tiny")  # no request is made
    ends, length, aligned = scorer.step_end_tokens(question, ["A", "B"])
    assert aligned and ends[1] == length - 1
    scorer.step_separator = " "
    assert not scorer.step_end_tokens(question, ["A", "B"])[2]
