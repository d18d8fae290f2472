"""Pixel equality of the two processing paths: transformers' upstream processors (fast, torchvision) against the
image-only / PIL processors `trl_vlprm` builds, per model type, on real PuzzleVQA images.

Needs torchvision, which must never enter the project's venvs (the only torchvision installable beside the CPU torch
is a CUDA build that does not import there). Run it in a throwaway venv with PyPI's default torch, which runs on a
CPU, and the main venv's transformers (docs/models.md, "With and without torchvision"):

    python3.11 -m venv /tmp/tv-venv
    /tmp/tv-venv/bin/pip install torch==2.14.1 torchvision==0.29.1 transformers==5.25.0 pillow==13.0.0 numpy==2.4.6
    PYTHONPATH=$PWD HF_HUB_OFFLINE=1 /tmp/tv-venv/bin/python tools/processor_parity.py \
        --images ../shared/benchmarks/PuzzleVQA/data/images

Two comparisons for each model type, on the same RGB images (read in place; `load_image` turns them to RGB as the
pipeline does), plus two crops of the first one that are not square (aspect-ratio paths: LLaVA-NeXT tiles, Idefics3
grids, InternVL tiles):

- **saved folder**: a tiny model folder as `build_tiny_vlm` writes it (what the tests and the tiny hub use), loaded by
  `AutoProcessor.from_pretrained` (upstream classes, torchvision image processor and video processor) and by
  `trl_vlprm.modeling.processor.load_processor` (image-only, PIL); both process the same chat text and images. The
  input ids and every non-float output must be equal; the float outputs' largest and mean absolute differences
  (worst image) are reported.
- **default settings**: the PIL image processor the family builds from empty saved settings
  (`ModelFamily.image_processor(None)`: the published checkpoints' sizes, which the tiny folders shrink) against the
  model type's torchvision image processor given the same settings.

Writes a markdown table to stdout; exits 1 if ids or integer outputs differ anywhere.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from trl_vlprm.data.schema import load_image
from trl_vlprm.modeling.families import get_family
from trl_vlprm.modeling.processor import load_processor
from trl_vlprm.testing import TINY_SPECS, build_tiny_vlm

# Types with no tiny model here (mistral3: PixtralProcessor; smolvlm: num2words) and the generic adapter's examples
# get the default-settings comparison only.
IMAGE_PROCESSOR_ONLY = ["mistral3", "smolvlm", "vipllava", "aya_vision"]
PUZZLE_TYPES = ["color_grid", "polygon_sides_number", "shape_size_hexagon", "venn"]  # venn's PNG is RGBA


def real_images(root: Path) -> list[tuple[str, Image.Image]]:
    images = []
    for kind in PUZZLE_TYPES:
        path = sorted((root / kind).glob("*.png"))[0]
        images.append((path.name, load_image(str(path))))
    first_name, first = images[0]
    images.append((f"{first_name}[0:300, :]", first.crop((0, 0, first.width, 300))))
    images.append((f"{first_name}[:, 0:180]", first.crop((0, 0, 180, first.height))))
    return images


def compare(upstream: dict, ours: dict, where: str) -> tuple[tuple[float, float], list[str]]:
    """(largest, mean) |difference| of the float outputs; the mismatches of everything else (keys, shapes, ints)."""
    problems, largest, total, count = [], 0.0, 0.0, 0
    if set(upstream) != set(ours):
        problems.append(f"{where}: outputs {sorted(upstream)} vs {sorted(ours)}")
    for key in sorted(set(upstream) & set(ours)):
        a, b = (torch.as_tensor(np.asarray(value)) for value in (upstream[key], ours[key]))
        if a.shape != b.shape:
            problems.append(f"{where}: {key} shape {tuple(a.shape)} vs {tuple(b.shape)}")
        elif a.is_floating_point():
            difference = (a.double() - b.double()).abs()
            largest = max(largest, float(difference.max()) if a.numel() else 0.0)
            total, count = total + float(difference.sum()), count + a.numel()
        elif not torch.equal(a, b):
            problems.append(f"{where}: {key} differs")
    return (largest, total / max(count, 1)), problems


def worst(figures: list[tuple[float, float]]) -> str:
    return f"{max(f[0] for f in figures):.1e} / {max(f[1] for f in figures):.1e}"


def saved_folder(model_type: str, images, work: Path) -> tuple[float, list[str], str]:
    from transformers import AutoProcessor

    folder = build_tiny_vlm(work / model_type, arch=model_type)
    upstream, ours = AutoProcessor.from_pretrained(folder), load_processor(folder)
    text = ours.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Which colour is missing?"}]}],
        add_generation_prompt=True,
        tokenize=False,
    )
    figures, problems = [], []
    for name, image in images:
        a = upstream(text=[text], images=[image], return_tensors="pt")
        b = ours(text=[text], images=[image], return_tensors="pt")
        difference, found = compare(dict(a), dict(b), f"{model_type} {name}")
        figures, problems = figures + [difference], problems + found
    classes = f"{type(upstream.image_processor).__name__} / {type(ours.image_processor).__name__}"
    return worst(figures), problems, classes


def default_settings(model_type: str, images) -> tuple[str, list[str], str, tuple]:
    import transformers
    from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING_NAMES

    ours = get_family(model_type).image_processor(None)
    # the same settings for both backends (Qwen3's family default is 16-pixel patches, the class default 14)
    settings = {k: v for k, v in ours.to_dict().items() if k not in ("image_processor_type", "processor_class")}
    names = IMAGE_PROCESSOR_MAPPING_NAMES.get(model_type) or {}  # qwen3_vl_moe has no entry: its PIL class's twin
    fast_name = names.get("torchvision") or type(ours).__name__.removesuffix("Pil")
    fast = getattr(transformers, fast_name)(**settings)
    figures, problems, shape = [], [], None
    for name, image in images:
        a, b = fast(images=[image], return_tensors="pt"), ours(images=[image], return_tensors="pt")
        difference, found = compare(dict(a), dict(b), f"{model_type} defaults {name}")
        figures, problems = figures + [difference], problems + found
        shape = shape or tuple(a["pixel_values"].shape)
    return worst(figures), problems, f"{type(fast).__name__} / {type(ours).__name__}", shape


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, required=True, help="PuzzleVQA's data/images folder.")
    parser.add_argument("--model_types", nargs="*", default=None, help="Default: every tiny model type and more.")
    args = parser.parse_args()
    import torchvision

    images = real_images(args.images)
    model_types = args.model_types or [*TINY_SPECS, *IMAGE_PROCESSOR_ONLY]
    out = sys.stdout
    out.write(
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, transformers "
        f"{__import__('transformers').__version__}; images: {', '.join(name for name, _ in images)}\n\n"
        "| model type | saved folder: AutoProcessor vs load_processor, max / mean abs diff (ids equal) | classes | "
        "default settings: torchvision vs PIL image processor, max / mean abs diff | classes | pixel_values shape "
        "(first image, defaults) |\n|---|---|---|---|---|---|\n"
    )
    failures = []
    with tempfile.TemporaryDirectory() as work:
        for model_type in model_types:
            cells = ["n/a (no tiny model)", ""]
            if model_type in TINY_SPECS:
                try:
                    figures, problems, classes = saved_folder(model_type, images, Path(work))
                    failures += problems
                    cells = [f"{figures} ({'yes' if not problems else 'NO'})", classes]
                except Exception as err:  # reported in the table: the row says what failed
                    cells = [f"error: {type(err).__name__}: {str(err).splitlines()[0][:120]}", ""]
            try:
                figures, problems, classes, shape = default_settings(model_type, images)
                failures += problems
                cells += [figures + (" (outputs differ)" if problems else ""), classes, str(shape)]
            except Exception as err:
                cells += [f"error: {type(err).__name__}: {str(err).splitlines()[0][:120]}", "", ""]
            out.write(f"| `{model_type}` | " + " | ".join(cells) + " |\n")
            out.flush()
    for problem in failures:
        out.write(f"\nMISMATCH {problem}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
