"""Every entry point loads a model by Hub repo id (offline, from a Hugging Face cache in the exact hub layout) as it
loads a folder: processors, PRMs, the trainer, the scorer, the transformers policy; revisions; unsupported models."""

import json
import os

import pytest
import torch
from huggingface_hub import scan_cache_dir
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText

from trl_vlprm.guidance.policy import Candidate
from trl_vlprm.modeling.heads import load_prm
from trl_vlprm.modeling.hub import model_init_kwargs_from, model_snapshot_dir
from trl_vlprm.modeling.processor import UnsupportedModelError, load_processor, read_model_type
from trl_vlprm.testing import (
    TINY_HUB_BASE_MODELS,
    build_tiny_text_prm,
    build_tiny_vlm,
    save_to_hub_cache,
    write_upstream_layout,
)

QWEN25 = "Qwen/Qwen2.5-VL-3B-Instruct"
QWEN2 = "Qwen/Qwen2-VL-2B-Instruct"


def _reference(tmp_path, repo_id):
    """The same tiny model as the cached repo, in this project's own folder layout (built with the same seed)."""
    arch, seed = TINY_HUB_BASE_MODELS[repo_id]
    return build_tiny_vlm(tmp_path / "reference", arch=arch, seed=seed)


def test_cache_has_the_hub_layout(tiny_hub):
    repo_dir = tiny_hub / "hub" / "models--Qwen--Qwen2.5-VL-3B-Instruct"
    commit = (repo_dir / "refs" / "main").read_text()
    snapshot = repo_dir / "snapshots" / commit
    names = sorted(p.name for p in snapshot.iterdir())
    assert names == sorted(
        ["chat_template.json", "config.json", "generation_config.json", "merges.txt", "model.safetensors",
         "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json", "vocab.json"]
    )  # fmt: skip
    assert all((snapshot / n).is_symlink() and (snapshot / n).resolve().parent == repo_dir / "blobs" for n in names)
    # huggingface_hub's own scanner reads it as a complete cached repo at that commit.
    info = {repo.repo_id: repo for repo in scan_cache_dir(tiny_hub / "hub").repos}
    assert {"Qwen/Qwen2.5-VL-3B-Instruct", "ob11/Qwen-VL-PRM-7B"} <= set(info)
    (revision,) = info[QWEN25].revisions
    assert revision.commit_hash == commit and revision.refs == frozenset({"main"})
    preprocessor = json.loads((snapshot / "preprocessor_config.json").read_text())
    assert preprocessor["image_processor_type"] == "Qwen2_5_VLImageProcessor"
    assert (preprocessor["min_pixels"], preprocessor["max_pixels"]) == (56 * 56, 112 * 112)
    config = json.loads((snapshot / "config.json").read_text())
    assert "text_config" not in config and config["rope_scaling"]["type"] == "mrope"
    assert any(k.startswith("visual.") for k in load_file(str(snapshot / "model.safetensors")))


@pytest.mark.parametrize("repo_id", [QWEN25, QWEN2])
def test_upstream_processor_by_id_matches_the_projects_folder(tiny_hub, tmp_path, repo_id):
    by_id, folder = load_processor(repo_id), load_processor(_reference(tmp_path, repo_id))
    assert type(by_id) is type(folder)
    assert (by_id.image_processor.size.shortest_edge, by_id.image_processor.size.longest_edge) == (3136, 12544)
    assert by_id.chat_template == folder.chat_template  # read from chat_template.json
    image = Image.new("RGB", (200, 150), "orange")
    text = "<|vision_start|><|image_pad|><|vision_end|>How many?"
    a = by_id(text=[text], images=[image], return_tensors="pt")
    b = folder(text=[text], images=[image], return_tensors="pt")
    assert torch.equal(a["pixel_values"], b["pixel_values"]) and torch.equal(a["image_grid_thw"], b["image_grid_thw"])
    assert int((a["input_ids"] == by_id.image_token_id).sum()) == int(a["image_grid_thw"].prod()) // 4
    # pixel overrides apply on top of the saved min/max pixels
    small = load_processor(repo_id, max_pixels=56 * 56)
    assert small.image_processor(images=[image])["image_grid_thw"].tolist() == [[1, 2, 4]]  # 28 x 56 pixels


@pytest.mark.parametrize("head", ["value", "generative"])
def test_load_prm_by_id_loads_the_cached_weights(tiny_hub, tmp_path, head):
    reference = AutoModelForImageTextToText.from_pretrained(_reference(tmp_path, QWEN25)).state_dict()
    state = load_prm(QWEN25, head=head).state_dict()
    shared = [k for k in reference if k in state]
    assert len(shared) == len(reference) - (1 if head == "value" else 0)
    assert all(torch.equal(reference[k], state[k]) for k in shared)


def test_revision_picks_the_snapshot(tiny_hub, tmp_path):
    """A second revision of one repo (other weights) sits beside main; `revision` selects it everywhere."""
    other = write_upstream_layout(build_tiny_vlm(tmp_path / "v2", arch="qwen2_vl", seed=99))
    v2_snapshot = save_to_hub_cache(other, "Org/TwoRevisions", tiny_hub / "hub", revision="v2")
    main = write_upstream_layout(build_tiny_vlm(tmp_path / "main", arch="qwen2_vl", seed=98))
    main_snapshot = save_to_hub_cache(main, "Org/TwoRevisions", tiny_hub / "hub")
    assert v2_snapshot != main_snapshot
    key = "model.language_model.layers.0.mlp.up_proj.weight"
    expected_v2 = AutoModelForImageTextToText.from_pretrained(build_tiny_vlm(tmp_path / "r2", seed=99)).state_dict()
    expected_main = AutoModelForImageTextToText.from_pretrained(build_tiny_vlm(tmp_path / "r1", seed=98)).state_dict()
    assert torch.equal(
        load_prm("Org/TwoRevisions", head="generative", revision="v2").state_dict()[key], expected_v2[key]
    )
    assert torch.equal(load_prm("Org/TwoRevisions", head="generative").state_dict()[key], expected_main[key])
    assert model_snapshot_dir("Org/TwoRevisions", revision="v2") == v2_snapshot
    assert model_snapshot_dir("Org/TwoRevisions") == main_snapshot


def test_unknown_repo_id_offline_names_the_model_and_the_cache(tiny_hub):
    for load in (load_processor, load_prm):
        with pytest.raises(OSError, match=r"'Nobody/NoSuchModel' \(revision main\): no config.json in the Hub cache"):
            load("Nobody/NoSuchModel")
    with pytest.raises(OSError, match=r"'Qwen/Qwen2-VL-2B-Instruct' \(revision v9\)"):
        load_prm(QWEN2, revision="v9")


def test_unknown_vision_model_type_is_an_error_naming_it(tiny_hub, tmp_path):
    """A model with an image processor of a type the library has no image-only processor for: an error, never a
    silent text tokenizer."""
    folder = build_tiny_text_prm(tmp_path / "vlm_of_unknown_type")
    (folder / "preprocessor_config.json").write_text(json.dumps({"image_processor_type": "SiglipImageProcessor"}))
    save_to_hub_cache(folder, "Org/UnknownVLM", tiny_hub / "hub")
    for source in (folder, "Org/UnknownVLM"):
        with pytest.raises(UnsupportedModelError, match=r"model type 'qwen2'.*qwen2_vl, qwen2_5_vl"):
            load_processor(source)


def test_text_model_given_image_rows_names_its_type(tiny_hub, tmp_path, small_supervision_path):
    from datasets import load_from_disk

    from trl_vlprm import PRMScorer, VLPRMConfig, VLPRMTrainer

    text_model = save_to_hub_cache(build_tiny_text_prm(tmp_path / "text"), "Org/TextPRM", tiny_hub / "hub")
    assert read_model_type("Org/TextPRM") == "qwen2" and text_model.is_dir()
    rows = load_from_disk(str(small_supervision_path)).select(range(4))
    args = VLPRMConfig(output_dir=str(tmp_path / "out"), report_to="none", use_cpu=True)
    with pytest.raises(UnsupportedModelError, match=r"model type 'qwen2'.*supported.*qwen2_vl, qwen2_5_vl"):
        VLPRMTrainer("Org/TextPRM", args, train_dataset=rows)
    scorer = PRMScorer.from_pretrained(text_model, head="value")  # its snapshot folder: by id, the trainer above
    question = {"id": "q1", "prompt": "<image>How many?", "images": [Image.new("RGB", (56, 56))]}
    with pytest.raises(UnsupportedModelError, match=r"question q1: model type 'qwen2'"):
        scorer.score(question, [Candidate(steps=["Three."])])


def test_trainer_by_id_trains_the_cached_model(tiny_hub, tmp_path, small_supervision_path):
    from datasets import load_from_disk

    from trl_vlprm import VLPRMConfig, VLPRMTrainer

    rows = load_from_disk(str(small_supervision_path)).select(range(8))
    args = VLPRMConfig(
        output_dir=str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=4, report_to="none",
        use_cpu=True, head="generative", save_strategy="no", learning_rate=1e-2,
    )  # fmt: skip
    trainer = VLPRMTrainer(QWEN25, args, train_dataset=rows)
    before = AutoModelForImageTextToText.from_pretrained(QWEN25).state_dict()
    key = "model.language_model.layers.1.mlp.down_proj.weight"
    assert torch.equal(trainer.model.state_dict()[key], before[key])  # the cached weights, not a random init
    assert type(trainer.processing_class).__name__ == "ImageOnlyQwen2_5_VLProcessor"
    trainer.train()
    assert not torch.equal(trainer.model.state_dict()[key], before[key])
    assert trainer.state.global_step == 2


def test_scorer_by_published_prm_id_equals_its_folder(tiny_hub):
    from trl_vlprm import PRMScorer

    question = {"id": "q2", "prompt": "<image>What colour?", "images": [Image.new("RGB", (90, 60), "blue")]}
    candidates = [Candidate(steps=["It is blue.", "Answer: blue"]), Candidate(steps=["It is red."])]
    by_id = PRMScorer.from_pretrained("ob11/Qwen-VL-PRM-7B")
    by_folder = PRMScorer.from_pretrained(model_snapshot_dir("ob11/Qwen-VL-PRM-7B"))
    assert by_id.head == "generative" and by_id.step_separator == "\n"
    scores = by_id.score(question, candidates)
    assert [len(s) for s in scores] == [2, 1]
    assert scores == by_folder.score(question, candidates)
    assert all(0.0 < p < 1.0 for s in scores for p in s)


def test_scorer_refuses_a_base_model_without_prm_metadata(tiny_hub):
    from trl_vlprm import PRMScorer

    with pytest.raises(ValueError, match=r"Qwen/Qwen2.5-VL-7B-Instruct is not a PRM saved by trl_vlprm"):
        PRMScorer.from_pretrained("Qwen/Qwen2.5-VL-7B-Instruct")
    assert PRMScorer.from_pretrained("Qwen/Qwen2.5-VL-7B-Instruct", head="generative").head == "generative"


def test_hf_policy_by_id(tiny_hub, tmp_path):
    from trl_vlprm.guidance.hf_policy import HFPolicy

    question = {"id": "q3", "prompt": "<image>Count.", "images": [Image.new("RGB", (56, 56))]}
    policies = [
        HFPolicy.from_pretrained(source, dtype=torch.float32, max_new_tokens=6, temperature=0, seed=0)
        for source in (QWEN2, _reference(tmp_path, QWEN2))
    ]
    assert type(policies[0].model) is type(policies[1].model)
    # The same weights behind the id and the folder: the same greedy continuation of the same prompt ids.
    prompts = [_prompt(p, question) for p in policies]
    assert torch.equal(prompts[0]["input_ids"], prompts[1]["input_ids"])
    outputs = [p.sample_solutions(question, 1)[0] for p in policies]
    assert outputs[0].num_tokens == 6 and outputs[0].steps == outputs[1].steps


def _prompt(policy, question):
    text = policy.processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Count."}]}],
        add_generation_prompt=True,
        tokenize=False,
    )
    return policy.processor(text=[text], images=question["images"], return_tensors="pt")


@pytest.mark.parametrize(
    "flags, expected",
    [
        ({"model_revision": "v2"}, {"revision": "v2"}),
        ({"dtype": "float32", "attn_implementation": "eager"}, {"dtype": "float32", "attn_implementation": "eager"}),
    ],
)
def test_model_config_flags_are_passed_on(flags, expected):
    from trl import ModelConfig

    kwargs = model_init_kwargs_from(ModelConfig(model_name_or_path=QWEN25, **flags))
    assert {k: kwargs[k] for k in expected} == expected
    assert "quantization_config" not in kwargs


def test_model_config_quantization_is_honoured():
    from trl import ModelConfig

    for flag, attribute in (("load_in_4bit", "load_in_4bit"), ("load_in_8bit", "load_in_8bit")):
        kwargs = model_init_kwargs_from(ModelConfig(model_name_or_path=QWEN25, **{flag: True}))
        assert getattr(kwargs["quantization_config"], attribute) is True
        assert kwargs.get("device_map") is None  # no GPU here; on GPUs each process's own device


def test_trust_remote_code_is_refused():
    """TRL 1.16's ModelConfig has no such flag: the recipe's parser refuses it; an older ModelConfig's is refused by
    the loader."""
    from types import SimpleNamespace

    from trl import ModelConfig, TrlParser

    from trl_vlprm import VLPRMConfig

    parser = TrlParser((VLPRMConfig, ModelConfig))
    with pytest.raises(ValueError, match="--trust_remote_code"):
        parser.parse_args_and_config(args=["--output_dir", "x", "--model_name_or_path", QWEN25, "--trust_remote_code"])
    with pytest.raises(ValueError, match="trust_remote_code=True is not supported"):
        model_init_kwargs_from(SimpleNamespace(model_name_or_path=QWEN25, trust_remote_code=True))


def test_env_points_at_the_tiny_cache(tiny_hub):
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["HF_HOME"] == str(tiny_hub)


def test_tts_run_pins_a_repo_id_by_its_commit(tiny_hub):
    """A resumed `recipes/tts.py` run is pinned to the commit each repo id resolved to (not to a missing path)."""
    from trl_vlprm.guidance.tts import TTSArguments, run_tags

    args = TTSArguments(policy="hf", policy_model_path=QWEN2, scorer="prm", prm_model_path="ob11/Qwen-VL-PRM-7B")
    tags = run_tags(args)
    commits = {repo: (tiny_hub / "hub" / f"models--{repo.replace('/', '--')}" / "refs" / "main").read_text()
               for repo in (QWEN2, "ob11/Qwen-VL-PRM-7B")}  # fmt: skip
    assert tags["policy_model_fingerprint"] == {"repo_id": QWEN2, "commit": commits[QWEN2]}
    prm = "ob11/Qwen-VL-PRM-7B"
    assert tags["prm_model_fingerprint"] == {"repo_id": prm, "commit": commits[prm]}
    with pytest.raises(OSError, match=r"revision v7"):
        run_tags(TTSArguments(policy="hf", policy_model_path=QWEN2, policy_model_revision="v7"))


def test_eval_spec_takes_a_repo_id_and_revision(tiny_hub, tmp_path):
    """`prm:<repo id>,revision=2024`: the revision stays text (a tag, not the number 2024) and selects the snapshot."""
    from trl_vlprm.guidance.backends import build_scorer, parse_spec
    from trl_vlprm.testing import build_tiny_prm

    assert parse_spec("prm:Org/RevisedPRM,revision=2024,batch_size=4")[2] == {"revision": "2024", "batch_size": 4}
    tagged = build_tiny_prm(tmp_path / "tagged", arch="qwen2_vl", seed=5, step_separator="\n\n")
    save_to_hub_cache(tagged, "Org/RevisedPRM", tiny_hub / "hub", revision="2024")
    save_to_hub_cache(build_tiny_prm(tmp_path / "main", arch="qwen2_vl", seed=6), "Org/RevisedPRM", tiny_hub / "hub")
    at_tag = build_scorer("prm:Org/RevisedPRM,revision=2024", 0)
    at_main = build_scorer("prm:Org/RevisedPRM", 0)
    assert (at_tag.step_separator, at_main.step_separator) == ("\n\n", "\n")  # each snapshot's own metadata


def test_a_folder_that_is_not_there_is_named_as_missing(tmp_path):
    """A model path that does not exist was read by transformers as a malformed repo id ("Repo id must be in the
    form 'repo_name'..."), an OSError the CLI printed with a traceback; now a FileNotFoundError naming the model
    and saying the folder is not there."""
    from trl_vlprm.modeling.hub import require_model

    missing = tmp_path / "no-such-prm"
    with pytest.raises(FileNotFoundError, match=rf"model '{missing}': no such folder \({missing}\)$"):
        require_model(missing)
    missing.mkdir()
    with pytest.raises(FileNotFoundError, match=r"no-such-prm' \(revision main\): no config.json in that folder"):
        require_model(missing)
