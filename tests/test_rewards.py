"""VLPRMReward and outcome_reward on fixed completions: rewards equal the PRM's aggregated step scores, one scorer
call per prompt group, defined rewards (and log counts) for the inputs a PRM cannot score."""

import io
import math

import numpy as np
import pytest
from scoring_inputs import random_image

from trl_vlprm.guidance.policy import Candidate
from trl_vlprm.guidance.reward_inputs import completion_text
from trl_vlprm.guidance.rewards import VLPRMReward, grpo_dataset, outcome_reward
from trl_vlprm.guidance.scorer import PRMScorer
from trl_vlprm.modeling.heads import load_prm
from trl_vlprm.modeling.processor import load_processor
from trl_vlprm.testbed.generator import generate_puzzles
from trl_vlprm.testing import build_tiny_vlm

# The built-in aggregations that read step scores alone (what the GRPO reward, which has no input lengths, accepts).
STEP_AGGREGATIONS = ("last", "min", "mean", "prod")

SEPARATOR = " ;"  # the tiny PRM's "trained" separator: not the "\n" default, so a reward ignoring it is caught


def save_tiny_prm(folder, base_seed=1, separator=SEPARATOR):
    """A tiny Qwen2-VL value-head PRM saved like a trained one (its config records head and separator)."""
    base = build_tiny_vlm(folder / "base", arch="qwen2_vl", seed=base_seed)
    model = load_prm(base, head="value", num_labels=2)
    model.config.prm_step_separator = separator
    model.save_pretrained(folder / "prm")
    load_processor(base).save_pretrained(folder / "prm")
    return folder / "prm"


class CountingScorer:
    """Wraps a scorer and counts its calls (and candidates per call)."""

    def __init__(self, scorer):
        self.inner, self.calls = scorer, []
        self.step_separator = scorer.step_separator
        self.processing_class = scorer.processing_class

    def score(self, question, candidates):
        self.calls.append(len(candidates))
        return self.inner.score(question, candidates)


@pytest.fixture(scope="module")
def prm_path(tmp_path_factory):
    return save_tiny_prm(tmp_path_factory.mktemp("reward_prm"))


@pytest.fixture(scope="module")
def scorer(prm_path):
    return PRMScorer.from_pretrained(prm_path, batch_size=2)


def chat(text):
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]


def assistant(text):
    return [{"role": "assistant", "content": text}]


QUESTIONS = [
    ("Which number is missing?", random_image(100, 90, 0)),
    ("What is the colour of the missing circle?", random_image(80, 112, 1)),
]
TEXTS = [
    f"There are 3 circles{SEPARATOR}So 3 + 4 = 7{SEPARATOR}Answer: 7",
    "Count.",
    f"The clock shows 3 o'clock{SEPARATOR}add 4 hours{SEPARATOR}Therefore the answer is B",
    f"The polygon has 6 sides{SEPARATOR}A hexagon{SEPARATOR}6 - 1 = 5{SEPARATOR}Answer: (C)",
]


def interleaved_batch():
    """Rows of two prompts, interleaved (as two processes' shards could be), 4 completions each."""
    prompts, images, completions, owners = [], [], [], []
    for j, text in enumerate(TEXTS):
        for q, (question, image) in enumerate(QUESTIONS):
            prompts.append(chat(question))
            images.append([image.copy()])  # equal pixels, distinct objects: as TRL decodes every repeat anew
            completions.append(assistant(text if q == 0 else TEXTS[(j + 1) % len(TEXTS)]))
            owners.append(q)
    return prompts, images, completions, owners


REDUCE = {"last": lambda s: s[-1], "min": min, "mean": lambda s: sum(s) / len(s), "prod": math.prod}


def plain_step_scores(scorer, prompts, images, completions):
    """Each completion alone through the PRM's plain full forward (no prefix sharing), split at the PRM separator."""
    out = []
    for prompt, row_images, completion in zip(prompts, images, completions):
        steps = [s.strip() for s in completion_text(completion).split(SEPARATOR) if s.strip()]
        (scores,) = scorer.score_plain({"prompt": prompt, "images": row_images}, [Candidate(steps=steps)])
        assert len(scores) == len(steps)
        out.append(scores)
    return out


def reference_rewards(scorer, prompts, images, completions, how):
    return [REDUCE[how](scores) for scores in plain_step_scores(scorer, prompts, images, completions)]


@pytest.fixture(scope="module")
def interleaved_reference(scorer):
    prompts, images, completions, _ = interleaved_batch()
    return plain_step_scores(scorer, prompts, images, completions)


@pytest.mark.parametrize("how", STEP_AGGREGATIONS)
def test_reward_equals_the_aggregated_step_scores_one_scorer_call_per_group(scorer, interleaved_reference, how):
    prompts, images, completions, owners = interleaved_batch()
    counting = CountingScorer(scorer)
    reward = VLPRMReward(counting, aggregation=how)
    metrics = {}
    rewards = reward(prompts, completions, images=images, log_metric=metrics.__setitem__)
    expected = [REDUCE[how](scores) for scores in interleaved_reference]
    np.testing.assert_allclose(rewards, expected, atol=1e-5, rtol=0)
    assert np.ptp(rewards) > 1e-4  # a dead PRM would make the equality above vacuous
    # Two prompts, each with its 4 completions in one call (not 8 calls, not one mixed call).
    assert counting.calls == [4, 4]
    assert reward.stats.groups == 2 and reward.stats.scorer_calls == 2 and reward.stats.scored == 8
    assert metrics[f"vlprm_{how}/scorer_calls"] == 2.0
    assert metrics[f"vlprm_{how}/no_steps"] == 0.0
    assert reward.__name__ == f"vlprm_{how}"


def test_aggregations_differ_as_defined(scorer):
    prompts, images, completions, _ = interleaved_batch()
    by_how = {
        how: VLPRMReward(scorer, aggregation=how)(prompts, completions, images=images) for how in STEP_AGGREGATIONS
    }
    multi_step = [i for i, c in enumerate(completions) if len(c[0]["content"].split(SEPARATOR)) > 1]
    for i in multi_step:  # probabilities in (0, 1): prod < min <= mean, and min <= last
        assert by_how["prod"][i] < by_how["min"][i] <= by_how["mean"][i]
        assert by_how["min"][i] <= by_how["last"][i]
    one_step = [i for i in range(len(completions)) if i not in multi_step]
    assert one_step and all(len({by_how[h][i] for h in STEP_AGGREGATIONS}) == 1 for i in one_step)


def test_steps_are_split_at_the_prms_trained_separator(scorer):
    reward = VLPRMReward(scorer)
    assert reward.step_separator == SEPARATOR == scorer.step_separator
    assert reward.split_steps(f" a{SEPARATOR}b{SEPARATOR}{SEPARATOR} ") == ["a", "b"]
    assert VLPRMReward(scorer, step_separator="\n").split_steps(f"a{SEPARATOR}b\nc") == [f"a{SEPARATOR}b", "c"]
    custom = VLPRMReward(scorer, split_steps=lambda text: text.split("|"))
    assert custom.split_steps("a| b||c ") == ["a", "b", "c"]  # a custom splitter's blank pieces are dropped too
    # Splitting elsewhere changes the reward: the PRM sees other steps.
    prompt, image = QUESTIONS[0]
    batch = ([chat(prompt)], [assistant(TEXTS[0])])
    assert VLPRMReward(scorer, step_separator="\n")(*batch, images=[[image]]) != reward(*batch, images=[[image]])


def test_text_and_plain_string_completions(scorer):
    assert completion_text("plain") == "plain"
    assert (
        completion_text([{"role": "assistant", "content": [{"type": "text", "text": "a"}, {"type": "image"}]}]) == "a"
    )
    prompt, image = QUESTIONS[0]
    reward = VLPRMReward(scorer)
    as_string = reward([chat(prompt)], [TEXTS[0]], images=[[image]])
    as_chat = reward([chat(prompt)], [assistant(TEXTS[0])], images=[[image]])
    assert as_string == as_chat
    # Without an `images` column the images are read from the prompt's filled image parts (TRL fills them).
    filled = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": prompt}]}]
    assert reward([filled], [TEXTS[0]]) == as_string
    assert reward([chat(prompt)], [TEXTS[0]], image=[image]) == as_string  # TRL's single-image column
    with pytest.raises(ValueError, match="prompt_column 'prm_prompt' is not a dataset column"):
        VLPRMReward(scorer, prompt_column="prm_prompt")([chat(prompt)], [TEXTS[0]], images=[[image]], answer=["B"])


def unreadable_png():
    buffer = io.BytesIO()
    random_image(20, 20, 3).save(buffer, format="PNG")
    return {"bytes": buffer.getvalue()[:40], "path": None}  # truncated: PIL cannot decode it


def test_degenerate_inputs_get_defined_rewards_and_counts(scorer, caplog):
    good_prompt, good_image = QUESTIONS[0]
    bad_prompt = QUESTIONS[1][0]
    long_text = SEPARATOR.join(["There are 3 circles and 4 triangles and 5 squares"] * 6)
    prompts = [chat(good_prompt)] * 5 + [chat(bad_prompt)] * 2 + [chat(good_prompt + "?")]
    images = [[good_image]] * 5 + [[unreadable_png()]] * 2 + [[good_image, good_image]]  # last: 2 images, 1 slot
    texts = ["", "  \n ", long_text, TEXTS[0], f"a{SEPARATOR}b{SEPARATOR}c{SEPARATOR}d", TEXTS[1], TEXTS[2], "x"]
    counting = CountingScorer(scorer)
    prompt_tokens = 4 + len(counting.processing_class.tokenizer(good_prompt)["input_ids"])  # a lower bound
    reward = VLPRMReward(counting, max_length=120, max_steps=3, no_steps_reward=-1.0, overlong_reward=-0.5)
    metrics = {}
    rewards = reward(prompts, [assistant(t) for t in texts], images=images, log_metric=metrics.__setitem__)

    assert rewards[:2] == [-1.0, -1.0]  # no step
    assert rewards[2] == -0.5  # 6 steps: over max_steps and over max_length
    assert rewards[4] == -0.5  # 4 short steps: over max_steps only
    assert rewards[5:7] == [None, None]  # unreadable image: TRL's "not applicable"
    assert rewards[7] is None  # two images for one image slot
    expected = reference_rewards(scorer, prompts[3:4], images[3:4], [assistant(texts[3])], "min")
    assert rewards[3] == pytest.approx(expected[0], abs=1e-5)
    assert counting.calls == [1]  # only the good completion reached the PRM
    assert metrics == {
        "vlprm_min/no_steps": 2.0,
        "vlprm_min/overlong": 2.0,
        "vlprm_min/invalid_input": 3.0,
        "vlprm_min/invalid_score": 0.0,
        "vlprm_min/scorer_calls": 1.0,
    }
    assert "images[0]" in caplog.text and "cannot be decoded" in caplog.text  # the log names the field
    assert prompt_tokens < 120


def test_max_length_counts_prm_tokens(scorer):
    prompt, image = QUESTIONS[0]
    question = {"prompt": chat(prompt), "images": [image]}
    tokenizer = scorer.tokenizer
    from trl_vlprm.modeling.encoding import encode_prompt, encode_steps

    prompt_tokens = len(encode_prompt(scorer.processing_class, question["prompt"], question["images"]).input_ids)
    steps = TEXTS[0].split(SEPARATOR)
    total = prompt_tokens + sum(len(ids) for ids in encode_steps(tokenizer, steps, SEPARATOR))
    at_limit = VLPRMReward(scorer, max_length=total)([chat(prompt)], [TEXTS[0]], images=[[image]])
    one_less = VLPRMReward(scorer, max_length=total - 1, overlong_reward=-2.0)
    assert at_limit[0] > 0 and one_less([chat(prompt)], [TEXTS[0]], images=[[image]]) == [-2.0]
    assert one_less.stats.overlong == 1


def test_max_length_needs_a_processing_class():
    class Bare:
        def score(self, question, candidates):
            return [[0.5] * len(c.steps) for c in candidates]

    with pytest.raises(ValueError, match="processing_class"):
        VLPRMReward(Bare(), max_length=10)
    with pytest.raises(ValueError, match="unknown aggregation"):
        VLPRMReward(Bare(), aggregation="max")
    # Without a processing class, images are still checked before the scorer sees them.
    bare = VLPRMReward(Bare(), aggregation="mean")
    rewards = bare([chat("q"), chat("q2")], ["a\nb", "c"], images=[[QUESTIONS[0][1]], [unreadable_png()]])
    assert rewards == [0.5, None]


def test_from_pretrained_reads_head_and_separator(prm_path):
    reward = VLPRMReward.from_pretrained(prm_path, aggregation="prod", batch_size=3)
    assert reward.scorer.head == "value" and reward.step_separator == SEPARATOR and reward.scorer.batch_size == 3
    assert reward.__name__ == "vlprm_prod"


def test_outcome_reward():
    completions = [
        assistant("The circles read 4, 1, 6.\nAnswer: (B)"),
        assistant("Answer: (C)"),
        assistant("So x = 12"),
        assistant("I think 13"),
        "The answer is blue",
        assistant("anything"),
    ]
    answers = ["B", "B", "12", "12", "blue", None]
    options = [["red", "green", "blue"], ["red", "green", "blue"], [], [], [], []]
    assert outcome_reward(completions, answer=answers, options=options) == [1.0, 0.0, 1.0, 0.0, 1.0, None]
    # An option's text is a gold answer too.
    assert outcome_reward([assistant("Answer: (C)")], answer=["blue"], options=[["red", "green", "blue"]]) == [1.0]


def test_grpo_dataset_keeps_images_in_place_and_the_prm_prompt():
    records = generate_puzzles(2, seed=0, image_size=64)
    dataset = grpo_dataset(records, system_prompt="Think step by step, one step a line.")
    assert set(dataset.column_names) == {"id", "prompt", "images", "answer", "options", "category", "prm_prompt"}
    row = dataset[0]
    assert row["prm_prompt"] == records[0]["prompt"] and row["prm_prompt"].startswith("<image>")
    system, user = row["prompt"]
    assert system["role"] == "system" and system["content"][0]["text"].startswith("Think step")
    assert user["role"] == "user" and [p["type"] for p in user["content"]] == ["image", "text"]
    assert "<image>" not in user["content"][1]["text"]
    assert row["answer"] == records[0]["answer"] and len(row["images"]) == 1
