"""`warm_up_vision_tower`: a tiny random tower learns which colours a rendered image holds, and only the tower.

Its promises: held-out tag accuracy well above the majority class after a few seconds; the language model, the
tokenizer and the processor untouched; a finished warm-up reused with the same settings and refused with others;
bad records named. The family it is measured on, `pv_circle_claim`, promises that its gold claim is drawn in the image
and its misread is not, with every colour name as likely drawn as claimed wrongly.
"""

from __future__ import annotations

import collections
import json
import random

import pytest
from safetensors.torch import load_file

from trl_vlprm.cpu_recipe import CPURecipe
from trl_vlprm.testbed import PUZZLE_FAMILIES, TIERS, generate_puzzles, gold_steps, image_tags, read_metadata
from trl_vlprm.testbed.lookalike import ALL_COLOURS, DRAW_PALETTE, hue
from trl_vlprm.testing import build_tiny_vlm, warm_up_vision_tower
from trl_vlprm.testing.vision_warmup import WARMUP_FILE
from trl_vlprm.utils.resume import SettingsMismatchError


@pytest.fixture(scope="module")
def claims():
    return list(generate_puzzles(240, seed=3, families="pv_circle_claim", image_size=224))


def test_image_tags_are_the_hues_drawn_and_the_claim_family_needs_the_image(claims):
    family = PUZZLE_FAMILIES.get("pv_circle_claim")
    assert TIERS["image_check"] == (family.name,)
    drawn, claimed, misread = collections.Counter(), collections.Counter(), collections.Counter()
    rng = random.Random(0)
    for row in claims:
        fam, state = read_metadata(row)
        tags = image_tags(row)
        assert tags == {hue(c) for c in state["colours"] if c != "?"} and len(tags) == 3
        pixels = {rgb for _, rgb in row["images"][0].convert("RGB").getcolors(maxcolors=1 << 16)}
        assert all(DRAW_PALETTE[tag] in pixels for tag in tags)  # each tag's fill is really drawn
        gold = gold_steps(fam, state)[0]
        assert gold == f"One of the circles is {state['claimed']}" and state["claimed"] in tags
        assert fam.parse(state, gold) == [state["claimed"]]
        wrong = fam.misread(state, fam.observe(state), rng)
        assert wrong[0] not in tags and fam.parse(state, fam.describe(state, wrong)) == wrong
        drawn.update(tags)
        claimed[state["claimed"]] += 1
        misread[wrong[0]] += 1
    # Every one of the eleven names is drawn, claimed and misread, each about as often claimed rightly as wrongly
    # (at half misreads): no name gives a misread away by itself. Measured: 0.34-0.68 over the eleven.
    assert set(drawn) == set(claimed) == set(misread) == set(ALL_COLOURS)
    wrong_share = {c: misread[c] / (misread[c] + claimed[c]) for c in ALL_COLOURS}
    assert all(0.25 <= share <= 0.75 for share in wrong_share.values()), wrong_share
    lookalike = generate_puzzles(16, seed=0, families="lookalike", image_size=224)
    for row in lookalike:
        fam, state = read_metadata(row)
        names = [*state["colours"], *state.get("overlaps", ())]
        assert image_tags(row) == {hue(c) for c in names if c != "?"}
    with pytest.raises(NotImplementedError, match="color_grid"):
        image_tags(generate_puzzles(1, seed=0, families="color_grid")[0])


def test_warm_up_teaches_only_the_tower_and_reuses_or_refuses(tmp_path, claims):
    source = CPURecipe(families="pv_circle_claim", image_size=224).build_model(tmp_path / "raw")
    images, tags = [row["images"][0] for row in claims], [image_tags(row) for row in claims]
    warm = warm_up_vision_tower(source, tmp_path / "warm", images, tags, steps=150, seed=0)

    assert warm.vocabulary == sorted(ALL_COLOURS) and warm.held_out_images == 48
    # Measured: 0.87 against 0.73 for the majority class (the random tower's probe starts below it).
    assert warm.held_out_accuracy >= warm.majority_accuracy + 0.08, warm
    before, after = load_file(source / "model.safetensors"), load_file(tmp_path / "warm" / "model.safetensors")
    assert before.keys() == after.keys()
    changed = {name for name in before if not before[name].equal(after[name])}
    assert changed and all(".visual." in f".{name}" for name in changed), sorted(changed)[:5]
    for name in ("tokenizer.json", "processor_config.json", "chat_template.jinja"):
        if (source / name).exists():
            assert (source / name).read_bytes() == (tmp_path / "warm" / name).read_bytes()
    assert json.loads((tmp_path / "warm" / WARMUP_FILE).read_text())["held_out_accuracy"] == warm.held_out_accuracy
    assert not (tmp_path / "warm.partial").exists()

    assert warm_up_vision_tower(source, tmp_path / "warm", images, tags, steps=150, seed=0) == warm  # reused
    with pytest.raises(SettingsMismatchError, match="steps: 150 -> 151"):
        warm_up_vision_tower(source, tmp_path / "warm", images, tags, steps=151, seed=0)
    bad = [tags[0], {"teal"}, *tags[2:]]
    with pytest.raises(ValueError, match=r"record 1 has tags \['teal'\] outside the vocabulary"):
        warm_up_vision_tower(source, tmp_path / "other", images, bad, vocabulary=ALL_COLOURS, steps=1)
    with pytest.raises(ValueError, match="240 images but 239 tag sets"):
        warm_up_vision_tower(source, tmp_path / "other", images, tags[:-1], steps=1)
    assert not (tmp_path / "other").exists()
    (tmp_path / "occupied").mkdir()
    with pytest.raises(FileExistsError, match="occupied exists but holds no vision_warmup.json"):
        warm_up_vision_tower(source, tmp_path / "occupied", images, tags, steps=1)


@pytest.mark.parametrize("arch", ["idefics3", "internvl"])
def test_warm_up_trains_the_tower_and_projector_of_other_families(tmp_path, claims, arch):
    """SmolVLM's tower (one image, several patches) and InternVL's (an image tiled in several crops) through the
    family adapter: a few steps change the vision tower and its projector, nothing else."""
    from trl_vlprm.modeling.families import get_family

    source = build_tiny_vlm(tmp_path / arch, arch=arch)
    images, tags = [row["images"][0] for row in claims[:40]], [image_tags(row) for row in claims[:40]]
    warm = warm_up_vision_tower(source, tmp_path / "warm", images, tags, steps=3, batch_size=8)
    before, after = load_file(source / "model.safetensors"), load_file(warm.path / "model.safetensors")
    changed = {name for name in before if not before[name].equal(after[name])}
    family = get_family(json.loads((source / "config.json").read_text())["model_type"])
    in_tower = {name for name in before if family.is_vision_tower_parameter(name)}
    assert changed & in_tower and changed <= in_tower | {
        name for name in before if any(part in family.projector_modules for part in name.split("."))
    }


class PixelReader:
    """Scores a claim 1.0 when the claimed colour's fill is among the pixels of the image it is shown: reads the
    image and nothing else (white, the background, and black, the outlines' ink, are not told apart this way)."""

    def score(self, question, candidates):
        # A fill counts when it covers 200+ pixels (a circle covers ~1,800): anti-aliased edges make stray shades.
        counts = {rgb: n for n, rgb in question["images"][0].convert("RGB").getcolors(maxcolors=1 << 16)}
        return [[float(counts.get(DRAW_PALETTE[c.steps[0].split()[-1]], 0) >= 200)] for c in candidates]


class CaptionReader:
    """Scores a claim 1.0 when it is true of the puzzle the row was written for (its hidden state), whatever image
    it is shown: reads the caption against knowledge the image swap cannot touch."""

    def score(self, question, candidates):
        family, state = read_metadata(question)
        return [[float(c.steps[0].split()[-1] in family.image_tags(state))] for c in candidates]


def test_image_reading_tells_a_pixel_reader_from_a_caption_reader():
    from trl_vlprm.eval.guardrails import image_reading
    from trl_vlprm.testbed import claim_holds

    recipe = CPURecipe(families="pv_circle_claim", image_size=224)
    rows = list(recipe.supervision(40, seed=7, perception_error_rate=0.5, reasoning_error_rate=0.0))
    rows = [row for row in rows if row["completions"][0].split()[-1] not in ("white", "black")]
    pixels = image_reading(PixelReader(), rows, claim_holds)
    caption = image_reading(CaptionReader(), rows, claim_holds)
    assert pixels.num_rows == caption.num_rows == len(rows) > 100
    assert pixels.own == caption.own == 1.0
    # Another puzzle's image: the pixel reader follows it exactly and loses the labels; the caption reader keeps them.
    assert pixels.swapped_vs_shown == 1.0 and abs(pixels.swapped_vs_labels - 0.5) < 0.15, pixels
    assert caption.swapped_vs_labels == 1.0 and caption.swapped_vs_shown < 0.75, caption
    with pytest.raises(ValueError, match="at least 2 questions"):
        image_reading(PixelReader(), rows[:1], claim_holds)
    unlabelled = [{**row, "labels": []} for row in rows[:8]]
    with pytest.raises(ValueError, match="no step labels"):
        image_reading(PixelReader(), unlabelled, claim_holds)
    with pytest.raises(ValueError, match="no claim of pv_circle_claim or pv_circle_claim_tail"):
        claim_holds({**rows[0], "completions": ["The shape is red"]}, rows[1])
