"""The wire format that carries a solution's steps inside a judge prompt, as a JSON block a program can read back.

The judge client (`trl_vlprm.labeling.judge`) writes it into the user message; the testbed's loopback judge server
(`trl_vlprm.testbed.judge_server`) reads it to answer from its gold lookup. It lives here, below both, so that
neither imports the other.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

STEPS_BEGIN, STEPS_END = "<steps_json>", "</steps_json>"
_BLOCK = re.compile(re.escape(STEPS_BEGIN) + r"(.*?)" + re.escape(STEPS_END), re.S)


def write_steps_block(question_id: str, steps: Sequence[str], step_types: Sequence[str | None]) -> str:
    """The block for one solution: `{"question_id", "steps": [{"index", "type", "text"}, ...]}` between the markers.

    Example: `write_steps_block("q0", ["a", "b"], ["perception", None])` gives `<steps_json>{"question_id": "q0",
    "steps": [{"index": 0, "type": "perception", "text": "a"}, {"index": 1, "type": "unknown", "text": "b"}]}
    </steps_json>` (on one line).
    """
    listing = [
        {"index": i, "type": kind or "unknown", "text": step} for i, (step, kind) in enumerate(zip(steps, step_types))
    ]
    return f"{STEPS_BEGIN}{json.dumps({'question_id': str(question_id), 'steps': listing})}{STEPS_END}"


def read_steps_block(messages: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The `{"question_id", "steps"}` object in the last of the chat `messages` that carries a block (text or parts).

    Raises `ValueError` when no message carries a block, or the block is not JSON.
    """
    for message in reversed(messages):
        content = message.get("content")
        texts = [content] if isinstance(content, str) else [p.get("text", "") for p in content or []]
        for text in texts:
            match = _BLOCK.search(text or "")
            if match:
                return json.loads(match.group(1))
    raise ValueError(f"no {STEPS_BEGIN}...{STEPS_END} block in the messages")
