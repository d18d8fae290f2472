"""Published PRMs by hub id: the head, input layout, system prompt and pixel bounds their authors' code scores with.

A checkpoint trained here records all of this in its config (`prm_head`, `prm_layout`, ...); a published PRM does
not, so `load_prm` and `PRMScorer.from_pretrained` look its id up here. Each preset says where its settings come from.
A folder is matched to a preset by its id (`"ob11/Qwen-VL-PRM-7B"`) or by the hub cache folder it lies in
(`.../models--ob11--Qwen-VL-PRM-7B/snapshots/<commit>`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from trl_vlprm.modeling.encoding import PAPER_PRM_SYSTEM_PROMPT, PRMLayout
from trl_vlprm.registry import Registry


@dataclass(frozen=True)
class PRMPreset:
    """How a published PRM is scored.

    Attributes:
        repo_id: its hub id.
        head: "generative" (the LM's verdict-token logits) or "value" (a token-classification head).
        layout: its input layout, system prompt, separator and verdict tokens.
        min_pixels: the image processor's minimum image area its authors score with (VL PRMs).
        max_pixels: the image processor's maximum image area.
        source: where these settings are read from.
    """

    repo_id: str
    head: str
    layout: PRMLayout
    min_pixels: int | None = None
    max_pixels: int | None = None
    source: str = ""


PRESETS: Registry[PRMPreset] = Registry("PRM preset")


def register_preset(preset: PRMPreset) -> PRMPreset:
    """Add a preset under its repo id."""
    PRESETS.register(preset.repo_id)(preset)
    return preset


_PAPER_SOURCE = (
    "theogbrand/vlprm eval/tts_eval/reward_guided_search/VisualPRMv2.py (VisualPRM.get_reward, inference_single) "
    "and prompts.py (PRM_SYSTEM_PROMPT_NORMAL_TOK_V2)"
)
for _size in ("3B", "7B"):
    register_preset(
        PRMPreset(
            repo_id=f"ob11/Qwen-VL-PRM-{_size}",
            head="generative",
            layout=PRMLayout(name="multi_turn", system_prompt=PAPER_PRM_SYSTEM_PROMPT),
            min_pixels=256 * 28 * 28,
            max_pixels=1280 * 28 * 28,
            source=_PAPER_SOURCE,
        )
    )
for _size in ("7B", "72B"):
    register_preset(
        PRMPreset(
            repo_id=f"Qwen/Qwen2.5-Math-PRM-{_size}",
            head="value",  # Qwen2ForProcessRewardModel: 2-class MLP head, P(correct) = softmax[..., 1]
            layout=PRMLayout(
                name="steps",
                step_separator="<extra_0>",
                system_prompt="Please reason step by step, and put your final answer within \\boxed{}.",
            ),
            source="Qwen/Qwen2.5-Math-PRM-7B model card (make_step_rewards) and modeling_qwen2_rm.py",
        )
    )
register_preset(
    PRMPreset(
        repo_id="peiyi9979/math-shepherd-mistral-7b-prm",
        head="generative",
        # f"{question} {output}", output = steps each ending in " ки", joined by "\n"; P("+") against "-" at "ки".
        layout=PRMLayout(name="text", step_separator=" ки", prompt_suffix=" ", step_joiner="\n"),
        source="peiyi9979/math-shepherd-mistral-7b-prm model card (step tag 'ки', good/bad tokens '+'/'-')",
    )
)

_HUB_CACHE_FOLDER = re.compile(r"^models--(?P<owner>[^/]+?)--(?P<name>[^/]+)$")


def repo_id_of(name_or_path: str | Path) -> str | None:
    """The hub id a string names: itself when it looks like `owner/name` and is no local folder, else the id of the
    hub cache folder the path lies in (`models--owner--name`), else None."""
    text = str(name_or_path)
    path = Path(text)
    for part in reversed(path.parts):
        match = _HUB_CACHE_FOLDER.match(part)
        if match:
            return f"{match['owner']}/{match['name']}"
    if not path.exists() and re.fullmatch(r"[\w.-]+/[\w.-]+", text):
        return text
    return None


def find_preset(name_or_path: str | Path) -> PRMPreset | None:
    """The preset of a hub id or of a folder in the hub cache; None when it is no known published PRM."""
    for key in (str(name_or_path), repo_id_of(name_or_path)):
        if key in PRESETS:
            return PRESETS.get(key)
    return None


def get_preset(repo_id: str) -> PRMPreset:
    """The preset registered under `repo_id` (or the hub cache folder of one).

    Raises:
        KeyError: no such preset (the message lists the known ones).
    """
    return find_preset(repo_id) or PRESETS.get(repo_id)
