"""Warm up a tiny random vision tower on rendered images, so a PRM trained on top of it can read them.

A tiny VL-PRM built here starts from a random vision tower; a real one starts from a pretrained tower that already
tells colours and shapes apart. Trained from random weights, the PRM's step labels are too weak a signal for the
tower to learn even which colours a multi-part image holds: on PuzzleVQA-like images (the lookalike tier) a random
tower's merged tokens give a linear probe little over the majority class, and a PRM trained on a one-colour claim
about a circle grid (`pv_circle_claim`) barely left chance (held-out AUC 0.58; docs/testbed.md, "Third round").
`warm_up_vision_tower` stands in for the pretraining: it trains the tower alone, for a few hundred steps (about 15 s
on one CPU thread), to predict which tags (colour names, for the testbed) an image holds from the *mean* of its
output tokens. A mean-pooled readout makes the tags readable by the language model's easiest attention pattern,
uniform over the image tokens; trained afterwards with the tower frozen, the same PRM checks the claim against the
image (held-out AUC 0.995-1.000 over 3 seeds, and it follows another puzzle's image when shown one).

The tags come from the renderer, never from a benchmark's images: `trl_vlprm.testbed.image_tags` gives each
testbed puzzle's drawn colours.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

WARMUP_FILE = "vision_warmup.json"


@dataclass
class VisionWarmup:
    """Outcome of `warm_up_vision_tower`: the warmed model folder and its held-out tag accuracy."""

    path: Path
    vocabulary: list[str]
    steps: int
    held_out_images: int
    held_out_accuracy: float  # share of (image, tag) pairs the mean-pooled probe gets right after the warm-up
    majority_accuracy: float  # the same share for a probe that always answers each tag's majority value
    seconds: float


def warm_up_vision_tower(
    model_path: str | Path,
    output_dir: str | Path,
    images: Sequence[Any],
    tags: Sequence[Collection[str]],
    *,
    vocabulary: Sequence[str] | None = None,
    steps: int = 800,
    batch_size: int = 16,
    learning_rate: float = 3e-3,
    held_out_share: float = 0.2,
    seed: int = 0,
) -> VisionWarmup:
    """Train the vision tower of the model in `model_path` to tell which of `vocabulary` each image holds; write the
    whole model (tokenizer and processor included) to `output_dir`.

    The vision tower (with its projector) and a linear probe on the mean of each image's output tokens are trained
    with a binary cross-entropy per tag; the language model is not touched and the probe is thrown away.
    `output_dir` is written as `<output_dir>.partial`, then renamed; a finished `output_dir` is reused when it was
    warmed with these settings and refused (`SettingsMismatchError`, naming them) otherwise.

    Args:
        model_path: a model folder of a registered family (`trl_vlprm.modeling.families`); its tower and projector
            are trained.
        output_dir: where the warmed model is written.
        images: PIL images (or anything the model's image processor takes), one per record.
        tags: the tags each image holds, e.g. the colour names drawn in it.
        vocabulary: every tag the probe predicts (default: the sorted union of `tags`).
        steps: optimizer steps (AdamW, constant learning rate).
        batch_size: images per step.
        learning_rate: AdamW learning rate of the tower and the probe.
        held_out_share: share of the images kept out of training to measure the probe.
        seed: seeds the probe, the held-out split and the batches.

    Raises:
        ValueError: mismatched lengths, too few images, or a record whose tag is not in `vocabulary` (named).
    """
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoModelForImageTextToText

    from trl_vlprm.modeling.families import family_of_model
    from trl_vlprm.modeling.processor import load_processor
    from trl_vlprm.utils.resume import pin_settings

    model_path, output_dir = Path(model_path), Path(output_dir)
    vocabulary = sorted({tag for record in tags for tag in record}) if vocabulary is None else list(vocabulary)
    targets = _tag_matrix(images, tags, vocabulary)
    settings = {
        "model_path": str(model_path.resolve()),
        "vocabulary": vocabulary,
        "images": len(images),
        "tags_digest": _digest(tags),
        "steps": steps,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "held_out_share": held_out_share,
        "seed": seed,
    }
    if (output_dir / WARMUP_FILE).exists():
        recorded = json.loads((output_dir / WARMUP_FILE).read_text())
        pin_settings(output_dir / "vision_warmup_settings.json", settings)  # refuses other settings, naming them
        return VisionWarmup(**{**recorded, "path": output_dir})

    if output_dir.exists():
        raise FileExistsError(
            f"warm_up_vision_tower: {output_dir} exists but holds no {WARMUP_FILE} (not a finished warm-up); "
            "remove it or write elsewhere"
        )
    order = list(range(len(images)))
    random.Random(seed).shuffle(order)
    num_held = max(1, round(len(images) * held_out_share))
    held, train = order[:num_held], order[num_held:]
    if len(train) < batch_size:
        raise ValueError(f"warm_up_vision_tower: {len(train)} training images, fewer than batch_size={batch_size}")

    start = time.perf_counter()
    torch.manual_seed(seed)
    processor = load_processor(model_path)
    model = AutoModelForImageTextToText.from_pretrained(model_path)
    family = family_of_model(model)
    if family is None or not hasattr(model.model, "get_image_features"):
        raise ValueError(
            f"warm_up_vision_tower: {model_path} is a {model.config.model_type!r} model, of no registered family "
            "with a vision tower"
        )
    encoded = [family.image_inputs(processor, [image]) for image in images]
    # The tower and its projector into the language model's width: the probe reads the projector's output.
    tower = [
        parameter
        for name, parameter in model.named_parameters()
        if family.is_vision_tower_parameter(name) or any(part in family.projector_modules for part in name.split("."))
    ]
    probe = torch.nn.Linear(model.config.text_config.hidden_size, len(vocabulary))

    def predict(indices: Sequence[int]) -> torch.Tensor:
        batch = {key: torch.cat([encoded[i][key] for i in indices]) for key in encoded[indices[0]]}
        features = model.model.get_image_features(**batch)
        per_image = getattr(features, "pooler_output", features)  # one (tokens, width) tensor per image, or per tile
        if len(per_image) != len(indices):  # a tiling processor (InternVL): an image's tiles follow one another
            tokens = torch.cat([tile.reshape(-1, tile.shape[-1]) for tile in per_image])
            per_image = tokens.reshape(len(indices), -1, tokens.shape[-1])
        return probe(torch.stack([tokens.reshape(-1, tokens.shape[-1]).mean(0) for tokens in per_image]))

    optimizer = torch.optim.AdamW([*tower, *probe.parameters()], lr=learning_rate, weight_decay=0.0)
    batches = random.Random(seed + 1)
    for _ in tqdm(range(steps), desc="vision warm-up", unit="step"):
        batch = batches.sample(train, batch_size)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(predict(batch), targets[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    with torch.no_grad():
        predicted = torch.cat([predict(held[i : i + 64]) for i in range(0, len(held), 64)]) > 0
    truth = targets[held].bool()
    share_present = truth.float().mean(0)
    result = VisionWarmup(
        path=output_dir,
        vocabulary=vocabulary,
        steps=steps,
        held_out_images=len(held),
        held_out_accuracy=round(float((predicted == truth).float().mean()), 4),
        majority_accuracy=round(float(torch.maximum(share_present, 1 - share_present).mean()), 4),
        seconds=round(time.perf_counter() - start, 1),
    )

    partial = output_dir.with_name(output_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(model_path, partial)  # tokenizer, processor and chat template as they were
    model.save_pretrained(partial)
    pin_settings(partial / "vision_warmup_settings.json", settings)
    (partial / WARMUP_FILE).write_text(json.dumps({**asdict(result), "path": str(output_dir)}, indent=1))
    partial.rename(output_dir)
    return result


def _tag_matrix(images: Sequence[Any], tags: Sequence[Collection[str]], vocabulary: list[str]):
    import torch

    if len(images) != len(tags):
        raise ValueError(f"warm_up_vision_tower: {len(images)} images but {len(tags)} tag sets")
    if not vocabulary:
        raise ValueError("warm_up_vision_tower: no tags to learn (the vocabulary is empty)")
    column = {tag: k for k, tag in enumerate(vocabulary)}
    matrix = torch.zeros(len(tags), len(vocabulary))
    for index, record in enumerate(tags):
        unknown = sorted(set(record) - set(column))
        if unknown:
            raise ValueError(
                f"warm_up_vision_tower: record {index} has tags {unknown} outside the vocabulary {vocabulary}"
            )
        for tag in record:
            matrix[index, column[tag]] = 1.0
    return matrix


def _digest(tags: Sequence[Collection[str]]) -> str:
    from trl_vlprm.utils.resume import stable_digest

    return stable_digest([sorted(record) for record in tags])
