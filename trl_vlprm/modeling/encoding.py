"""PRM input layouts: how a question and its steps become token ids, and where each step's score is read.

One component serves training (`trl_vlprm.trainer.tokenization.tokenize_row`), scoring (`PRMScorer`) and every other
backend, so a PRM always scores the layout it was trained on. The layout is saved in the checkpoint's config
(`PRMLayout.save_to_config`) and read back by the scorer (`PRMLayout.from_config`).

Three layouts:

- **"steps"** (the default; TRL's former PRMTrainer layout): the prompt through the chat template (a vision processor
  or a chat prompt; a plain string prompt with a text tokenizer is BOS + the raw prompt, TRL's text format), then
  `step_1 + separator + step_2 + separator ...` in one assistant turn. Each step + separator is tokenized apart (as
  TRL did, so text rows give TRL 1.13's exact ids); the score of step i is read at the last token of
  `step_i + separator`.
- **"multi_turn"** (the paper's VL-PRMs, `ob11/Qwen-VL-PRM-*`): a system turn (`PAPER_PRM_SYSTEM_PROMPT`), a first user
  turn with the image(s) and `### Question:\\n{question}\\n\\n### Solution Process:\\n{step 1}`, then for each later
  step an assistant turn holding the verdict of the step before (`+` when scoring; the label when training) and a user
  turn with the step. Step k is scored at the last token of the generation prompt that follows its user turn: the
  PRM's next token there is its verdict. The whole conversation is tokenized as one string, as the authors' code does.
- **"text"** (text PRMs read by their authors' code as one string, e.g. Math-Shepherd): the tokenizer's special
  tokens (BOS for Llama/Mistral tokenizers) + prompt +
  `prompt_suffix` + `step_1 + separator` + `step_joiner` + `step_2 + separator` ..., tokenized as one string; the
  score of step i is read at the last token of its separator.

For "multi_turn" and "text" a candidate's tokens are located by character offsets in the one-string tokenization, so
scores sit exactly where a whole-string forward reads them, and the question prefix (the image and the question) is
shared between candidates whenever its tokens are a prefix of the candidate's (checked, never assumed).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from trl_vlprm.data.schema import IMAGE_PLACEHOLDER, RecordError, load_image
from trl_vlprm.modeling.families import family_of_processor
from trl_vlprm.modeling.processor import get_tokenizer
from trl_vlprm.types import DEFAULT_STEP_SEPARATOR

LAYOUTS = ("steps", "multi_turn", "text")

# theogbrand/vlprm eval/tts_eval/reward_guided_search/prompts.py, PRM_SYSTEM_PROMPT_NORMAL_TOK_V2 (the file defines
# the name twice; this is the second definition, the one `VisualPRMv2.VisualPRM` reads).
PAPER_PRM_SYSTEM_PROMPT = (
    "**You are a process supervision model for visual reasoning tasks. You will receive an image and an image-based "
    "problem statement, followed by solution steps to evaluate.**\n\nFirst round: problem statement and first "
    "solution step.  \nSubsequent rounds: one new step per round.\n\nAssess the cumulative correctness of the entire "
    "solution up to each step.\n\n## Evaluation Criteria:\n\n1. **Visual Accuracy**: Are visual elements from the "
    "image correctly identified (shapes, colors, positions, quantities, spatial relationships)?\n\n2. **Logical "
    "Validity**: Do all inferences and calculations follow correctly from the image and previous steps?\n\n## "
    'Response:\n- **"+"** if correct up to this step\n- **"-"** if any error exists up to this step\n\nOnly respond '
    'with "+" or "-". No explanations.\n\nAn error in any step invalidates all subsequent steps.'
)
# The paper's first user turn (VisualPRMv2.get_reward).
MULTI_TURN_FIRST_TURN = "### Question:\n{question}\n\n### Solution Process:\n{step}"
_SENTINEL = "\x00trl_vlprm_step\x00"  # marks where step 1 starts in a rendered conversation


@dataclass(frozen=True)
class PRMLayout:
    """How a PRM reads a question and its steps (saved in the checkpoint config as `prm_*` attributes).

    Attributes:
        name: "steps", "multi_turn" or "text" (see the module docstring).
        step_separator: "steps"/"text": text after every step, the score read at its last token.
        system_prompt: "steps"/"multi_turn": a system turn before the question (None: no system turn).
        positive_token: the verdict token of a correct step (generative head; multi-turn assistant turns).
        negative_token: the verdict token of a wrong step.
        prompt_suffix: "text": text between the prompt and the first step (Math-Shepherd: " ").
        step_joiner: "text": text between one step's separator and the next step (Math-Shepherd: "\\n").
        word_verdicts: the step type (e.g. "perception") whose steps the PRM was trained to judge after every word
            (`testbed.label_every_word`); scorers cut such steps with `types.word_pieces` and score each by its
            lowest word verdict. None: every step is scored at its end only.
    """

    name: str = "steps"
    step_separator: str = DEFAULT_STEP_SEPARATOR
    system_prompt: str | None = None
    positive_token: str = "+"
    negative_token: str = "-"
    prompt_suffix: str = ""
    step_joiner: str = ""
    word_verdicts: str | None = None

    def __post_init__(self):
        if self.name not in LAYOUTS:
            raise ValueError(f"PRM layout must be one of {LAYOUTS}, got {self.name!r}")

    @classmethod
    def named(
        cls,
        name: str,
        step_separator: str = DEFAULT_STEP_SEPARATOR,
        system_prompt: str | None = None,
        word_verdicts: str | None = None,
    ) -> PRMLayout:
        """A layout by name with its defaults: "multi_turn" gets the paper's system prompt unless one is given
        ("" for none)."""
        if system_prompt is None and name == "multi_turn":
            system_prompt = PAPER_PRM_SYSTEM_PROMPT
        return cls(
            name=name, step_separator=step_separator, system_prompt=system_prompt or None, word_verdicts=word_verdicts
        )

    def save_to_config(self, config: Any) -> None:
        """Record the layout on a model config (`prm_layout`, `prm_step_separator`, ...), saved with the weights."""
        for key, value in asdict(self).items():
            setattr(config, "prm_layout" if key == "name" else f"prm_{key}", value)

    @classmethod
    def from_config(cls, config: Any) -> PRMLayout | None:
        """The layout saved on `config`; None when it records none. A checkpoint saved before layouts existed (only
        `prm_step_separator`) reads as the "steps" layout with that separator."""
        name = getattr(config, "prm_layout", None)
        separator = getattr(config, "prm_step_separator", None)
        if name is None and separator is None:
            return None
        values = {"name": name or "steps"}
        for key in cls.__dataclass_fields__:
            if key != "name" and getattr(config, f"prm_{key}", None) is not None:
                values[key] = getattr(config, f"prm_{key}")
        return cls(**values)


def is_vision_processor(processing_class: Any) -> bool:
    return hasattr(processing_class, "image_processor")


def _content_parts(text: str) -> list[dict[str, str]]:
    """Chat content parts of a text: each "<image>" placeholder becomes an image part."""
    out: list[dict[str, str]] = []
    for i, chunk in enumerate(text.split(IMAGE_PLACEHOLDER)):
        if i > 0:
            out.append({"type": "image"})
        if chunk:
            out.append({"type": "text", "text": chunk})
    return out


def prompt_to_messages(
    prompt: str | Sequence[Mapping[str, Any]], system_prompt: str | None = None
) -> list[dict[str, Any]]:
    """Chat messages for a prompt: a string becomes one user turn; "<image>" placeholders become image parts."""
    messages = []
    if system_prompt is not None:
        messages.append({"role": "system", "content": [{"type": "text", "text": system_prompt}]})
    if isinstance(prompt, str):
        return messages + [{"role": "user", "content": _content_parts(prompt)}]
    for message in prompt:
        content = message["content"]
        if isinstance(content, str):
            content = _content_parts(content)
        messages.append({"role": message["role"], "content": list(content)})
    return messages


def image_token_counts(processing_class: Any, images: Sequence[Any], row: Any = "?") -> list[int]:
    """Image tokens each image will occupy after the image processor resizes it (no pixels are computed).

    Raises:
        RecordError: an image the model family's image processor would refuse (it would not name the row).
    """
    return family_of_processor(processing_class).image_token_counts(processing_class, images, row)


@dataclass
class EncodedPrompt:
    """Token ids of a prompt (image placeholders already expanded) and the images it references.

    `text` is the rendered prompt before image expansion (one-string layouts), used to check that a candidate's
    tokens start with the prompt's.
    """

    input_ids: list[int]
    mm_token_type_ids: list[int] | None
    images: list[Any]
    text: str | None = None


@dataclass
class EncodedSteps:
    """A candidate's tokens after the prompt and the index (into `input_ids`) of each step's score token.

    `shares_prefix` False: the one-string tokenization merged the prompt's last token with the first step's, so
    `input_ids` holds the whole sequence (prompt included) and must be run without the shared prefix.
    """

    input_ids: list[int]
    ends: list[int]
    shares_prefix: bool = True
    mm_token_type_ids: list[int] | None = field(default=None, repr=False)  # whole-sequence rows only


def _render(processing_class: Any, messages: list[dict[str, Any]], generation_prompt: bool) -> str:
    return processing_class.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=False)


def _expand_images(processing_class: Any, text: str, images: Sequence[Any], row: Any) -> str:
    """Each image's placeholder expanded into the tokens the processor will put there (the model family knows how)."""
    return family_of_processor(processing_class).expand_image_tokens(processing_class, text, images, row)


def mm_token_type_ids(processing_class: Any, ids: Sequence[int]) -> list[int] | None:
    """Per-token multimodal types of `ids` as the model family's forward reads them; None for a text tokenizer."""
    family = family_of_processor(processing_class)
    return family.mm_token_type_ids(processing_class, ids) if family is not None else None


def encode_prompt(
    processing_class: Any,
    prompt: str | Sequence[Mapping[str, Any]],
    images: Sequence[Any] = (),
    row: Any = "?",
    system_prompt: str | None = None,
) -> EncodedPrompt:
    """Token ids of the prompt part of a row in the "steps" layout.

    With a plain tokenizer and a string prompt this is TRL's former layout (optional BOS + the raw prompt); chat
    prompts go through the tokenizer's chat template. With a vision processor the chat template is always used and
    each image's placeholder becomes as many image tokens as the image processor will produce for it.
    """
    tokenizer = get_tokenizer(processing_class)
    if not is_vision_processor(processing_class):
        if images:
            raise RecordError(row, "images", "the row has images but the processing class is a text tokenizer")
        if isinstance(prompt, str) and system_prompt is None:
            ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            if tokenizer.bos_token_id is not None:
                ids = [tokenizer.bos_token_id] + ids
        else:
            messages = prompt_to_messages(prompt, system_prompt)
            if isinstance(prompt, str):  # a text tokenizer's template may not read content parts
                messages = [
                    {"role": m["role"], "content": "".join(part.get("text", "") for part in m["content"])}
                    for m in messages
                ]
            ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
            ids = list(ids["input_ids"] if isinstance(ids, Mapping) else ids)
        return EncodedPrompt(list(ids), None, [])

    pil_images = [load_image(image, row, f"images[{i}]") for i, image in enumerate(images)]
    text = _render(processing_class, prompt_to_messages(prompt, system_prompt), generation_prompt=True)
    ids = tokenizer(_expand_images(processing_class, text, pil_images, row), add_special_tokens=False)["input_ids"]
    return EncodedPrompt(list(ids), mm_token_type_ids(processing_class, ids), pil_images)


def encode_steps(tokenizer: Any, steps: Sequence[str], step_separator: str) -> list[list[int]]:
    """Token ids of each step followed by the separator (tokenized apart, as TRL did: step ends stay aligned)."""
    separator_ids = tokenizer.encode(step_separator, add_special_tokens=False)
    return [tokenizer(step, add_special_tokens=False)["input_ids"] + separator_ids for step in steps]


class PRMEncoder:
    """Encodes questions and candidates in one `PRMLayout` for one processing class.

    `encode_prompt` gives the question's tokens (shared by all its candidates); `encode_candidate` the tokens of one
    candidate after them and where each step is scored; `encode_row` a whole training row with the verdict of every
    step (its labels) in the multi-turn assistant turns.
    """

    def __init__(self, processing_class: Any, layout: PRMLayout | None = None):
        self.processing_class = processing_class
        self.tokenizer = get_tokenizer(processing_class)
        self.layout = layout or PRMLayout()
        self.is_vision = is_vision_processor(processing_class)
        if self.layout.name == "text" and self.is_vision:
            raise ValueError('the "text" PRM layout reads no images; use "steps" or "multi_turn" with a VL processor')

    # ---- the question ---------------------------------------------------------------------------------------

    def encode_prompt(self, prompt: Any, images: Sequence[Any] = (), row: Any = "?") -> EncodedPrompt:
        """Tokens of the question part every candidate shares (the image(s) included)."""
        layout = self.layout
        if layout.name == "steps":
            return encode_prompt(self.processing_class, prompt, images, row, layout.system_prompt)
        if not isinstance(prompt, str):
            raise RecordError(row, "prompt", f'the "{layout.name}" PRM layout needs a string prompt, not chat turns')
        pil_images = [load_image(image, row, f"images[{i}]") for i, image in enumerate(images)]
        if layout.name == "text":
            if pil_images:
                raise RecordError(row, "images", 'the row has images but the "text" PRM layout reads none')
            text = prompt  # the suffix goes with the steps: " " + "Step" may tokenize as one token
        else:
            rendered = _render(self.processing_class, self._messages(prompt, [_SENTINEL], ()), True)
            text = rendered[: rendered.index(_SENTINEL)]
        ids, _ = self._tokenize(text, pil_images, row)
        return EncodedPrompt(ids, mm_token_type_ids(self.processing_class, ids), pil_images, text)

    # ---- a candidate ----------------------------------------------------------------------------------------

    def encode_candidate(
        self,
        prompt: Any,
        encoded_prompt: EncodedPrompt,
        steps: Sequence[str],
        verdicts: Sequence[bool] | None = None,
        row: Any = "?",
    ) -> EncodedSteps:
        """Tokens of `steps` after the prompt and the index of each step's score token.

        Args:
            verdicts: multi-turn only: the verdict shown in the assistant turn after each step but the last (its
                label when training); default all correct, as the paper's `get_reward` scores.
        """
        if not steps:
            return EncodedSteps([], [])
        if self.layout.name == "steps":
            ids, ends = [], []
            for step_ids in encode_steps(self.tokenizer, steps, self.layout.step_separator):
                ids += step_ids
                ends.append(len(ids) - 1)
            return EncodedSteps(ids, ends)
        text, char_ends = self._render_candidate(prompt, encoded_prompt.text, steps, verdicts, row)
        ids, offsets = self._tokenize(text, encoded_prompt.images, row)
        token_ends = _tokens_ending_at(offsets, char_ends, row)
        prefix = encoded_prompt.input_ids
        if ids[: len(prefix)] == prefix and all(end >= len(prefix) for end in token_ends):
            return EncodedSteps(ids[len(prefix) :], [end - len(prefix) for end in token_ends])
        mm_types = mm_token_type_ids(self.processing_class, ids)
        return EncodedSteps(ids, token_ends, shares_prefix=False, mm_token_type_ids=mm_types)

    def encode_row(
        self, prompt: Any, images: Sequence[Any], steps: Sequence[str], verdicts: Sequence[bool] | None, row: Any
    ) -> tuple[EncodedPrompt, list[int], list[int]]:
        """A whole training row: the prompt, the full token ids (prompt included) and each step's score index."""
        encoded_prompt = self.encode_prompt(prompt, images, row)
        encoded = self.encode_candidate(prompt, encoded_prompt, steps, verdicts, row)
        if not encoded.shares_prefix:
            return encoded_prompt, encoded.input_ids, encoded.ends
        offset = len(encoded_prompt.input_ids)
        return encoded_prompt, encoded_prompt.input_ids + encoded.input_ids, [offset + end for end in encoded.ends]

    def conversation(
        self, prompt: str, steps: Sequence[str], verdicts: Sequence[bool] | None = None
    ) -> list[dict[str, Any]]:
        """The "multi_turn" layout's chat messages of a whole candidate (verdicts default all correct), image slots as
        `{"type": "image"}` parts: what a served PRM renders with its own chat template (plus a generation prompt)."""
        verdicts = [True] * (len(steps) - 1) if verdicts is None else list(verdicts)[: len(steps) - 1]
        return self._messages(prompt, steps, verdicts)

    # ---- one-string layouts ---------------------------------------------------------------------------------

    def _messages(self, prompt: str, steps: Sequence[str], verdicts: Sequence[bool]) -> list[dict[str, Any]]:
        """The paper's conversation: system, user (images, question, step 1), then (assistant verdict, user step)."""
        layout = self.layout
        messages: list[dict[str, Any]] = []
        if layout.system_prompt is not None:
            messages.append({"role": "system", "content": [{"type": "text", "text": layout.system_prompt}]})
        # Images placed before the question in the prompt come first, ahead of "### Question:", as the paper's
        # non-interleaved questions do; placeholders inside the question stay where they are (its interleaved ones).
        question = prompt.lstrip()
        leading = 0
        while question.startswith(IMAGE_PLACEHOLDER):
            question = question[len(IMAGE_PLACEHOLDER) :].lstrip()
            leading += 1
        first = MULTI_TURN_FIRST_TURN.format(question=question, step=steps[0])
        messages.append({"role": "user", "content": [{"type": "image"}] * leading + _content_parts(first)})
        for k, step in enumerate(steps[1:]):
            verdict = layout.positive_token if verdicts[k] else layout.negative_token
            messages.append({"role": "assistant", "content": [{"type": "text", "text": verdict}]})
            messages.append({"role": "user", "content": [{"type": "text", "text": step}]})
        return messages

    def _render_candidate(
        self, prompt: str, prompt_text: str, steps: Sequence[str], verdicts: Sequence[bool] | None, row: Any
    ) -> tuple[str, list[int]]:
        """The whole candidate as one string and the character offset where each step's score token ends."""
        layout = self.layout
        if layout.name == "text":
            text, ends = prompt_text + layout.prompt_suffix, []
            for k, step in enumerate(steps):
                text += (layout.step_joiner if k else "") + step + layout.step_separator
                ends.append(len(text))
            return text, ends
        verdicts = [True] * (len(steps) - 1) if verdicts is None else list(verdicts)[: len(steps) - 1]
        full = _render(self.processing_class, self._messages(prompt, steps, verdicts), True)
        ends = []
        for k in range(1, len(steps) + 1):
            # Step k is read where the conversation up to its user turn ends with a generation prompt; the chat
            # template must render that text as a prefix of the whole conversation (an assistant turn is its
            # generation prompt + its content).
            upto = _render(self.processing_class, self._messages(prompt, steps[:k], verdicts), True)
            if not full.startswith(upto) or not upto.startswith(prompt_text):
                raise RecordError(
                    row, "completions", "the chat template does not render step turns as prefixes of the conversation"
                )
            ends.append(len(upto))
        return full, ends

    def _tokenize(self, text: str, images: Sequence[Any], row: Any) -> tuple[list[int], list[tuple[int, int]]]:
        """One-string tokenization with character offsets (into `text`, before image expansion)."""
        shift = 0
        if self.is_vision:
            expanded = _expand_images(self.processing_class, text, images, row)
            shift = len(expanded) - len(text)  # every image sits before the first step
            text = expanded
        # A text PRM's own code encodes its string with the tokenizer's special tokens (Math-Shepherd: BOS first);
        # a chat template already wrote them.
        special = self.layout.name == "text"
        encoded = self.tokenizer(text, add_special_tokens=special, return_offsets_mapping=True)
        ids, offsets = list(encoded["input_ids"]), [(s - shift, e - shift) for s, e in encoded["offset_mapping"]]
        return ids, offsets


def _tokens_ending_at(offsets: Sequence[tuple[int, int]], char_ends: Sequence[int], row: Any) -> list[int]:
    """Index of the last token ending at each character offset (a score position must end a token)."""
    last_ending = {}
    for index, (_, end) in enumerate(offsets):
        last_ending[end] = index
    missing = [end for end in char_ends if end not in last_ending]
    if missing:
        raise RecordError(row, "completions", f"no token ends at character(s) {missing}: a step end merged with text")
    return [last_ending[end] for end in char_ends]
