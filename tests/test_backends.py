"""The one policy/scorer factory (`trl_vlprm.guidance.backends`): specs, registries, and every runner using it."""

import pytest
import torch

from trl_vlprm.guidance.backends import (
    POLICY_BACKENDS,
    SCORER_BACKENDS,
    build_policy,
    build_scorer,
    make_spec,
    parse_spec,
)
from trl_vlprm.guidance.hf_policy import HFPolicy
from trl_vlprm.guidance.sampling import SamplingConfig
from trl_vlprm.guidance.scorer import PRMScorer
from trl_vlprm.guidance.server_policy import ServerPolicy
from trl_vlprm.guidance.tts import TTSArguments
from trl_vlprm.guidance.tts import build_policy as tts_policy
from trl_vlprm.guidance.tts import build_scorer as tts_scorer
from trl_vlprm.labeling.builder import _make_policy_and_questions
from trl_vlprm.labeling.config import LabelConfig
from trl_vlprm.testbed import GoldOracleScorer, RandomScorer, ScriptedPolicy, generate_puzzles
from trl_vlprm.testing import build_tiny_prm, build_tiny_vlm
from trl_vlprm.types import Candidate

DEAD_URL = "http://127.0.0.1:9/v1"  # nothing listens on the discard port: a built ServerPolicy must send nothing


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory):
    return build_tiny_vlm(tmp_path_factory.mktemp("vlm"), arch="qwen2_vl", seed=0)


@pytest.fixture(scope="module")
def puzzles():
    return list(generate_puzzles(4, seed=3))


def test_every_backend_registers_itself_and_an_unknown_one_names_the_others():
    assert {"hf", "scripted", "server", "vllm"} <= set(POLICY_BACKENDS.names())
    assert {"oracle", "prm", "random", "server", "vllm"} <= set(SCORER_BACKENDS.names())
    with pytest.raises(ValueError, match=r"unknown policy backend 'sglang'; available: hf, .*scripted, server, vllm"):
        build_policy("sglang:http://host/v1")
    with pytest.raises(ValueError, match=r"unknown scorer backend 'orcale'; available: .*oracle, prm, random"):
        build_scorer("orcale")


def test_spec_grammar_round_trips_and_refuses_a_comma_in_a_part():
    spec = make_spec("hf", ["Org/Model"], revision="2024", temperature=0.5, top_k=None)
    assert spec == "hf:Org/Model,revision=2024,temperature=0.5"
    assert parse_spec(spec) == ("hf", ["Org/Model"], {"revision": "2024", "temperature": 0.5})
    assert parse_spec("server:http://a:8000/v1,http://b:8000/v1,model=7") == (
        "server",
        ["http://a:8000/v1", "http://b:8000/v1"],
        {"model": "7"},  # a served model name stays text, like a revision
    )
    assert make_spec("oracle") == "oracle"
    with pytest.raises(ValueError, match="holds a comma"):
        make_spec("hf", ["a,b"])


def test_testbed_backends_build_seeded_policies_and_scorers(puzzles):
    perfect = build_policy("scripted:perception_error_rate=0.0,reasoning_error_rate=0.0", seed=1)
    assert isinstance(perfect, ScriptedPolicy)
    solutions = [perfect.sample_solutions(q, 3) for q in puzzles]
    assert all(all(c.gold_correct) and c.answer == q["answer"] for q, cs in zip(puzzles, solutions) for c in cs)
    question, candidates = puzzles[0], [Candidate(c.steps, gold_correct=c.gold_correct) for c in solutions[0]]
    assert isinstance(build_scorer("oracle"), GoldOracleScorer)
    assert build_scorer("oracle").score(question, candidates) == [[1.0] * len(c.steps) for c in candidates]
    # The run seed reaches the random scorer; a spec's own seed wins over it.
    scores = build_scorer("random", seed=5).score(question, candidates)
    assert (
        scores == RandomScorer(seed=5).score(question, candidates) != RandomScorer(seed=6).score(question, candidates)
    )
    assert build_scorer("random:seed=6", seed=5).score(question, candidates) == RandomScorer(6).score(
        question, candidates
    )
    with pytest.raises(ValueError, match="takes keywords only"):
        build_policy("scripted:0.3")


def test_model_backend_gets_the_run_defaults_under_the_specs_own_keywords(tiny_vlm, puzzles):
    defaults = {"temperature": 1.0, "step_separator": "\n", "max_new_tokens": 30}
    policy = build_policy(f"hf:{tiny_vlm},temperature=0,max_new_tokens=9,dtype=float32", seed=4, defaults=defaults)
    assert isinstance(policy, HFPolicy) and policy.model.dtype == torch.float32
    assert policy.sampling == SamplingConfig(step_separator="\n", temperature=0, max_new_tokens=9, seed=4)
    first, second = policy.complete(puzzles[0], [], 2)  # greedy: one sample, repeated; within the spec's budget
    assert first.steps == second.steps and 0 < first.num_tokens <= 9 and second.num_tokens == 0
    # vLLM engine keywords in a spec do not reach transformers (a GPU config run on the hf backend).
    assert build_policy(f"hf:{tiny_vlm},max_model_len=4096,temperature=0").sampling.temperature == 0
    with pytest.raises(ValueError, match="needs one model"):
        build_policy("hf:a,b")


def test_server_backend_builds_a_fleet_and_sends_every_sampling_setting(puzzles):
    policy = build_policy(
        f"server:{DEAD_URL},http://127.0.0.1:10/v1,model=tiny,top_k=20,repetition_penalty=1.05,max_concurrency=2",
        seed=3,
        defaults={"step_separator": "\n", "system_prompt": None},
    )
    assert isinstance(policy, ServerPolicy) and policy.base_urls == [DEAD_URL, "http://127.0.0.1:10/v1"]
    assert policy.sampling == SamplingConfig(step_separator="\n", top_k=20, repetition_penalty=1.05, seed=3)
    body = policy.build_request(puzzles[0], ["step one"], 4, 16, stop=True)
    assert (body["n"], body["stop"], body["max_tokens"]) == (4, ["\n"], 16)
    assert body["extra_body"]["top_k"] == 20 and body["extra_body"]["repetition_penalty"] == 1.05
    assert body["extra_body"]["continue_final_message"] is True
    plain = ServerPolicy(DEAD_URL, model="tiny", temperature=0)  # no filter, no penalty: neither field is sent
    assert not {"top_k", "repetition_penalty"} & set(
        plain.build_request(puzzles[0], [], 2, 16, stop=False)["extra_body"]
    )
    plain.close()
    policy.close()
    with pytest.raises(TypeError, match=r"ServerPolicy: unknown sampling setting\(s\) \['temprature'\]"):
        ServerPolicy(DEAD_URL, model="tiny", temprature=0.5)


def test_prm_backend_reads_the_spec_and_the_run_separator(tmp_path, puzzles):
    folder = build_tiny_prm(tmp_path / "prm", arch="qwen2_vl", seed=1, step_separator="\n\n")
    scorer = build_scorer(f"prm:{folder},batch_size=3", seed=0)
    assert isinstance(scorer, PRMScorer) and scorer.batch_size == 3 and scorer.step_separator == "\n\n"
    candidates = [Candidate(["The grid holds 4 circles.", "Answer: 4"]), Candidate(["Answer: 5"])]
    scores = scorer.score(puzzles[0], candidates)
    assert [len(s) for s in scores] == [2, 1] and all(0.0 < x < 1.0 for s in scores for x in s)
    plain = scorer.score_plain(puzzles[0], candidates)  # no prefix cache: the same scores
    assert [x for s in plain for x in s] == pytest.approx([x for s in scores for x in s], abs=1e-5)


def test_tts_arguments_build_through_the_factory(tiny_vlm):
    args = TTSArguments(policy="hf", policy_model_path=str(tiny_vlm), temperature=0.3, top_k=5, seed=2)
    assert args.policy_spec() == f"hf:{tiny_vlm}"
    policy = tts_policy(args)
    assert isinstance(policy, HFPolicy) and policy.sampling == args.sampling()
    assert (policy.sampling.temperature, policy.sampling.top_k, policy.sampling.seed) == (0.3, 5, 2)
    # A full spec in `policy`: here a served policy, which TTS could not build before it used the backend factory.
    served = tts_policy(TTSArguments(policy=f"server:{DEAD_URL},model=tiny", dataset="q.jsonl", temperature=0.1))
    assert isinstance(served, ServerPolicy) and served.sampling.temperature == 0.1
    served.close()
    assert isinstance(tts_scorer(TTSArguments(scorer="random:seed=3")), RandomScorer)
    with pytest.raises(ValueError, match="full spec"):
        TTSArguments(policy=f"vllm:{tiny_vlm}", policy_model_path=str(tiny_vlm))
    with pytest.raises(ValueError, match="policy_model_path is needed for policy 'vllm'"):
        TTSArguments(policy="vllm")


def test_labelling_builds_every_policy_backend(tiny_vlm):
    hf = LabelConfig(policy="hf", policy_model_path=str(tiny_vlm), judge="none", rule="mc_only", temperature=0.4)
    policy, questions = _make_policy_and_questions(hf)
    assert isinstance(policy, HFPolicy) and len(questions) == 64
    assert policy.sampling == SamplingConfig(temperature=0.4, seed=0)
    served = LabelConfig(policy=f"server:{DEAD_URL},model=tiny,top_p=0.9", judge="none", rule="mc_only", seed=7)
    policy, _ = _make_policy_and_questions(served)
    assert isinstance(policy, ServerPolicy) and (policy.sampling.top_p, policy.sampling.seed) == (0.9, 7)
    policy.close()
    with pytest.raises(ValueError, match="policy_model_path is needed for policy 'vllm'"):
        LabelConfig(policy="vllm", judge="none", rule="mc_only")
    with pytest.raises(ValueError, match=r"LabelConfig.policy='sglang'.*available: hf, .*server, vllm"):
        LabelConfig(policy="sglang", judge="none", rule="mc_only")
    with pytest.raises(ValueError, match="judge='testbed' answers from gold"):
        LabelConfig(policy=f"server:{DEAD_URL},model=tiny", judge="testbed")


def test_a_vllm_spec_can_set_any_engine_argument():
    from trl_vlprm.guidance.backends.vllm import _engine_keywords, _parameters
    from trl_vlprm.guidance.sampling import SAMPLING_FIELDS
    from trl_vlprm.guidance.vllm_policy import VLLMPolicy

    kind, _, kwargs = parse_spec("vllm:m,temperature=0.5,max_model_len=8192,enforce_eager=true,tensor_parallel_size=2")
    known = _parameters(VLLMPolicy.from_pretrained) | _parameters(VLLMPolicy.__init__) | set(SAMPLING_FIELDS)
    assert _engine_keywords(kwargs, known) == {
        "temperature": 0.5,
        "max_model_len": 8192,
        "llm_kwargs": {"enforce_eager": True, "tensor_parallel_size": 2},
    }


def test_labelling_takes_every_sampling_setting_a_tts_run_takes(tiny_vlm):
    """`LabelConfig` and `TTSArguments` share their sampling fields (`SamplingArguments`); labelling lacked top_p and
    top_k before, so the paper's top_k 20 could not be asked for without writing a full spec."""
    settings = {"temperature": 0.5, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05, "max_step_tokens": 64}
    config = LabelConfig(policy="hf", policy_model_path=str(tiny_vlm), judge="none", rule="mc_only", **settings)
    policy, _ = _make_policy_and_questions(config)
    assert policy.sampling == SamplingConfig(**settings, seed=0)
    assert (
        policy.sampling == tts_policy(TTSArguments(policy="hf", policy_model_path=str(tiny_vlm), **settings)).sampling
    )
    pinned = config.pinned()
    assert {name: pinned[name] for name in settings} == settings
    assert "top_k" not in LabelConfig(judge="none", rule="mc_only").pinned()  # unset: folders labelled before resume


def test_every_run_config_takes_the_policy_text_settings_from_one_declaration():
    """`EvalTTSConfig`, `TTSArguments` and `LabelConfig` get `step_separator` and `system_prompt` from
    `PolicyTextArguments` (`SamplingConfig`'s default and help), under the same YAML keys as before."""
    from trl import TrlParser

    from trl_vlprm.eval.eval_tts import EvalTTSConfig
    from trl_vlprm.guidance.sampling import PolicyTextArguments

    for config_class in (EvalTTSConfig, TTSArguments, LabelConfig):
        assert issubclass(config_class, PolicyTextArguments), config_class
        for name in ("step_separator", "system_prompt"):
            declared, used = SamplingConfig.__dataclass_fields__[name], config_class.__dataclass_fields__[name]
            assert (used.default, used.metadata["help"]) == (declared.default, declared.metadata["help"])
    (config,) = TrlParser((EvalTTSConfig,)).parse_args_and_config(["--config", "recipes/configs/eval_tts_paper.yaml"])
    assert config.step_separator == "\n\n" and config.system_prompt.startswith("You are an expert visual analyst")
