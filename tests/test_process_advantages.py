"""Per-token advantages equal references written from the papers' formulas, and step ends land on the right tokens.

References: DeepSeekMath section 4.1.3 (process supervision: `r~ = (r - mean(R)) / std(R)` over every step of the
group, `A_t = sum of r~_j over the steps j ending at or after t`) written token by token; PURE's code
(CJReinforce/PURE, openrlhf: `turn_process_reward_logits_to_reward`, `process_experiences` with
`reward_baseline=token`, the reverse cumsum of `make_experience_list` and the replay buffer's `normalize`)
re-written as its padded-matrix form. The library computes both differently (per completion, suffix sums).
"""

import numpy as np
import pytest
import torch

from trl_vlprm.guidance.process_advantages import CompletionSteps, process_token_advantages, step_token_ends

EPS = 1e-4  # TRL's GRPO std epsilon, the convention both modes share


def reference_process(group, outcome, outcome_weight=0.0, scale="group", batch_steps=None):
    """DeepSeekMath 4.1.3, one token at a time. `group`: (scores, ends, length) per completion, scores None = none."""
    rewards = [s for scores, _, _ in group if scores for s in scores]
    mean = np.mean(rewards) if rewards else 0.0
    pool = batch_steps if scale == "batch" else rewards
    std = np.std(pool, ddof=1) if len(pool) > 1 else 0.0
    out = []
    for (scores, ends, length), a_out in zip(group, outcome):
        if not scores:
            out.append([a_out] * length)
            continue
        norm = [(r - mean) / (std + EPS) if scale != "none" else r - mean for r in scores]
        out.append([sum(n for n, e in zip(norm, ends) if e >= t) + outcome_weight * a_out for t in range(length)])
    return out


def reference_min_form(groups, outcome, temperature=0.1, outcome_weight=0.0, whiten=True):
    """PURE's code path: a (B, T) reward matrix with r* at step ends, token baseline, fliplr-cumsum, whitening."""
    flat = [c for group in groups for c in group]
    n = len(groups[0])
    width = max(length for _, _, length in flat)
    reward = torch.zeros(len(flat), width, dtype=torch.float64)
    mask = torch.zeros(len(flat), width, dtype=torch.bool)
    has = [bool(scores) for scores, _, _ in flat]
    outcome_rewards = torch.zeros(len(flat), dtype=torch.float64)
    for i, (scores, ends, length) in enumerate(flat):
        mask[i, :length] = True
        if scores:
            r = torch.tensor(scores, dtype=torch.float64)
            weight = torch.softmax(-r / temperature, dim=-1)  # turn_process_reward_logits_to_reward
            reward[i, ends] = weight * r
            outcome_rewards[i] = (weight * r).sum()
    lengths = mask.sum(1).double()
    for g in range(len(groups)):
        idx = [g * n + k for k in range(n) if has[g * n + k]]
        for i in idx:
            others = [k for k in idx if k != i]
            rate = outcome_rewards[others].sum() / lengths[others].sum() if others else 0.0
            scores, ends, _ = flat[i]
            tokens_per_step = np.diff([-1, *ends])
            for e, count in zip(ends, tokens_per_step):
                reward[i, e] -= rate * count
    returns = reward.fliplr().cumsum(dim=1).fliplr() * mask
    if whiten:
        rows = torch.tensor(has)
        m = mask & rows[:, None]
        mean = returns[m].sum() / m.sum()
        var = ((returns - mean) ** 2 * m).sum() / m.sum()
        returns = (returns - mean) * var.clamp(min=1e-8).rsqrt()
    out = []
    for i, (scores, _, length) in enumerate(flat):
        if scores:
            out.append((returns[i, :length] + outcome_weight * outcome[i]).tolist())
        else:
            out.append([outcome[i]] * length)
    return out


# Hand-built groups: ties, one-step completions, all-equal rewards, a completion with no step.
GROUPS = {
    "ties": [([0.9, 0.2, 0.9], [2, 5, 8], 10), ([0.2, 0.9], [3, 6], 7), ([0.9, 0.9, 0.2], [1, 4, 5], 6)],
    "one_step": [([0.8], [4], 5), ([0.1], [0], 3), ([0.5], [6], 9)],
    "all_equal": [([0.7, 0.7], [1, 3], 4), ([0.7], [2], 3), ([0.7, 0.7, 0.7], [0, 1, 2], 5)],
    "fallback": [([0.3, 0.6], [2, 4], 6), (None, None, 4), ([0.95], [3], 4)],
}
OUTCOME = [0.5, -1.2, 0.7]


def as_steps(group):
    return [CompletionSteps(length=length, scores=scores, ends=ends) for scores, ends, length in group]


@pytest.mark.parametrize("name", sorted(GROUPS))
@pytest.mark.parametrize("weight", [0.0, 0.5])
def test_process_matches_deepseekmath(name, weight):
    got = process_token_advantages(as_steps(GROUPS[name]), OUTCOME, 3, "process", outcome_weight=weight)
    want = reference_process(GROUPS[name], OUTCOME, weight)
    assert [len(row) for row in got] == [length for *_, length in GROUPS[name]]
    for row, expected in zip(got, want):
        np.testing.assert_allclose(row.numpy(), expected, atol=1e-6)
    if name == "all_equal":  # no spread, no process signal: only the outcome mix remains
        assert all(torch.allclose(row, torch.full_like(row, weight * a)) for row, a in zip(got, OUTCOME))
    if name == "fallback":  # the completion without steps takes its outcome advantage on every token
        assert got[1].tolist() == pytest.approx([OUTCOME[1]] * 4)


def test_process_two_groups_and_scale_modes():
    """Groups are normalised apart; "batch" takes the std over the whole batch, "none" does not divide."""
    groups = [GROUPS["ties"], GROUPS["fallback"]]
    steps = [c for g in groups for c in as_steps(g)]
    outcome = OUTCOME + [0.1, 0.2, -0.3]
    batch_steps = [s for g in groups for scores, _, _ in g if scores for s in scores]
    for scale in ("group", "batch", "none"):
        got = process_token_advantages(steps, outcome, 3, "process", scale_rewards=scale)
        want = [
            row
            for g, (lo, hi) in zip(groups, [(0, 3), (3, 6)])
            for row in reference_process(g, outcome[lo:hi], 0.0, scale, batch_steps)
        ]
        for row, expected in zip(got, want):
            np.testing.assert_allclose(row.numpy(), expected, atol=1e-6)


def test_group_of_one():
    """One completion: its steps are normalised among themselves; a single step has no spread (advantage 0)."""
    several = [([0.9, 0.1, 0.5], [1, 2, 4], 6)]
    got = process_token_advantages(as_steps(several), [0.0], 1, "process")
    np.testing.assert_allclose(got[0].numpy(), reference_process(several, [0.0])[0], atol=1e-6)
    assert got[0][0] == pytest.approx(0.0, abs=1e-6)  # the first token sums every normalised step: zero
    single = [([0.9], [1], 3)]
    assert process_token_advantages(as_steps(single), [0.4], 1, "process")[0].tolist() == [0.0, 0.0, 0.0]
    # min_form: no other completion, no baseline; whitening over its own tokens
    got = process_token_advantages(as_steps(several), [0.0], 1, "min_form")
    np.testing.assert_allclose(got[0].numpy(), reference_min_form([several], [0.0])[0], atol=1e-6)


@pytest.mark.parametrize("whiten", [True, False])
@pytest.mark.parametrize("weight", [0.0, 1.0])
def test_min_form_matches_pure(whiten, weight):
    groups = [GROUPS["ties"], GROUPS["one_step"], GROUPS["all_equal"], GROUPS["fallback"]]
    steps = [c for g in groups for c in as_steps(g)]
    outcome = [0.3 * k - 1.0 for k in range(len(steps))]
    got = process_token_advantages(
        steps, outcome, 3, "min_form", outcome_weight=weight, scale_rewards="group" if whiten else "none"
    )
    want = reference_min_form(groups, outcome, outcome_weight=weight, whiten=whiten)
    for row, expected in zip(got, want):
        np.testing.assert_allclose(row.numpy(), expected, atol=1e-6)


def test_min_form_weighted_sum_tends_to_the_minimum():
    """As T -> 0 the first token's (unbaselined, unwhitened) return tends to the completion's worst step."""
    group = [([0.9, 0.2, 0.7], [1, 3, 5], 6)]
    for temperature, tolerance in ((0.1, 0.02), (0.01, 1e-6)):
        (row,) = process_token_advantages(as_steps(group), [0.0], 1, "min_form", scale_rewards="none",
                                          temperature=temperature)  # fmt: skip
        assert row[0] == pytest.approx(0.2, abs=tolerance)
        weights = torch.softmax(-torch.tensor([0.9, 0.2, 0.7], dtype=torch.float64) / temperature, 0)
        assert row[4] == pytest.approx(float(weights[2]) * 0.7, abs=1e-6)  # after the worst step: its weight only


def test_bad_inputs_name_the_completion():
    bad = [CompletionSteps(length=3, scores=[0.5, 0.5], ends=[1, 5])]
    with pytest.raises(ValueError, match="completion 0: 2 step scores but step ends \\[1, 5\\]"):
        process_token_advantages(bad, [0.0], 1, "process")
    with pytest.raises(ValueError, match="do not form groups"):
        process_token_advantages(as_steps(GROUPS["ties"]), OUTCOME, 2, "process")
    with pytest.raises(ValueError, match="process_advantages must be one of"):
        process_token_advantages(as_steps(GROUPS["ties"]), OUTCOME, 3, "sum")


# ---- text -> token mapping -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(tiny_qwen2_vl_path):
    from trl_vlprm.modeling.processor import load_processor

    tokenizer = load_processor(tiny_qwen2_vl_path).tokenizer
    # Tokens a large vocabulary has and the tiny one lacks: a separator merged with the next step's start, and a
    # token that ends one step mid-token and starts the next.
    tokenizer.add_tokens([".\nSo", "ue.\nAns"])
    return tokenizer


def ids_of(tokenizer, *pieces):
    return [i for piece in pieces for i in tokenizer.encode(piece, add_special_tokens=False)]


def test_step_ends_on_a_real_tokenizer(tokenizer):
    def decode(ids):
        return tokenizer.decode(list(ids), skip_special_tokens=True)

    # A separator merged into a token (".\nSo"), a step ending mid-token ("ue.\nAns"), a two-byte character split
    # over two byte tokens ("é"), and an end-of-sequence special token after the last step.
    ids = ids_of(tokenizer, "The grid is red", ".\nSo", " the answer is bl", "ue.\nAns", "wer: café")
    ids.append(tokenizer.convert_tokens_to_ids("<|im_end|>"))
    text = decode(ids)
    assert text == "The grid is red.\nSo the answer is blue.\nAnswer: café"
    steps = ["The grid is red.", "So the answer is blue.", "Answer: café"]
    ends = step_token_ends(ids, decode, steps)
    pieces = [decode(ids[: end + 1]) for end in ends]
    # Each step's last token is the first whose prefix covers the step's last character...
    for step, end, piece in zip(steps, ends, pieces):
        start = text.index(step)
        assert piece.startswith(text[: start + len(step)]) or piece == text[: start + len(step)]
        assert not decode(ids[:end]).startswith(text[: start + len(step)])
    # ...so the merged tokens belong to the step that ends inside them, and the special token to no step.
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert tokens[ends[0]] == ".\nSo" and tokens[ends[1]] == "ue.\nAns"
    assert ends[2] == len(ids) - 2 and tokens[-1] == "<|im_end|>"
    assert tokenizer.convert_ids_to_tokens(ids[ends[2] - 1 : ends[2] + 1]) == ["Ã", "©"]  # é = two byte tokens


def test_step_ends_with_half_a_character_and_missing_steps(tokenizer):
    def decode(ids):
        return tokenizer.decode(list(ids), skip_special_tokens=True)

    ids = ids_of(tokenizer, "é\né")
    assert tokenizer.convert_ids_to_tokens(ids) == ["Ã", "©", "Ċ", "Ã", "©"]
    assert decode(ids[:1]) == "\ufffd"  # half a character covers nothing yet
    assert step_token_ends(ids, decode, ["é", "é"]) == [1, 4]
    assert step_token_ends(ids, decode, ["é", "x"]) is None  # a step not in the text: the caller falls back
    assert step_token_ends(ids, decode, ["é", "é", "é"]) is None
