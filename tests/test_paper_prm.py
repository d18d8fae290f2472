"""The paper's PRM input layout and the published PRMs' presets, against reference implementations of their authors'
scoring code (written here from that code) on tiny random models.

References: theogbrand/vlprm `eval/tts_eval/reward_guided_search/VisualPRMv2.py` (`VisualPRM.get_reward` and
`inference_single`) for ob11/Qwen-VL-PRM-*; the Qwen/Qwen2.5-Math-PRM-7B model card (`make_step_rewards`).
"""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file
from scoring_inputs import SOLUTIONS, random_image
from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2Config, Qwen2Model

from trl_vlprm.guidance.policy import Candidate
from trl_vlprm.guidance.scorer import PRMScorer
from trl_vlprm.modeling.encoding import PAPER_PRM_SYSTEM_PROMPT, PRMEncoder, PRMLayout
from trl_vlprm.modeling.heads import MissingPRMMetadataError, Qwen2ForProcessRewardModel, load_prm
from trl_vlprm.modeling.presets import get_preset
from trl_vlprm.modeling.processor import load_processor
from trl_vlprm.testing import build_tiny_tokenizer, build_tiny_vlm

ATOL = 1e-5
PAPER_MIN_PIXELS, PAPER_MAX_PIXELS = 256 * 28 * 28, 1280 * 28 * 28
STEPS = SOLUTIONS[:4]  # the four the paper-reference comparisons were written with (the long fifth came later)


# ---- reference: the paper's VisualPRM.get_reward, from VisualPRMv2.py ----------------------------------------------
# Kept as in their code: system turn with PRM_SYSTEM_PROMPT_NORMAL_TOK_V2, first user turn = image + "### Question:\n
# {question}\n\n### Solution Process:\n{step 1}" (non-interleaved questions: the image first), then ("+" assistant
# turn, user step) pairs; the chat template with the generation prompt; the processor on the text and the images;
# a full forward; softmax over the logits of "+" and "-" at the last position. Only the base64 round trip is
# skipped: images go in as PIL images whose sides are multiples of 28 within qwen_vl_utils' bounds, which its
# `fetch_image` leaves untouched.


class ReferenceVisualPRM:
    def __init__(self, model_path):
        self.model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_path, dtype=torch.float32).eval()
        self.processor = load_processor(model_path, min_pixels=PAPER_MIN_PIXELS, max_pixels=PAPER_MAX_PIXELS)
        self.tokenizer = self.processor.tokenizer
        self.pos_token_id = self.tokenizer.encode("+")[0]
        self.neg_token_id = self.tokenizer.encode("-")[0]
        self.system_prompt = PAPER_PRM_SYSTEM_PROMPT

    def inference_single(self, messages, images):
        text = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        inputs = self.processor(text=[text], images=images, padding=True, return_tensors="pt")
        with torch.no_grad():
            logits = self.model(**inputs).logits
        masked = logits[:, -1, [self.pos_token_id, self.neg_token_id]]
        probs = F.softmax(masked, dim=-1)
        input_length = inputs["input_ids"].shape[1]  # every input token, image tokens included
        return {"positive_prob": probs[0][0].item(), "negative_prob": probs[0][1].item(), "input_length": input_length}

    def get_reward(self, question, previous_steps, now_step, images):
        messages = [{"role": "system", "content": [{"type": "text", "text": self.system_prompt}]}]
        first_user = lambda step: [  # noqa: E731
            {
                "role": "user",
                "content": [
                    {"type": "image", "image": images[0]},
                    {"type": "text", "text": f"### Question:\n{question}\n\n### Solution Process:\n{step}"},
                ],
            }
        ]
        if previous_steps:
            for i, step in enumerate(previous_steps):
                if i == 0:
                    messages += first_user(step)
                else:
                    messages.append({"role": "user", "content": [{"type": "text", "text": step}]})
                messages.append({"role": "assistant", "content": [{"type": "text", "text": "+"}]})
            messages.append({"role": "user", "content": [{"type": "text", "text": now_step}]})
        else:
            messages += first_user(now_step)
        return self.inference_single(messages, images)


@pytest.fixture(scope="module")
def paper_prm_dir(tmp_path_factory):
    """A tiny Qwen2.5-VL saved as the paper's PRMs are published: a plain VLM checkpoint, no PRM metadata."""
    return build_tiny_vlm(tmp_path_factory.mktemp("paper") / "Qwen-VL-PRM-7B", arch="qwen2_5_vl", seed=3)


@pytest.fixture(scope="module")
def paper_question():
    # 476 x 448: sides are multiples of 28 and the area lies within the paper's pixel bounds (272 image tokens).
    question = "Which number is missing?\nOptions:\nA. 4\nB. 7"
    return {"id": "p1", "prompt": "<image>" + question, "images": [random_image(448, 476, 0)]}, question


@pytest.fixture(scope="module")
def paper_scorer(paper_prm_dir):
    return PRMScorer.from_pretrained(paper_prm_dir, preset="ob11/Qwen-VL-PRM-7B", batch_size=2)


def test_preset_picks_head_layout_prompt_and_pixels(paper_scorer):
    assert paper_scorer.head == "generative"
    assert paper_scorer.layout == PRMLayout(name="multi_turn", system_prompt=PAPER_PRM_SYSTEM_PROMPT)
    image_processor = paper_scorer.processing_class.image_processor
    assert (image_processor.min_pixels, image_processor.max_pixels) == (PAPER_MIN_PIXELS, PAPER_MAX_PIXELS)
    assert get_preset("ob11/Qwen-VL-PRM-3B").layout == paper_scorer.layout


def test_scores_equal_the_papers_get_reward(paper_prm_dir, paper_scorer, paper_question):
    question, text = paper_question
    candidates = [Candidate(steps=list(steps)) for steps in STEPS]
    scores = paper_scorer.score(question, candidates)
    reference = ReferenceVisualPRM(paper_prm_dir)
    images = question["images"]
    results = [[reference.get_reward(text, steps[:k], steps[k], images) for k in range(len(steps))] for steps in STEPS]
    expected = [[result["positive_prob"] for result in row] for row in results]
    # The input length the paper's reward divides by, per step, as its code measures it.
    _, lengths = paper_scorer.score_with_input_lengths(question, candidates)
    assert lengths == [[result["input_length"] for result in row] for row in results]
    assert [len(s) for s in scores] == [len(s) for s in STEPS]
    np.testing.assert_allclose(np.concatenate(scores), np.concatenate(expected), atol=ATOL, rtol=0)
    assert np.ptp(np.concatenate(scores)) > 1e-4  # not one constant (a dead model would match trivially)
    # Guard: the same model read through the library's default "steps" layout does not match the reference.
    default = PRMScorer(paper_scorer.model, paper_scorer.processing_class, layout=PRMLayout())
    assert np.abs(np.concatenate(default.score(question, candidates)) - np.concatenate(expected)).min() > 1e-6
    # The prefix really carries the image: 272 image tokens at the paper's bounds.
    prefix = paper_scorer._encode_prefix(question)
    assert int(prefix.mm_token_type_ids.sum()) == 476 * 448 // (28 * 28)


@pytest.mark.parametrize("head,num_labels", [("generative", 2), ("value", 2)])
def test_multi_turn_prefix_sharing_equals_plain_forward(paper_prm_dir, paper_question, head, num_labels, monkeypatch):
    question, _ = paper_question
    model = load_prm(paper_prm_dir, head=head, num_labels=num_labels)
    layout = PRMLayout.named("multi_turn")
    scorer = PRMScorer(model, load_processor(paper_prm_dir), batch_size=3, layout=layout)
    candidates = [Candidate(steps=list(steps)) for steps in STEPS]
    runs = []
    run_prefix = PRMScorer._run_prefix
    monkeypatch.setattr(PRMScorer, "_run_prefix", lambda self, prefix: runs.append(1) or run_prefix(self, prefix))
    batched = scorer.score(question, candidates)
    assert len(runs) == 1  # the image and question ran once for all candidates
    encoded = [scorer._suffixes(scorer._encode_prefix(question), candidates)]
    assert all(suffix.shares_prefix for suffix in encoded[0])
    np.testing.assert_allclose(
        np.concatenate(batched), np.concatenate(scorer.score_plain(question, candidates)), atol=ATOL, rtol=0
    )
    assert np.ptp(np.concatenate(batched)) > 1e-4


def test_candidate_not_sharing_the_prefix_runs_whole(paper_prm_dir, paper_question, monkeypatch):
    # A one-string tokenization that merges the question's last token with step 1's cannot use the prefix cache;
    # such a candidate is scored by a whole forward (forced here for one candidate) and mixes with batched ones.
    from trl_vlprm.modeling.encoding import EncodedSteps

    question, _ = paper_question
    model, processor = load_prm(paper_prm_dir, head="generative"), load_processor(paper_prm_dir)
    scorer = PRMScorer(model, processor, layout=PRMLayout.named("multi_turn"), batch_size=2)
    candidates = [Candidate(steps=list(steps)) for steps in STEPS]
    plain = scorer.score_plain(question, candidates)
    encode_candidate = PRMEncoder.encode_candidate

    def unshared(self, prompt, encoded_prompt, steps, verdicts=None, row="?"):
        out = encode_candidate(self, prompt, encoded_prompt, steps, verdicts, row)
        if list(steps) != STEPS[3]:
            return out
        offset = len(encoded_prompt.input_ids)
        ids = encoded_prompt.input_ids + out.input_ids
        mm_types = encoded_prompt.mm_token_type_ids + [0] * len(out.input_ids)
        return EncodedSteps(ids, [offset + end for end in out.ends], False, mm_types)

    monkeypatch.setattr(PRMEncoder, "encode_candidate", unshared)
    np.testing.assert_allclose(
        np.concatenate(scorer.score(question, candidates)), np.concatenate(plain), atol=ATOL, rtol=0
    )


def test_multi_turn_token_layout(paper_prm_dir, paper_question):
    # Step k is read at the last token of the generation prompt after its user turn; the next token of the
    # conversation there is the "+" turn the scorer assumes (or the label when training).
    question, text = paper_question
    processor = load_processor(paper_prm_dir)
    encoder = PRMEncoder(processor, PRMLayout.named("multi_turn"))
    prompt, ids, ends = encoder.encode_row(question["prompt"], question["images"], STEPS[3], [True, False, True], "p1")
    tokenizer = processor.tokenizer
    plus, minus = tokenizer.encode("+")[0], tokenizer.encode("-")[0]
    assert [ids[end + 1] for end in ends[:-1]] == [plus, minus, plus]
    assert ends[-1] == len(ids) - 1
    rendered = tokenizer.decode(ids)
    assert rendered.startswith("<|im_start|>system\n" + PAPER_PRM_SYSTEM_PROMPT + "<|im_end|>")
    first_turn = f"<|vision_end|>### Question:\n{text}\n\n### Solution Process:\n{STEPS[3][0]}<|im_end|>"
    assert first_turn in rendered
    assert rendered.endswith(f"<|im_start|>user\n{STEPS[3][3]}<|im_end|>\n<|im_start|>assistant\n")
    assert tokenizer.decode(ids[: ends[0] + 1]).endswith(f"{STEPS[3][0]}<|im_end|>\n<|im_start|>assistant\n")


def test_reward_counts_tokens_in_the_prms_layout(paper_scorer, paper_question):
    # VLPRMReward's token budget is the PRM's own input: the multi-turn conversation, not steps + separators.
    from collections import Counter

    from trl_vlprm.guidance.rewards import VLPRMReward

    question, _ = paper_question
    steps = STEPS[3]
    prefix = paper_scorer._encode_prefix(question)
    total = prefix.input_ids.shape[1] + len(paper_scorer._suffixes(prefix, [Candidate(steps=steps)])[0].input_ids)
    for max_length, overlong in ((total, 0), (total - 1, 1)):
        counts = Counter()
        reward = VLPRMReward(paper_scorer, step_separator="\n\n", max_length=max_length)
        rewards, _ = reward.score_group(question, ["\n\n".join(steps)], counts)
        assert counts["overlong"] == overlong and counts["scored"] == 1 - overlong


def test_published_checkpoint_without_preset_is_an_error(paper_prm_dir):
    # A plain VLM checkpoint (no prm_head) that names no known published PRM: no silently random value head.
    with pytest.raises(MissingPRMMetadataError, match="head='generative'.*head='value'.*preset="):
        load_prm(paper_prm_dir)
    with pytest.raises(MissingPRMMetadataError, match="ob11/Qwen-VL-PRM-7B"):
        PRMScorer.from_pretrained(paper_prm_dir)
    with pytest.raises(KeyError, match="unknown PRM preset 'ob11/none'; available: .*ob11/Qwen-VL-PRM-7B"):
        PRMScorer.from_pretrained(paper_prm_dir, preset="ob11/none")


@pytest.fixture(scope="module")
def paper_hub(paper_prm_dir, tmp_path_factory):
    """A hub cache holding the tiny paper PRM as "ob11/Qwen-VL-PRM-7B" in the published file layout (flat config,
    `model.*`/`visual.*` tensors, upstream pixel bounds), this process pointed at it, offline."""
    import shutil

    from trl_vlprm.testing import offline_hub, save_to_hub_cache, write_upstream_layout

    home = tmp_path_factory.mktemp("hf_home")
    upstream = shutil.copytree(paper_prm_dir, home / "upstream")
    write_upstream_layout(upstream)
    snapshot = save_to_hub_cache(upstream, "ob11/Qwen-VL-PRM-7B", home / "hub")
    with offline_hub(home):
        yield snapshot


def test_repo_id_alone_scores_as_the_paper(paper_hub, paper_question):
    question, text = paper_question
    scorer = PRMScorer.from_pretrained("ob11/Qwen-VL-PRM-7B")  # nothing else: head, layout, pixels from the preset
    image_processor = scorer.processing_class.image_processor
    assert (image_processor.min_pixels, image_processor.max_pixels) == (PAPER_MIN_PIXELS, PAPER_MAX_PIXELS)
    assert scorer.head == "generative" and scorer.layout.system_prompt == PAPER_PRM_SYSTEM_PROMPT
    steps = STEPS[3]
    scores = scorer.score(question, [Candidate(steps=list(steps))])[0]
    reference = ReferenceVisualPRM(paper_hub)
    expected = [reference.get_reward(text, steps[:k], steps[k], question["images"])["positive_prob"] for k in range(4)]
    np.testing.assert_allclose(scores, expected, atol=ATOL, rtol=0)
    # The upstream processor's own bounds would give the image another token count: the preset's bounds are used.
    assert json.loads((paper_hub / "preprocessor_config.json").read_text())["max_pixels"] != PAPER_MAX_PIXELS


def test_hub_cache_folder_names_its_preset(paper_prm_dir, tmp_path, paper_question):
    # A snapshot folder of the hub cache (models--owner--name/snapshots/<commit>) is matched by its id.
    import shutil

    snapshot = tmp_path / "hub" / "models--ob11--Qwen-VL-PRM-3B" / "snapshots" / ("0" * 40)
    shutil.copytree(paper_prm_dir, snapshot)
    scorer = PRMScorer.from_pretrained(snapshot)
    assert scorer.head == "generative" and scorer.layout.name == "multi_turn"
    assert scorer.processing_class.image_processor.max_pixels == PAPER_MAX_PIXELS


# ---- Qwen2.5-Math-PRM: model card's make_step_rewards ---------------------------------------------------------------

MATH_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."


def build_tiny_math_prm(path, seed=0):
    """A tiny Qwen2ForProcessRewardModel (Qwen2.5-Math-PRM's class) with "<extra_0>" as a special token."""
    tokenizer = build_tiny_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<extra_0>"]})
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_labels=2,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    Qwen2ForProcessRewardModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def reference_math_prm_rewards(path, query, steps):
    """The model card's code; its remote head class replaced by the same modules built from the saved weights."""
    tokenizer = load_processor(path)
    backbone = Qwen2Model.from_pretrained(path, dtype=torch.float32).eval()
    weights = load_file(str(path / "model.safetensors"))
    hidden = backbone.config.hidden_size
    score = torch.nn.Sequential(torch.nn.Linear(hidden, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 2))
    score.load_state_dict({k[len("score.") :]: v for k, v in weights.items() if k.startswith("score.")})
    messages = [
        {"role": "system", "content": MATH_SYSTEM},
        {"role": "user", "content": query},
        {"role": "assistant", "content": "<extra_0>".join(steps) + "<extra_0>"},
    ]
    conversation = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    input_ids = tokenizer.encode(conversation, return_tensors="pt")
    with torch.no_grad():
        logits = score(backbone(input_ids=input_ids).last_hidden_state)
    token_masks = input_ids == tokenizer.encode("<extra_0>")[0]
    probabilities = F.softmax(logits, dim=-1) * token_masks.unsqueeze(-1)
    sample = probabilities[0]
    return sample[sample != 0].view(-1, 2)[:, 1].tolist()


def test_qwen_math_prm_preset_equals_model_card(tmp_path):
    path = build_tiny_math_prm(tmp_path / "Qwen2.5-Math-PRM-7B")
    assert json.loads((path / "config.json").read_text())["architectures"] == ["Qwen2ForProcessRewardModel"]
    scorer = PRMScorer.from_pretrained(path, preset="Qwen/Qwen2.5-Math-PRM-7B", batch_size=2)
    assert isinstance(scorer.model, Qwen2ForProcessRewardModel) and scorer.head == "value"
    query = "How many sides has a hexagon? Count them."
    candidates = [Candidate(steps=list(steps)) for steps in STEPS]
    scores = scorer.score({"id": "m1", "prompt": query, "images": []}, candidates)
    expected = [reference_math_prm_rewards(path, query, steps) for steps in STEPS]
    np.testing.assert_allclose(np.concatenate(scores), np.concatenate(expected), atol=ATOL, rtol=0)
    assert np.ptp(np.concatenate(scores)) > 1e-4


# ---- training in the multi-turn layout: the checkpoint scores the layout it was trained on ------------------------


@pytest.mark.slow
def test_trainer_multi_turn_layout_is_saved_and_scored_alike(tmp_path):
    from datasets import Dataset

    from trl_vlprm import VLPRMConfig, VLPRMTrainer
    from trl_vlprm.data.schema import stepwise_features
    from trl_vlprm.modeling.heads import correct_probability, step_logits

    base = build_tiny_vlm(tmp_path / "base", arch="qwen2_vl", seed=0)
    colours = {"red": (220, 30, 30), "blue": (30, 30, 220)}
    rows = [
        {
            "id": f"c{i}",
            "prompt": "<image>What colour is the square?",
            "images": [Image.new("RGB", (112, 112), colours[truth])],
            "completions": ["Let me look.", f"The square is {claim}.", f"Answer: {claim}"],
            "labels": [True, claim == truth, claim == truth],
            "step_types": ["reasoning", "perception", "reasoning"],
            "answer": truth,
            "options": ["red", "blue"],
            "category": "colour",
        }
        for i, (truth, claim) in enumerate([("red", "red"), ("red", "blue"), ("blue", "blue"), ("blue", "red")] * 4)
    ]
    data = Dataset.from_list(rows, features=stepwise_features())
    args = VLPRMConfig(
        output_dir=str(tmp_path / "out"),
        head="generative",
        prm_layout="multi_turn",
        prm_system_prompt="Judge each step: + or -.",
        per_device_train_batch_size=8,
        num_train_epochs=2,
        learning_rate=3e-3,
        use_cpu=True,
        save_strategy="no",
        max_length=512,
        disable_tqdm=True,
    )
    trainer = VLPRMTrainer(str(base), args, train_dataset=data)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    # Labels sit where the multi-turn encoder reads scores, and the token after each (but the last) is the label.
    tokenizer = trainer.processing_class.tokenizer
    plus, minus = trainer.prm_token_ids
    for row in range(4):
        ids, labels = batch["input_ids"][row].tolist(), batch["labels"][row].tolist()
        ends = [i for i, label in enumerate(labels) if label != -100]
        assert [labels[end] for end in ends] == [float(x) for x in rows[row]["labels"]]
        assert [ids[end + 1] for end in ends[:-1]] == [plus if x else minus for x in rows[row]["labels"][:-1]]
        assert tokenizer.decode(ids[: ends[0] + 1]).endswith("Let me look.<|im_end|>\n<|im_start|>assistant\n")
    with torch.no_grad():
        start = trainer.compute_loss(trainer.model, dict(batch)).item()
    trainer.train()
    with torch.no_grad():
        end = trainer.compute_loss(trainer.model, dict(batch)).item()
    assert end < start  # it trains on these positions (a few steps: the point here is the layout, not learning)
    trainer.save_model(str(tmp_path / "prm"))

    scorer = PRMScorer.from_pretrained(tmp_path / "prm")
    assert scorer.layout == PRMLayout(name="multi_turn", step_separator="\n", system_prompt="Judge each step: + or -.")
    # Row 0 is all correct, so its "+" assistant turns are exactly what the scorer assumes: same probabilities.
    trainer.model.eval()
    with torch.no_grad():
        inputs = {k: v for k, v in batch.items() if k not in ("labels", "step_type_ids")}
        logits = trainer.model(**inputs).logits
    probabilities = correct_probability(step_logits(logits, "generative", trainer.prm_token_ids))
    labelled = batch["labels"][0] != -100
    expected = probabilities[0][labelled].tolist()
    question = {"id": "c0", "prompt": rows[0]["prompt"], "images": rows[0]["images"]}
    scores = scorer.score(question, [Candidate(steps=rows[0]["completions"])])[0]
    np.testing.assert_allclose(scores, expected, atol=ATOL, rtol=0)


# ---- Math-Shepherd: the model card's step-tag scoring --------------------------------------------------------------

SHEPHERD_CORPUS = [
    "Janet has 3 apples and buys 4 more. How many apples does she have?",
    "Step 1: 3 + 4 = 7 ки\nStep 2: The answer is 7 ки",
    "Step 1: She sells 16 - 3 - 4 = 9 eggs ки\nStep 2: 9 * 2 = 18 dollars ки\nStep 3: The answer is: 18 ки",
    "A robe takes 2 bolts of blue fiber and half that much white fiber. + - + - Step 1: 2 / 2 = 1 ки",
]


def build_llama_like_tokenizer():
    """A sentencepiece-like BPE tokenizer as Mistral's: "▁" marks spaces, BOS prepended, newlines their own token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split("\n", "isolated"), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")]
    )
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    alphabet = sorted(set("".join(SHEPHERD_CORPUS)) | {"▁"})
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], initial_alphabet=alphabet, show_progress=False
    )
    tokenizer.train_from_iterator(SHEPHERD_CORPUS * 4, trainer=trainer)
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def reference_math_shepherd(path, question, steps):
    """peiyi9979/math-shepherd-mistral-7b-prm model card code."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    good_token, bad_token, step_tag = "+", "-", "ки"
    tokenizer = AutoTokenizer.from_pretrained(path)
    candidate_tokens = tokenizer.encode(f"{good_token} {bad_token}")[1:]
    step_tag_id = tokenizer.encode(f"{step_tag}")[-1]
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    output = "\n".join(f"{step} {step_tag}" for step in steps)
    input_id = torch.tensor([tokenizer.encode(f"{question} {output}")])
    with torch.no_grad():
        logits = model(input_id).logits[:, :, candidate_tokens]
        scores = logits.softmax(dim=-1)[:, :, 0]
    return scores[input_id == step_tag_id].tolist()


def test_math_shepherd_preset_equals_model_card(tmp_path):
    from transformers import MistralConfig, MistralForCausalLM

    tokenizer = build_llama_like_tokenizer()
    assert tokenizer.convert_ids_to_tokens(tokenizer.encode("+ -")) == ["<s>", "▁+", "▁-"]
    config = MistralConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    path = tmp_path / "math-shepherd-mistral-7b-prm"
    MistralForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)

    scorer = PRMScorer.from_pretrained(path, preset="peiyi9979/math-shepherd-mistral-7b-prm", batch_size=2)
    assert scorer.head == "generative" and scorer.layout.name == "text"
    question = "Janet has 3 apples and buys 4 more. How many apples does she have?"
    solutions = [
        ["Step 1: 3 + 4 = 7", "Step 2: The answer is 7"],
        ["Step 1: She sells 16 - 3 - 4 = 9 eggs", "Step 2: 9 * 2 = 18 dollars", "Step 3: The answer is: 18"],
        ["Step 1: 2 / 2 = 1"],
    ]
    candidates = [Candidate(steps=s) for s in solutions]
    scores = scorer.score({"id": "s1", "prompt": question, "images": []}, candidates)
    prefix = scorer._encode_prefix({"id": "s1", "prompt": question})
    assert all(suffix.shares_prefix for suffix in scorer._suffixes(prefix, candidates))  # the cached-prefix path
    expected = [reference_math_shepherd(path, question, steps) for steps in solutions]
    assert [len(s) for s in expected] == [len(s) for s in solutions]  # the reference found every step tag
    np.testing.assert_allclose(np.concatenate(scores), np.concatenate(expected), atol=ATOL, rtol=0)
    assert np.ptp(np.concatenate(scores)) > 1e-4


def test_layout_round_trips_through_the_config(tmp_path):
    from transformers import PretrainedConfig

    from trl_vlprm import VLPRMConfig

    layout = PRMLayout(name="text", step_separator=" ки", prompt_suffix=" ", step_joiner="\n")
    config = PretrainedConfig()
    layout.save_to_config(config)
    config.save_pretrained(tmp_path)
    assert PRMLayout.from_config(PretrainedConfig.from_pretrained(tmp_path)) == layout
    # A checkpoint from before layouts existed records only its separator: the "steps" layout with it.
    assert PRMLayout.from_config(PretrainedConfig(prm_step_separator=" ;")) == PRMLayout(step_separator=" ;")
    assert PRMLayout.from_config(PretrainedConfig()) is None
    args = VLPRMConfig(output_dir=str(tmp_path), prm_layout="multi_turn", use_cpu=True)
    assert args.layout.system_prompt == PAPER_PRM_SYSTEM_PROMPT
    assert (
        VLPRMConfig(output_dir=str(tmp_path), prm_layout="multi_turn", prm_system_prompt="").layout.system_prompt
        is None
    )
    with pytest.raises(ValueError, match="prm_layout must be one of"):
        VLPRMConfig(output_dir=str(tmp_path), prm_layout="chat")
