"""The record schema: every validation error with its exact message, and the valid forms a record may take."""

import io
import math
import re

import pytest
from datasets import Dataset
from PIL import Image

from trl_vlprm.data.schema import (
    RecordError,
    count_image_placeholders,
    is_soft,
    load_image,
    stepwise_features,
    validate_dataset,
    validate_record,
)


def png_bytes(size=(6, 4), color=(10, 200, 30)):
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def noisy_png_bytes():
    # Random pixels so the compressed stream is long enough to cut in the middle of the image data.
    pixels = bytes((i * 7919) % 251 for i in range(32 * 32 * 3))
    buffer = io.BytesIO()
    Image.frombytes("RGB", (32, 32), pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def row(**changes):
    record = {
        "prompt": "<image>\nHow many red squares?",
        "images": [Image.new("RGB", (6, 4), "red")],
        "completions": ["I see 3 red squares.", "The answer is 3."],
        "labels": [True, True],
        "step_types": ["perception", "reasoning"],
    }
    record.update(changes)
    return record


def assert_error(record, message, row_index=0):
    with pytest.raises(RecordError, match=re.escape(message)) as info:
        validate_record(record, row_index)
    assert str(info.value) == message


# ---------------------------------------------------------------- errors, exact messages
def test_labels_length_differs_from_steps():
    assert_error(row(labels=[True]), "row 0: field 'labels': 1 label(s) for 2 step(s)")


def test_labels_missing_with_steps():
    record = row()
    del record["labels"]
    assert_error(record, "row 0: field 'labels': missing")


def test_empty_step():
    assert_error(row(completions=["I see 3.", "  \n"]), "row 0: field 'completions': step 1 is empty")


def test_step_not_a_string():
    assert_error(row(completions=["I see 3.", 3]), "row 0: field 'completions': step 1 is int, not a string")


def test_missing_image():
    assert_error(row(images=[None]), "row 0: field 'images': image 0 is missing (None)")


def test_images_not_a_list():
    assert_error(row(images="a.png"), "row 0: field 'images': must be a list of images, got str")


def test_corrupt_image_bytes():
    truncated = noisy_png_bytes()[:200]
    assert_error(
        row(images=[truncated]), "row 0: field 'images[0]': image cannot be decoded (OSError: image file is truncated)"
    )


def test_corrupt_image_file(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"not an image at all")
    assert_error(
        row(images=[str(path)]),
        f"row 0: field 'images[0]': image cannot be decoded (UnidentifiedImageError: cannot identify image file "
        f"'{path}')",
    )


def test_image_file_not_found(tmp_path):
    missing = tmp_path / "missing.png"
    assert_error(row(images=[str(missing)]), f"row 0: field 'images[0]': image file not found: {missing}")
    assert_error(
        row(images=[{"bytes": None, "path": str(missing)}]),
        f"row 0: field 'images[0]': image file not found: {missing}",
    )


def test_image_count_differs_from_placeholders_in_string_prompt():
    record = row(prompt="<image> and <image>: how many red squares?")
    assert_error(record, "row 0: field 'images': 1 image(s) but 2 image placeholder(s) in the prompt")
    assert_error(row(prompt="How many?"), "row 0: field 'images': 1 image(s) but 0 image placeholder(s) in the prompt")


def test_image_count_differs_from_image_parts_in_chat_prompt():
    prompt = [
        {"role": "system", "content": "You grade puzzles."},
        {"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Same?"}]},
    ]
    assert_error(row(prompt=prompt), "row 0: field 'images': 1 image(s) but 2 image placeholder(s) in the prompt")


@pytest.mark.parametrize(
    "labels, message",
    [
        ([2.0, True], "row 0: field 'labels': label 0 is 2.0; expected a bool or a float in [0, 1]"),
        ([True, math.nan], "row 0: field 'labels': label 1 is nan; expected a bool or a float in [0, 1]"),
        ([True, -0.5], "row 0: field 'labels': label 1 is -0.5; expected a bool or a float in [0, 1]"),
        ([True, "yes"], "row 0: field 'labels': label 1 is 'yes'; expected a bool or a float in [0, 1]"),
    ],
)
def test_bad_label_value(labels, message):
    assert_error(row(labels=labels), message)


def test_bad_step_type():
    assert_error(
        row(step_types=["perception", "visual"]),
        "row 0: field 'step_types': step 1 has type 'visual'; expected one of ('perception', 'reasoning')",
    )
    assert_error(row(step_types=["perception"]), "row 0: field 'step_types': 1 step type(s) for 2 step(s)")


def test_labels_without_completions():
    assert_error(
        row(completions=[], labels=[True]), "row 0: field 'completions': labels are given but there are no steps"
    )


def test_prompt_missing_or_malformed():
    record = row()
    del record["prompt"]
    assert_error(record, "row 0: field 'prompt': missing")
    assert_error(
        row(prompt=[{"content": "no role"}]),
        "row 0: field 'prompt': must be a string or a list of chat messages with 'role' and 'content'",
    )


def test_validate_dataset_names_the_bad_row():
    records = [row(), row(), row(labels=[True])]
    with pytest.raises(RecordError, match=re.escape("row 2: field 'labels': 1 label(s) for 2 step(s)")):
        validate_dataset(records)


# ---------------------------------------------------------------- valid records
def test_text_only_trl_row_is_valid():
    record = {"prompt": "What is 2 + 3?", "completions": ["2 + 3 = 5.", "The answer is 5."], "labels": [True, True]}
    validate_record(record, 0)
    assert count_image_placeholders(record["prompt"]) == 0


def test_question_record_is_valid():
    validate_record({"prompt": "<image>\nHow many?", "images": [png_bytes()], "answer": "3"}, 0)


def test_soft_labels_are_valid():
    record = row(labels=[0.75, 0.0])
    validate_record(record, 0)
    assert is_soft(record["labels"]) and not is_soft([True, False, 1.0, 0])


def test_chat_prompt_with_image_parts():
    prompt = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Left"}, {"type": "image"}]},
    ]
    validate_record(row(prompt=prompt, images=[png_bytes(), png_bytes()]), 0)
    assert count_image_placeholders(prompt) == 2
    assert count_image_placeholders([{"role": "user", "content": "<image> then <image>"}]) == 2


def test_every_image_form_loads(tmp_path):
    path = tmp_path / "img.png"
    path.write_bytes(png_bytes())
    forms = {
        "pil": Image.new("RGB", (6, 4), (10, 200, 30)),
        "pil_rgba": Image.new("RGBA", (6, 4), (10, 200, 30, 255)),
        "arrow_bytes": {"bytes": png_bytes(), "path": None},
        "arrow_path": {"bytes": None, "path": str(path)},
        "path": str(path),
        "bytes": png_bytes(),
    }
    for name, form in forms.items():
        image = load_image(form, row=0)
        assert (image.mode, image.size, image.getpixel((5, 3))) == ("RGB", (6, 4), (10, 200, 30)), name
    validate_record(row(prompt="<image>" * len(forms), images=list(forms.values())), 0)


def test_unsupported_image_type():
    assert_error(
        row(images=[3.5]),
        "row 0: field 'images[0]': image cannot be decoded (ValueError: unsupported image type float)",
    )


def test_image_dataset_round_trips_through_parquet(tmp_path):
    features = stepwise_features()
    sizes = [(6, 4), (9, 9), (3, 5)]
    columns = {
        "id": ["a", "b", "c"],
        "prompt": ["<image>\nQ1", "<image><image>\nQ2", "Q3 without image"],
        "images": [[Image.new("RGB", sizes[0])], [Image.new("RGB", sizes[1]), Image.new("RGB", sizes[2])], []],
        "completions": [["s1", "s2"], ["t1"], ["u1", "u2", "u3"]],
        "labels": [[True, False], [True], [True, True, False]],
        "answer": ["1", "2", "3"],
        "options": [[], ["A", "B"], []],
        "category": ["colors", "numbers", "text"],
        "step_types": [["perception", "reasoning"], ["reasoning"], []],
    }
    Dataset.from_dict(columns, features=features).to_parquet(str(tmp_path / "train.parquet"))
    loaded = Dataset.from_parquet(str(tmp_path / "train.parquet"))
    assert loaded.features == features
    assert validate_dataset(loaded) == 3
    assert [image.size for image in loaded[1]["images"]] == sizes[1:]
    assert loaded[2]["labels"] == [True, True, False]


def test_stepwise_features_build_datasets():
    soft = stepwise_features(with_types=False, soft_labels=True)
    assert "step_types" not in soft and soft["labels"].feature.dtype == "float32"
    columns = {name: [None] for name in soft}
    columns.update(prompt=["Q"], images=[[]], completions=[["s"]], labels=[[0.25]])
    dataset = Dataset.from_dict(columns, features=soft)
    assert dataset[0]["labels"] == [0.25]
    assert validate_dataset(dataset) == 1


def _reload(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def test_16_bit_png_is_scaled_not_saturated():
    import numpy as np

    values = (np.arange(16 * 64).reshape(16, 64) * 64).astype(np.uint16)  # 0 .. 65472
    loaded = np.asarray(load_image(_reload(Image.fromarray(values))))
    assert loaded.shape == (16, 64, 3)
    np.testing.assert_array_equal(loaded[..., 0], np.rint(values / 257.0).astype(np.uint8))
    assert (loaded == 255).mean() < 0.01  # before: convert("RGB") made 99.6% of the pixels 255


def test_transparent_background_composites_on_white():
    drawing = Image.new("RGBA", (8, 8), (0, 0, 0, 0))  # transparent black background
    drawing.putpixel((2, 3), (0, 0, 0, 255))  # one opaque black pixel
    drawing.putpixel((5, 5), (200, 0, 0, 128))  # half-transparent red
    loaded = load_image(_reload(drawing))
    assert loaded.getpixel((0, 0)) == (255, 255, 255)  # before: (0, 0, 0), the drawing vanished
    assert loaded.getpixel((2, 3)) == (0, 0, 0)
    assert loaded.getpixel((5, 5)) == (227, 127, 127)  # 200*128/255 + 255*127/255 rounded


@pytest.mark.parametrize(
    "mode, value, expected",
    [
        ("1", 1, (255, 255, 255)), ("L", 77, (77, 77, 77)), ("LA", (77, 0), (255, 255, 255)),
        ("LA", (77, 255), (77, 77, 77)), ("P", 0, None), ("RGB", (1, 2, 3), (1, 2, 3)),
        ("RGBA", (1, 2, 3, 255), (1, 2, 3)), ("RGBA", (1, 2, 3, 0), (255, 255, 255)),
        ("CMYK", (0, 0, 0, 0), (255, 255, 255)), ("YCbCr", (128, 128, 128), (128, 128, 128)),
        ("I;16", 65535, (255, 255, 255)), ("I;16", 257 * 100, (100, 100, 100)), ("I;16B", 257 * 40, (40, 40, 40)),
        ("I", 257 * 9, (9, 9, 9)), ("F", 0.5, (128, 128, 128)), ("F", 200.0, (200, 200, 200)),
    ],
)  # fmt: skip
def test_every_pil_mode_converts_to_what_it_shows(mode, value, expected):
    image = Image.new(mode, (3, 2), value)
    if mode == "P":
        image.putpalette([10, 20, 30] * 256)
        expected = (10, 20, 30)
    loaded = load_image(image)
    assert loaded.mode == "RGB" and loaded.size == (3, 2)
    assert loaded.getpixel((1, 1)) == expected


def test_palette_with_transparency_key_composites_on_white():
    image = Image.new("P", (2, 1), 0)
    image.putpalette([0, 0, 0, 250, 0, 0] + [0, 0, 0] * 254)
    image.putpixel((1, 0), 1)
    image.info["transparency"] = 0  # palette entry 0 is transparent
    loaded = load_image(Image.open(io.BytesIO(_reload(image))))
    assert loaded.getpixel((0, 0)) == (255, 255, 255) and loaded.getpixel((1, 0)) == (250, 0, 0)
