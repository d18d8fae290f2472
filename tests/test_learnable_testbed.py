"""Learnable testbed tier, systematic misreadings of the scripted policy, the tiny factory's options, guard-rails."""

from __future__ import annotations

import collections
import math

import pytest

from trl_vlprm.eval.guardrails import BLIND_SHIFT, best_of_n_vs_random, image_swap_sensitivity, sweep_below_random
from trl_vlprm.guidance.policy import Candidate
from trl_vlprm.guidance.strategies import majority_vote
from trl_vlprm.testbed import (
    PUZZLE_FAMILIES,
    TIERS,
    GoldOracleScorer,
    ScriptedPolicy,
    generate_puzzles,
    gold_steps,
    read_metadata,
)
from trl_vlprm.testbed import testbed_corpus as corpus_text  # aliased: pytest would collect "test*" names
from trl_vlprm.testbed.families import parse_value
from trl_vlprm.testbed.render import PALETTE
from trl_vlprm.utils.resume import SettingsMismatchError


@pytest.fixture(scope="module")
def learnable():
    return list(generate_puzzles(120, seed=0, families="learnable", image_size=84))


def within(count: int, n: int, rate: float, sigmas: float = 4.0) -> bool:
    return abs(count / n - rate) <= sigmas * math.sqrt(rate * (1 - rate) / n)


def test_tiers_partition_the_families_and_default_to_hard():
    assert set().union(*TIERS.values()) == set(PUZZLE_FAMILIES)
    assert sum(len(names) for names in TIERS.values()) == len(PUZZLE_FAMILIES)  # no family in two tiers
    assert set(generate_puzzles(12, seed=0)["category"]) == set(TIERS["hard"])
    by_tier = generate_puzzles(4, seed=0, families="learnable")["category"]
    assert by_tier == ["shape_sides", "shape_colour"] * 2
    assert generate_puzzles(2, seed=0, families="shape_colour,clock")["category"] == ["shape_colour", "clock"]
    with pytest.raises(ValueError, match="or a tier"):
        generate_puzzles(2, seed=0, families="easy")


def test_learnable_gold_steps_are_one_sentence_of_the_image(learnable):
    for row in learnable:
        family, state = read_metadata(row)
        perception, reasoning, final = row["completions"]
        # the checked detail (the one the answer depends on) is the last word, where the PRM reads its verdict
        expected = {"shape_sides": f"The shape is a {state['colour']} {state['kind']}",
                    "shape_colour": f"The {state['kind']} is {state['colour']}"}[family.name]  # fmt: skip
        assert perception == expected
        assert parse_value(reasoning) == row["answer"]  # read back without the full stop the tier leaves out
        assert family.parse(state, perception) == family.observe(state)
        assert row["answer"] in row["options"] and final == f"Answer: {row['answer']}"
        assert row["completions"] == gold_steps(family, state)
        assert perception not in row["prompt"] and state["colour"] not in row["prompt"].split("\n")[1]
        assert row["images"][0].size == (84, 84)
    # the image is one large shape in the puzzle's colour: its most frequent non-white pixel is that colour
    for row in learnable[:20]:
        _, state = read_metadata(row)
        pixels = collections.Counter(row["images"][0].get_flattened_data())
        pixels.pop((255, 255, 255), None)
        assert pixels.most_common(1)[0][0] == PALETTE[state["colour"]]
        assert sum(pixels.values()) > 0.2 * 84 * 84  # a triangle, the smallest, covers ~27%


def test_learnable_images_give_nine_image_tokens(tiny_qwen2_vl_path, learnable):
    from trl_vlprm.modeling.encoding import image_token_counts
    from trl_vlprm.modeling.processor import load_processor

    assert image_token_counts(load_processor(tiny_qwen2_vl_path), [learnable[0]["images"][0]]) == [9]


def misread_effects(learnable) -> dict[str, list[tuple[bool, bool]]]:
    """Per family, for 20 misreads of each puzzle: (the answer changed, the perception step's last word changed)."""
    import random

    rng = random.Random(0)
    effects = {"shape_sides": [], "shape_colour": []}
    for row in learnable:
        family, state = read_metadata(row)
        observed = family.observe(state)
        for _ in range(20):
            misread = family.misread(state, observed, rng)
            assert misread != observed
            last_word_changed = (
                family.describe(state, misread).split()[-1] != family.describe(state, observed).split()[-1]
            )
            effects[family.name].append((family.solve(state, misread) != row["answer"], last_word_changed))
    return effects


def test_misreads_change_the_answer_detail_the_last_word(learnable, monkeypatch):
    from trl_vlprm.testbed import learnable as learnable_module

    # default: every misread changes the step's last word (where the verdict is read) and so the answer
    for name, flags in misread_effects(learnable).items():
        assert all(answer and last for answer, last in flags), name
    # the knob puts misreads of the other detail back: they leave the last word and the answer alone
    monkeypatch.setattr(learnable_module, "ANSWER_DETAIL_SHARE", 0.75)
    for name, flags in misread_effects(learnable).items():
        assert all(answer == last for answer, last in flags), name
        assert within(sum(answer for answer, _ in flags), len(flags), 0.75), name


def test_testbed_words_are_whole_tokens():
    from trl_vlprm.testing import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer(extra_corpus=corpus_text())
    for word in [*PALETTE, "triangle", "square", "pentagon", "hexagon", "sides", "shape", "answer"]:
        assert len(tokenizer.encode(" " + word)) == 1, word
    plain = build_tiny_tokenizer()
    assert len(plain.encode(" shape")) > 1  # the built-in corpus alone splits it: the testbed corpus matters


def test_tiny_factory_exposes_layers_heads_and_vision_width(tmp_path):
    from transformers import AutoConfig

    from trl_vlprm.testing import build_tiny_vlm, tiny_vlm_config

    path = build_tiny_vlm(tmp_path / "m", num_layers=3, num_heads=2, vision_width=48, initializer_range=0.05)
    config = AutoConfig.from_pretrained(path)
    assert config.text_config.num_hidden_layers == 3 and config.text_config.num_attention_heads == 2
    assert config.text_config.num_key_value_heads == 1 and config.vision_config.embed_dim == 48
    assert config.text_config.initializer_range == 0.05
    q25 = tiny_vlm_config("qwen2_5_vl", build_tiny_tokenizer_cached(), vision_width=48, vision_depth=3)
    assert q25.vision_config.hidden_size == 48 and q25.vision_config.fullatt_block_indexes == [2]
    with pytest.raises(ValueError, match="even width"):
        tiny_vlm_config("qwen2_vl", build_tiny_tokenizer_cached(), hidden_size=64, num_heads=3)


def build_tiny_tokenizer_cached():
    from trl_vlprm.testing import build_tiny_tokenizer

    return build_tiny_tokenizer()


# ---------------------------------------------------------------- systematic misreadings


def test_no_systematic_share_keeps_the_old_samples(learnable):
    old, new = ScriptedPolicy(0.3, 0.2, seed=4), ScriptedPolicy(0.3, 0.2, seed=4, systematic_share=0.0)
    for question in learnable[:30]:
        assert [c.steps for c in old.sample_solutions(question, 4)] == [
            c.steps for c in new.sample_solutions(question, 4)
        ]


def test_systematic_share_biases_that_share_of_questions(learnable):
    policy = ScriptedPolicy(0.0, 0.0, seed=0, systematic_share=0.4, systematic_rate=1.0)
    biased = [q for q in learnable if policy.systematic_misreading(q) is not None]
    assert within(len(biased), len(learnable), 0.4)
    # the same questions are biased the same way whatever the sampling seed
    other = ScriptedPolicy(0.0, 0.0, seed=9, systematic_share=0.4, systematic_rate=1.0)
    assert [other.systematic_misreading(q) for q in learnable] == [policy.systematic_misreading(q) for q in learnable]
    for question in learnable:
        solutions = policy.sample_solutions(question, 5)
        texts = {c.steps[0] for c in solutions}
        assert len(texts) == 1  # rate 1.0: every sample repeats the question's one reading
        assert all(c.gold_correct[0] == (question not in biased) for c in solutions)


def test_systematic_errors_defeat_majority_vote_but_not_the_oracle(learnable):
    policy = ScriptedPolicy(0.1, 0.1, seed=1, systematic_share=0.5, systematic_rate=0.7)
    oracle = GoldOracleScorer()
    majority_right = oracle_right = 0
    biased_wrong_majority = 0
    for question in learnable:
        candidates = [Candidate(steps=[], gold_correct=[]).extend(c) for c in policy.sample_solutions(question, 8)]
        chosen = majority_vote(candidates)
        majority_right += candidates[chosen].answer == question["answer"]
        scores = oracle.score(question, candidates)
        best = max(range(8), key=lambda i: min(scores[i]))
        oracle_right += candidates[best].answer == question["answer"]
        bias = policy.systematic_misreading(question)
        if bias is not None:
            family, state = read_metadata(question)
            biased_wrong_majority += family.solve(state, bias) != question["answer"] and (
                candidates[chosen].answer != question["answer"]
            )
    n = len(learnable)
    # half the questions biased, 3/4 of the biases change the answer, 70% of their samples repeat it
    assert biased_wrong_majority >= 0.2 * n
    assert majority_right <= 0.8 * n < oracle_right


# ---------------------------------------------------------------- guard-rails


class ColourReader:
    """A step scorer that reads the image: P(correct) of a perception step is 1 when it names the shape's colour."""

    def score(self, question, candidates):
        image = question["images"][0]
        pixels = collections.Counter(image.get_flattened_data())
        pixels.pop((255, 255, 255), None)
        colour = next(name for name, rgb in PALETTE.items() if rgb == pixels.most_common(1)[0][0])
        return [[1.0 if colour in c.steps[0] else 0.0] + [0.5] * (len(c.steps) - 1) for c in candidates]


def supervision_rows(learnable, n: int = 4):
    policy = ScriptedPolicy(0.4, 0.2, seed=3)
    rows = []
    for question in learnable[:40]:
        for k, c in enumerate(policy.sample_solutions(question, n)):
            rows.append({**question, "id": f"{question['id']}#{k}", "completions": c.steps,
                         "labels": c.gold_correct, "step_types": c.step_types})  # fmt: skip
    return rows


def test_image_swap_sensitivity_separates_a_reader_from_a_blind_scorer(learnable):
    rows = supervision_rows(learnable)
    reader = image_swap_sensitivity(ColourReader(), rows)
    assert reader.num_steps["perception"] == len(rows) and reader.num_steps["all"] == 3 * len(rows)
    assert reader.mean_abs_shift["reasoning"] == 0.0
    # consecutive puzzles have the same colour 1/6 of the time: the shift is the share of colour changes
    assert reader.mean_abs_shift["perception"] > 0.5 and not reader.blind
    blind = image_swap_sensitivity(LabelScorer(rows), rows)  # reads the text only
    assert blind.mean_abs_shift["all"] == 0.0 and blind.blind
    assert any("ignores its image" in line for line in blind.lines())
    assert BLIND_SHIFT > 0


class LabelScorer:
    """Scores each step with its label, or the opposite (`invert`): the best and the worst informative PRMs.

    Reads the text and the question id only, never the image.
    """

    def __init__(self, rows, invert: bool = False):
        self.labels = {(r["id"].split("#")[0], tuple(r["completions"])): r["labels"] for r in rows}
        self.invert = invert

    def score(self, question, candidates):
        key = question["id"].split("#")[0]
        return [[float(bool(x) != self.invert) for x in self.labels[key, tuple(c.steps)]] for c in candidates]


def test_best_of_n_vs_random_is_exact_and_warns_below_random(learnable):
    rows = supervision_rows(learnable)
    groups = collections.defaultdict(list)
    for row in rows:
        groups[row["id"].split("#")[0]].append(all(row["labels"]))
    expected_random = sum(sum(g) / len(g) for g in groups.values()) / len(groups)
    expected_oracle = sum(any(g) for g in groups.values()) / len(groups)
    good = best_of_n_vs_random(LabelScorer(rows), rows)
    assert good.num_questions == len(groups) == 40
    assert good.random_accuracy == pytest.approx(expected_random)
    assert good.prm_accuracy == good.oracle_accuracy == pytest.approx(expected_oracle)
    assert good.margin_sigma > 2 and not good.below_random
    bad = best_of_n_vs_random(LabelScorer(rows, invert=True), rows)
    assert bad.prm_accuracy < bad.random_accuracy and bad.below_random
    assert any("below a random scorer" in line for line in bad.lines())


def test_sweep_below_random_names_the_cells():
    def row(scorer, n, accuracy):
        return {"benchmark": "b", "policy": "p", "scorer": scorer, "selection": "best_of_n:min", "n": n,
                "accuracy": accuracy}  # fmt: skip

    rows = [row("vlprm", 1, 0.5), row("random", 1, 0.6), row("vlprm", 4, 0.4), row("random", 4, 0.6),
            row("vlprm", 8, 0.7), row("random", 8, 0.6)]  # fmt: skip
    warnings = sweep_below_random(rows, "vlprm")
    assert len(warnings) == 1 and "N=4" in warnings[0]


def test_background_training_trains_in_a_child_and_reports_its_failure(tmp_path):
    """`train_in_background` (the demo's second PRM): the child's PRM is the one `train` then reuses, its output goes
    to the log, and a child that fails raises in the parent with its traceback and the log's path."""
    from trl_vlprm.cpu_recipe import CPURecipe

    recipe = CPURecipe(num_puzzles=6, max_steps=2)
    log = tmp_path / "train.log"
    seconds = recipe.train_in_background(tmp_path / "run", log_path=log, report_to="none").wait()
    assert seconds > 0 and (tmp_path / "run" / "vlprm" / "model.safetensors").exists()
    assert "2/2" in log.read_text()  # the child's progress bar went to its log
    assert recipe.train(tmp_path / "run", report_to="none").train_seconds == 0  # reused, not trained again
    with pytest.raises(SettingsMismatchError, match="max_steps: 2 -> 3"):  # refused before any child starts
        CPURecipe(num_puzzles=6, max_steps=3).train_in_background(tmp_path / "run", log, report_to="none")
    # a child that fails raises in the parent at wait(), with its traceback and the log's path
    failing = CPURecipe(num_puzzles=6, max_steps=2, families="no_such_family")
    failing = failing.train_in_background(tmp_path / "other", log, report_to="none")
    expected = r"(?s)background PRM training failed \(log: .*train.log\).*no_such_family"
    with pytest.raises(RuntimeError, match=expected):
        failing.wait()
    # a child killed before it could report (e.g. by the OOM killer) is not waited for forever
    killed = CPURecipe(num_puzzles=6, max_steps=10_000).train_in_background(tmp_path / "killed", log)
    killed.process.kill()
    with pytest.raises(RuntimeError, match="exited with code -9"):
        killed.wait(poll_seconds=0.5)


def test_check_command_prints_both_guard_rails(tmp_path, capsys):
    from trl_vlprm import cli
    from trl_vlprm.cpu_recipe import CPURecipe
    from trl_vlprm.eval.guardrails import best_of_n_vs_random
    from trl_vlprm.guidance.scorer import PRMScorer
    from trl_vlprm.testbed import sample_supervision

    # a PRM saved by the recipe (two steps: the check needs a trained-PRM folder, not a good PRM)
    prm = CPURecipe(num_puzzles=6, max_steps=2).train(tmp_path, report_to="none").path
    assert (prm / "model.safetensors").exists() and not prm.with_name("vlprm.partial").exists()
    # a finished run is reused with the same settings and refused with others (never a stale model silently)
    assert CPURecipe(num_puzzles=6, max_steps=2).train(tmp_path, report_to="none").train_seconds == 0
    with pytest.raises(SettingsMismatchError, match="max_steps: 2 -> 3"):
        CPURecipe(num_puzzles=6, max_steps=3).train(tmp_path, report_to="none")
    args = ["check", "--prm", str(prm), "--n", "6", "--solutions", "4", "--seed", "3"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "mean |delta P(correct)|" in out and "perception" in out and "random pick" in out
    # the printed selection figures are those of the library functions on the same solutions
    rows = list(sample_supervision(6, 4, 0.3, 0.3, seed=3, families="learnable", image_size=84))
    report = best_of_n_vs_random(PRMScorer.from_pretrained(prm), rows)
    assert report.lines()[0] in out
    strict = cli.main([*args, "--strict"])
    assert strict == (1 if "WARNING" in out else 0)
