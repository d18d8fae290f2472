"""Model-family adapters: every registered family keeps the contract the pipeline relies on, is found from a model's
config or processor, and is the only place that knows its models' specifics.

The contract tests are parametrized over every registered model type, so a new family file gets them for free.
"""

from __future__ import annotations

import ast
import inspect
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoModelForTokenClassification, ProcessorMixin
from transformers.video_processing_utils import BaseVideoProcessor

import trl_vlprm
from trl_vlprm.modeling import families
from trl_vlprm.modeling.encoding import encode_prompt
from trl_vlprm.modeling.families import (
    MODEL_FAMILIES,
    ModelFamily,
    UnsupportedModelError,
    family_of_model,
    family_of_processor,
    find_family,
    get_family,
    supported_model_types,
)
from trl_vlprm.modeling.heads import as_token_classification_model, load_prm, value_head_class
from trl_vlprm.modeling.processor import build_processor, load_processor, read_model_type
from trl_vlprm.testing import TINY_SPECS, build_tiny_text_prm, build_tiny_tokenizer, build_tiny_vlm, get_tiny_spec

PACKAGE = Path(trl_vlprm.__file__).parent
MODEL_TYPES = supported_model_types()
# Registered model types no tiny model can be built for on this machine, and why (tested for that error below).
NOT_BUILDABLE_HERE = {
    "mistral3": r"'mistral3': its processor PixtralProcessor needs torchvision",
}
TESTED_TYPES = [model_type for model_type in MODEL_TYPES if model_type not in NOT_BUILDABLE_HERE]


@pytest.fixture(scope="module", params=TESTED_TYPES)
def tiny(request, tmp_path_factory):
    return request.param, build_tiny_vlm(tmp_path_factory.mktemp(request.param) / "model", arch=request.param)


def _image(height, width, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


# ---- registry and resolution ---------------------------------------------------------------------------------------


def test_qwen_vl_covers_both_model_types():
    assert {"qwen2_vl", "qwen2_5_vl"} <= set(MODEL_TYPES)
    assert get_family("qwen2_vl").name == get_family("qwen2_5_vl").name == "qwen_vl"
    assert get_family("qwen2_vl") is get_family("qwen2_vl")  # one adapter per model type
    assert MODEL_FAMILIES.names() == sorted(MODEL_TYPES)


def test_unknown_model_type_names_it_and_lists_the_families():
    with pytest.raises(UnsupportedModelError, match=r"model type 'foo_vlm'.*qwen2_vl, qwen2_5_vl \(family qwen_vl\)"):
        get_family("foo_vlm")
    with pytest.raises(UnsupportedModelError, match=r"model type 'foo_vlm'"):
        build_processor("foo_vlm", build_tiny_tokenizer())


@pytest.mark.parametrize(
    "model_type,missing",
    [
        ("paligemma", r"its processor PaliGemmaProcessor takes no image_token"),
        ("glm4v", r"takes no image_token.*its positions are not 1-D"),
        ("llama4", r"no PIL image processor \(transformers has torchvision: Llama4ImageProcessor"),
    ],
)
def test_generic_adapter_names_what_a_model_lacks(model_type, missing):
    """A vision-language model no family registers is served by the generic LLaVA-style adapter where it fits, and
    otherwise refused with every missing piece named (before: "belongs to no model family", nothing more)."""
    with pytest.raises(UnsupportedModelError, match=rf"model type '{model_type}'.*generic LLaVA-style.*{missing}"):
        get_family(model_type)
    assert find_family("qwen2") is None  # a text model is no vision-language model: no family, no error


@pytest.mark.parametrize("model_type", ["vipllava", "aya_vision"])
def test_generic_adapter_serves_llava_style_models_it_was_not_told_about(model_type):
    family = get_family(model_type)
    assert family.name == f"generic ({model_type})" and family.model_type == model_type
    assert family.token_types_input is None  # 1-D positions, no multimodal token types


@pytest.mark.parametrize("model_type", sorted(NOT_BUILDABLE_HERE))
def test_a_family_that_cannot_run_here_says_what_is_missing(model_type):
    with pytest.raises(UnsupportedModelError, match=NOT_BUILDABLE_HERE[model_type]):
        build_processor(model_type, build_tiny_tokenizer())


def test_every_family_module_registers_itself():
    """The package imports each of its modules, so a family file needs no other edit to be found."""
    defined = {
        node.name
        for path in Path(families.__file__).parent.glob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ClassDef)
        and any(getattr(decorator, "id", None) == "register_model_family" for decorator in node.decorator_list)
    }
    registered = {MODEL_FAMILIES.get(name).__name__ for name in MODEL_FAMILIES.names()}
    assert defined == registered and defined
    assert all(issubclass(MODEL_FAMILIES.get(name), ModelFamily) for name in MODEL_FAMILIES.names())


def test_family_found_from_config_processor_and_saved_folder(tiny):
    model_type, path = tiny
    family = get_family(model_type)
    processor = load_processor(path)
    # Model types sharing one processor class (Qwen3-VL's serves Qwen3.5 too) are told apart by the config only.
    assert family_of_processor(processor).name == family.name
    assert family_of_model(load_prm(path, head="generative")) is family
    assert read_model_type(path) == model_type
    # A text model has no family: callers fall back to text behaviour.
    assert family_of_processor(processor.tokenizer) is None


def test_a_vision_processor_of_no_family_is_refused():
    class SomeProcessor:
        image_processor = object()

    with pytest.raises(UnsupportedModelError, match=r"processor SomeProcessor belongs to no model family"):
        family_of_processor(SomeProcessor())


def test_text_model_has_no_family_and_keeps_auto_classes(tmp_path):
    path = build_tiny_text_prm(tmp_path / "text")
    model = load_prm(path, head="value")
    assert family_of_model(model) is None and type(model).__name__ == "Qwen2ForTokenClassification"


# ---- the contract of every family ----------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(56, 56), (100, 90), (60, 300), (112, 112)])
def test_image_token_counts_match_the_processor(tiny, size):
    """The count the encoding expands each placeholder to equals what the family's own processor emits, and the
    batch check (`image_token_total`) agrees."""
    model_type, path = tiny
    family, processor = get_family(model_type), load_processor(path)
    image = _image(*size)
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Count."}]}],
        add_generation_prompt=True,
        tokenize=False,
    )
    image_token_id = family.image_token_id(processor)
    emitted = int((processor(text=[text], images=[image], return_tensors="pt")["input_ids"] == image_token_id).sum())
    (count,) = family.image_token_counts(processor, [image])
    assert count == emitted > 0
    assert family.image_token_total(processor, [image]) == emitted
    encoded = encode_prompt(processor, "<image>Count.", [image])
    assert encoded.input_ids.count(image_token_id) == emitted
    # the whole expansion, markers included, is the processor's own
    assert encoded.input_ids == processor(text=[text], images=[image])["input_ids"][0]
    # and an engine that expands images itself (vLLM) gets back the template's placeholder, markers and all
    unexpanded = processor.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert family.collapse_image_tokens(processor, encoded.input_ids, [image]) == unexpanded != encoded.input_ids
    if family.token_types_input is not None:
        assert sum(encoded.mm_token_type_ids) == emitted


def test_steps_may_not_hold_vision_tokens(tiny):
    model_type, path = tiny
    processor = load_processor(path)
    ids = get_family(model_type).vision_token_ids(processor)
    assert processor.image_token_id in ids  # the placeholder, and the markers framing an image (if any)
    assert len(ids) >= 1 + len(get_family(model_type).vision_marker_tokens)
    assert processor.tokenizer.convert_tokens_to_ids("Count") not in ids


def test_prefix_positions_continue_as_a_full_forward_places_them(tiny):
    """Prefix positions + text positions after it equal the positions the model computes for the whole sequence."""
    model_type, path = tiny
    family, processor = get_family(model_type), load_processor(path)
    model = load_prm(path, head="generative")
    backbone = getattr(model, model.base_model_prefix)
    prompt = encode_prompt(processor, "<image>What is shown?", [_image(90, 120)])
    suffix = processor.tokenizer("It is a square.\n", add_special_tokens=False)["input_ids"]
    image_inputs = family.image_inputs(processor, prompt.images)
    prefix_ids = torch.tensor([prompt.input_ids])
    types = torch.tensor([prompt.mm_token_type_ids]) if prompt.mm_token_type_ids is not None else None
    prefix = family.prefix_positions(backbone, prefix_ids, types, image_inputs)
    after = family.text_positions(int(prefix.max()) + 1, len(suffix), 1)
    full_ids = torch.tensor([prompt.input_ids + suffix])
    if not hasattr(backbone, "get_rope_index"):  # 1-D positions: a full forward counts tokens
        assert torch.equal(torch.cat([prefix, after], dim=-1), torch.arange(full_ids.shape[1])[None])
        return
    full_types = torch.tensor([prompt.mm_token_type_ids + [0] * len(suffix)])
    expected, _ = backbone.get_rope_index(full_ids, mm_token_type_ids=full_types, **{
        k: v for k, v in image_inputs.items() if k != "pixel_values"
    })  # fmt: skip
    assert torch.equal(torch.cat([prefix, after], dim=-1), expected)
    assert int(prefix.max()) + 1 < prefix_ids.shape[1]  # the image rows really compress positions


def test_vision_tower_is_the_encoder_without_its_projector(tiny):
    model_type, path = tiny
    family = get_family(model_type)
    names = [name for name, _ in load_prm(path, head="value").named_parameters()]
    tower = [name for name in names if family.is_vision_tower_parameter(name)]
    assert tower and len(tower) < len(names)
    assert not any(family.is_vision_tower_parameter(n) for n in names if n.startswith("score") or ".merger." in n)
    assert not any(family.is_vision_tower_parameter(n) for n in names if "language_model" in n)


def test_value_head_class_is_registered_and_loads_the_backbone(tiny):
    """The head factory wraps the family's model class: same backbone under the same names, registered with
    AutoModelForTokenClassification, every backbone tensor loaded (only the LM head is not part of a value PRM)."""
    model_type, path = tiny
    head_class = value_head_class(model_type)
    assert head_class is as_token_classification_model(get_family(model_type).model_class())
    model = load_prm(path, head="value")
    assert type(model) is head_class and head_class.__name__.endswith("ForTokenClassification")
    assert AutoModelForTokenClassification._model_mapping[type(model.config)] is head_class
    reference = AutoModelForImageTextToText.from_pretrained(path).state_dict()
    state = model.state_dict()
    assert all(torch.equal(state[k], reference[k]) for k in reference if k in state)
    assert len([k for k in reference if k in state]) == len(reference) - 1  # all but the LM head
    assert sorted(k for k in state if k not in reference) == ["score.bias", "score.weight"]


def test_a_saved_value_prm_reloads_with_its_head(tiny, tmp_path):
    """A value PRM saved after training reloads with the trained `score` and backbone (nothing re-initialised)."""
    model_type, path = tiny
    model = load_prm(path, head="value")
    with torch.no_grad():
        model.score.weight.normal_()
        next(p for n, p in model.named_parameters() if n.startswith("model.")).add_(1.0)
    model.config.prm_head = "value"
    model.save_pretrained(tmp_path / "prm")
    reloaded = load_prm(tmp_path / "prm")
    assert type(reloaded) is type(model)
    expected, got = model.state_dict(), reloaded.state_dict()
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)


def test_a_saved_processor_names_its_upstream_class_and_a_video_processor(tiny, tmp_path):
    """Where torchvision exists, `AutoProcessor` loads a saved folder (`tools/processor_parity.py` runs it): the folder
    names the upstream class, and where that class demands a video processor, transformers' own lookup finds an entry
    (without one: "Can't load video processor"); `load_processor` reads the folder back the same."""
    model_type, path = tiny
    processor = load_processor(path)
    processor.save_pretrained(tmp_path)
    shutil.copy(path / "config.json", tmp_path)
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    upstream = next(k for k in type(processor).__mro__ if k.__module__.startswith("transformers.models"))
    assert saved["processor_class"] == upstream.__name__ and issubclass(upstream, ProcessorMixin)
    if "video_processor" in inspect.signature(upstream.__init__).parameters:
        assert BaseVideoProcessor.get_video_processor_dict(str(tmp_path))[0] == {}
    assert load_processor(tmp_path)(text=["<x>"])["input_ids"] == processor(text=["<x>"])["input_ids"]


def test_tiny_model_of_each_family(tiny):
    """Tiny models are the real transformers classes of their model type, built from the tiny-model module."""
    model_type, path = tiny
    config = get_tiny_spec(model_type).config(
        build_tiny_tokenizer(arch=model_type), hidden_size=64, num_layers=2, num_heads=4, vision_width=32,
        vision_depth=2, initializer_range=0.02, intermediate_size=None,
    )  # fmt: skip
    assert config.model_type == model_type
    assert isinstance(
        get_family(model_type).model_class()(config), AutoModelForImageTextToText._model_mapping[type(config)]
    )
    assert set(TESTED_TYPES) <= set(TINY_SPECS)


def test_family_base_class_lists_what_a_new_family_implements():
    """The abstract methods are the minimum a family file implements; the rest have working defaults (heads come from
    the factory, tiny test models from `trl_vlprm.testing.tiny_models`)."""
    assert ModelFamily.__abstractmethods__ == {
        "image_processor",
        "processor",
        "image_token_counts",
    }


# ---- the adapter is the only place ---------------------------------------------------------------------------------

# Files allowed to name the Qwen-VL specifics: the adapters, their tiny models, and the two files that hold hub ids
# (published PRMs by id; the tiny model type standing in for each repo id of the tiny hub cache).
ALLOWED_FILES = {
    "modeling/families/qwen_vl.py",
    "modeling/families/qwen3_vl.py",
    "modeling/families/llava.py",  # refuses models with multi-axis rope by the name of the method computing it
    "testing/tiny_models/qwen_vl.py",
    "modeling/presets.py",
    "testing/tiny_hub.py",
}
QWEN_VL_SPECIFICS = re.compile(
    r"qwen2(_5)?_?vl"  # class names, model types, transformers module names
    r"|image_grid_thw|get_rope_index|mrope|merge_size|get_number_of_image_patches"  # image layout and 3-D rope
    r"|<\|vision_(start|end)\|>|<\|(image|video)_pad\|>"  # chat template tokens
    r"|(^|\.)visual(\.|$)|language_model\.score",  # parameter and checkpoint names
    re.IGNORECASE,
)
MODEL_TYPE = re.compile(r"^qwen2(_5)?_vl$")


def _docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def _choices(tree: ast.AST) -> set[int]:
    """Model-type literals that *choose* a model (a parameter default, a keyword argument, a `DEFAULT_*` constant),
    which is configuration, unlike a literal a caller compares a model type against."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword):
            found.add(id(node.value))
        elif isinstance(node, ast.arguments):
            found.update(id(default) for default in node.defaults + node.kw_defaults if default is not None)
        elif isinstance(node, ast.Assign) and all(
            isinstance(t, ast.Name) and t.id.startswith("DEFAULT_") for t in node.targets
        ):
            found.add(id(node.value))
    return found


def _specifics(path: Path, root: Path = PACKAGE) -> list[str]:
    """Qwen-VL specifics named in the code of `path` (identifiers, imports, strings; not docstrings or comments)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    skip, choices = _docstrings(tree), _choices(tree)
    out = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Name):
            names = [node.id]
        elif isinstance(node, ast.Attribute):
            names = [node.attr]
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names = [node.name]
        elif isinstance(node, ast.arg) or isinstance(node, ast.keyword) and node.arg:
            names = [node.arg]
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [getattr(node, "module", None) or ""] + [alias.name for alias in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            if not (MODEL_TYPE.match(node.value) and id(node) in choices):
                names = [node.value]
        where = f"{path.relative_to(root)}:{getattr(node, 'lineno', '?')}"
        out += [f"{where}: {name!r}" for name in names if QWEN_VL_SPECIFICS.search(name)]
    return out


def test_only_the_adapter_names_qwen_vl_specifics():
    found = [
        hit
        for path in sorted(PACKAGE.rglob("*.py"))
        if str(path.relative_to(PACKAGE)) not in ALLOWED_FILES
        for hit in _specifics(path)
    ]
    assert found == [], "Qwen-VL specifics outside trl_vlprm/modeling/families/qwen_vl.py:\n" + "\n".join(found)


def test_the_check_sees_what_it_must(tmp_path):
    """The scanner flags each kind of specific (so an empty result above means something) and skips prose."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        '"""Docstrings may mention Qwen2-VL, image_grid_thw and <|vision_start|>."""\n'
        "from transformers import Qwen2VLConfig\n"
        "def f(model, model_type, name, arch='qwen2_vl'):\n"
        "    build(arch='qwen2_5_vl')  # a choice, allowed; comments may say get_rope_index\n"
        "    if model_type == 'qwen2_5_vl':\n"
        "        return model.get_rope_index(image_grid_thw=None)\n"
        "    return '.visual.' in name or '<|image_pad|>'\n"
    )
    hits = [hit.split(": ", 1)[1] for hit in _specifics(sample, tmp_path)]
    assert hits.count("'Qwen2VLConfig'") == 1 and "'qwen2_5_vl'" in hits and "'get_rope_index'" in hits
    assert "'image_grid_thw'" in hits and "'.visual.'" in hits and "'<|image_pad|>'" in hits
    assert "'qwen2_vl'" not in hits and not any("Docstrings" in hit for hit in hits)


@pytest.mark.parametrize("model_type", ["paligemma", "foo_vlm"])
def test_a_saved_model_of_no_family_is_named_before_its_tokenizer_is_read(tmp_path, model_type):
    """A tiny Qwen2-VL folder relabelled as another model type: one transformers knows but no adapter serves
    ("paligemma"), or one
    nobody knows. `load_processor` failed inside transformers (AttributeError on the config, or "Couldn't
    instantiate the backend tokenizer"), naming neither the model type nor what is supported."""
    import json
    import shutil

    from trl_vlprm.modeling.processor import load_processor

    source = build_tiny_vlm(tmp_path / "qwen", arch="qwen2_vl")
    relabelled = tmp_path / model_type
    shutil.copytree(source, relabelled)
    config = json.loads((relabelled / "config.json").read_text())
    (relabelled / "config.json").write_text(json.dumps({**config, "model_type": model_type}))
    if model_type == "foo_vlm":
        for name in ("preprocessor_config.json", "processor_config.json"):  # no image processor: a "text" model
            (relabelled / name).unlink(missing_ok=True)
    with pytest.raises(
        UnsupportedModelError, match=rf"model type '{model_type}' belongs to no model family.*qwen2_vl"
    ):
        load_processor(relabelled)
    # a text model transformers knows still loads as its tokenizer
    assert not hasattr(load_processor(build_tiny_text_prm(tmp_path / "text")), "image_processor")


def test_every_model_type_loads_by_its_published_repo_id(tiny_hub):
    """The tiny hub cache serves each model type under a published repo id, in the published file layout; the
    processor and both heads load from it by id, every backbone tensor found (`load_prm` raises otherwise)."""
    from trl_vlprm.testing import TINY_HUB_BASE_MODELS

    first_id = {}
    for repo_id, (model_type, _) in TINY_HUB_BASE_MODELS.items():
        first_id.setdefault(model_type, repo_id)
    assert set(first_id) == set(TESTED_TYPES)
    for model_type, repo_id in first_id.items():
        processor = load_processor(repo_id)
        assert family_of_processor(processor).name == get_family(model_type).name
        for head in ("value", "generative"):
            assert load_prm(repo_id, head=head).config.model_type == model_type


def test_gemma3_pan_and_scan_is_encoded_as_the_processor_does_and_shares_its_prefix_exactly(tmp_path):
    """Gemma 3 with pan-and-scan: a wide image gets crops, each a whole image sequence in the processor's own text; the
    encoder's ids, token types and pixels equal the processor's, and prefix sharing equals whole forwards."""
    from trl_vlprm.guidance.policy import Candidate
    from trl_vlprm.guidance.scorer import PRMScorer

    folder = build_tiny_vlm(tmp_path / "gemma3", arch="gemma3", seed=0)
    config = json.loads((folder / "processor_config.json").read_text())
    config["image_processor"].update(do_pan_and_scan=True, pan_and_scan_min_crop_size=8)  # the tiny images are small
    (folder / "processor_config.json").write_text(json.dumps(config))
    processor, family = load_processor(folder), get_family("gemma3")
    wide, square = _image(40, 120), _image(40, 40, seed=1)
    crops = processor.image_processor(images=[wide, square])["num_crops"]
    assert list(crops) == [3, 0]  # the wide image is cropped, the square one is not
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Count."}]}],
        add_generation_prompt=True,
        tokenize=False,
    )
    # transformers' processor takes pan-and-scan as call options (its defaults override the image processor's saved
    # settings); this library's encoding reads the saved settings, so training and scoring agree with each other.
    options = {"do_pan_and_scan": True, "pan_and_scan_min_crop_size": 8}
    expected = processor(text=[text], images=[wide, square], return_tensors="pt", **options)
    encoded = encode_prompt(processor, "<image><image>Count.", [wide, square])
    assert encoded.input_ids == expected["input_ids"][0].tolist()
    assert encoded.mm_token_type_ids == expected["token_type_ids"][0].tolist()
    assert family.image_token_counts(processor, [wide, square]) == [4 * 4, 4]  # image_seq_length 4, 3 crops
    assert sum(encoded.mm_token_type_ids) == 20
    inputs = family.image_inputs(processor, [wide, square])
    assert set(inputs) == {"pixel_values"} and torch.equal(inputs["pixel_values"], expected["pixel_values"])

    scorer = PRMScorer.from_pretrained(folder, head="generative")
    question = {"id": "q", "prompt": "<image><image>Count.", "images": [wide, square]}
    candidates = [Candidate(steps=["There are 3 circles.", "So the answer is B."]), Candidate(steps=["Count."])]
    shared, whole = scorer.score(question, candidates), scorer.score_plain(question, candidates)
    assert max(abs(a - b) for s, w in zip(shared, whole) for a, b in zip(s, w)) < 1e-5
    assert [len(row) for row in shared] == [2, 1]
