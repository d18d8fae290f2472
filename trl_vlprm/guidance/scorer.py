"""`PRMScorer`: P(step correct) for every step of many candidate solutions, the question prefix encoded once.

Candidates of one question share the image(s) and the question: in a vision-language PRM that prefix (hundreds to
thousands of image tokens) dominates the cost. The scorer runs the prefix once (vision tower + one transformer pass
with `use_cache=True`), then scores candidates in batches: each batch gets a copy of the prefix key/value cache
expanded along the batch dimension and feeds only the candidates' step tokens (right-padded, attention mask over
prefix + suffix), with positions continuing after the prefix. The model family (`trl_vlprm.modeling.families`) gives
the positions: the prefix's as its forward would compute them (for Qwen-VL's 3-D rope, from the image sizes), and
the text after it exactly where a full forward places it, so the scores equal those of a plain full forward of each
candidate (checked to 1e-5 in the tests).

Token layout and score positions come from `trl_vlprm.modeling.encoding` (the trainer's): the "steps" layout
(`prompt_ids + (step_i + separator)...`, the score of step i read at the last token of `step_i + separator`), the
paper's "multi_turn" layout (each later step in its own user turn after a `+` assistant turn; every step of a
candidate is still scored in one forward pass, since the `+` turns are known), or the one-string "text" layout. The
layout is the one saved with the checkpoint, else the published PRM's preset (`trl_vlprm.modeling.presets`).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from transformers import Cache, PreTrainedModel

from trl_vlprm.guidance.policy import Candidate, Question
from trl_vlprm.guidance.word_verdicts import score_as_trained
from trl_vlprm.modeling.compat import CACHE_KEYWORD, output_cache
from trl_vlprm.modeling.devices import inference_dtype, load_kwargs, resolve_device
from trl_vlprm.modeling.encoding import EncodedSteps, PRMEncoder, PRMLayout, is_vision_processor
from trl_vlprm.modeling.families import family_of_processor
from trl_vlprm.modeling.heads import HEADS, correct_probability, load_prm, prm_token_ids, resolve_preset
from trl_vlprm.modeling.presets import PRMPreset
from trl_vlprm.modeling.processor import get_tokenizer, load_processor, require_image_support
from trl_vlprm.modeling.readout import check_verdict_tokens, class_logits
from trl_vlprm.types import DEFAULT_STEP_SEPARATOR

logger = logging.getLogger(__name__)


@dataclass
class _Prefix:
    """The encoded question and, once run, its key/value cache and the next text position."""

    row: Any  # the question's id, for error messages
    prompt: Any  # the question's prompt (one-string layouts render candidates with it)
    encoded: Any  # its `EncodedPrompt`
    input_ids: torch.Tensor  # [1, P]
    mm_token_type_ids: torch.Tensor | None  # [1, P] (vision processors)
    image_inputs: dict[str, torch.Tensor]  # the model family's image tensors (empty without images)
    cache: Cache | None = None  # the prefix's cache (keys/values; recurrent states for linear-attention layers)
    next_position: int = 0  # position of the first token after the prefix (on every rope axis)

    def same_as(self, other: _Prefix) -> bool:
        if self.image_inputs.keys() != other.image_inputs.keys():
            return False
        return torch.equal(self.input_ids, other.input_ids) and all(
            torch.equal(tensor, other.image_inputs[key]) for key, tensor in self.image_inputs.items()
        )


class PRMScorer:
    """Scores every step of many candidates to one question with a trained PRM (value or generative head).

    Memory bound (per `score` call): the prefix's key/value cache once (P tokens, kept between calls on the same
    question) plus, for the batch being scored, `batch_size x (P + S)` key/value entries (the expanded prefix copy
    and the suffixes: attention reads the whole cache, so each row materialises it) and the activations of
    `batch_size x S` suffix tokens, with P the prefix tokens (image tokens included) and S the longest suffix (all
    steps + separators) in the batch. Candidates are sorted by length before batching, so S is close to each row's
    own length. The generative head reads only the step-end hidden states, through the two verdict rows of the LM
    head (never `batch x S x vocab`, nor `batch x S` full rows).

    Args:
        model: a PRM from `load_prm` (value head: token classification with 1 or 2 labels; generative: the LM).
        processing_class: its tokenizer or image-only processor (`load_processor`).
        step_separator: text appended to each step; default: the separator the PRM was trained with
            (`config.prm_step_separator`), else "\\n". Passing a different one than the trained one logs a warning:
            the PRM would score a layout it never saw.
        layout: the PRM input layout; default: the one saved in the config (`PRMLayout.from_config`), else the
            "steps" layout. `step_separator`, when given, replaces its separator.
        batch_size: candidates per forward pass.
        head: "value" or "generative"; default: `config.prm_head`, else "value".
        reuse_prefix: keep the last question's prefix cache, so repeated calls on one question (beam search, step
            selection) run the image and question once in all.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        processing_class: Any,
        step_separator: str | None = None,
        batch_size: int = 16,
        head: str | None = None,
        reuse_prefix: bool = True,
        layout: PRMLayout | None = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        config = model.config
        self.model = model.eval()
        self.processing_class = processing_class
        self.tokenizer = get_tokenizer(processing_class)
        self.head = head or getattr(config, "prm_head", None) or "value"
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
        self.layout = self._resolve_layout(config, layout, step_separator)
        self.step_separator = self.layout.step_separator
        self.encoder = PRMEncoder(processing_class, self.layout)
        self.batch_size = batch_size
        self.reuse_prefix = reuse_prefix
        self.token_ids: tuple[int, int] | None = self._verdict_token_ids(model) if self.head == "generative" else None
        self.is_vision = is_vision_processor(processing_class)
        self.family = family_of_processor(processing_class)  # None: a text tokenizer (1-D positions)
        self._cached_prefix: _Prefix | None = None

    @staticmethod
    def _resolve_layout(config: Any, layout: PRMLayout | None, step_separator: str | None) -> PRMLayout:
        """The given layout, else the checkpoint's, else "steps"; `step_separator`, when given, replaces its own."""
        trained = getattr(config, "prm_step_separator", None)
        if step_separator is not None and trained is not None and step_separator != trained:
            logger.warning(
                "PRMScorer: step_separator %r differs from the one the PRM was trained with (%r); scores are read "
                "on a layout the PRM never saw",
                step_separator,
                trained,
            )
        layout = layout or PRMLayout.from_config(config) or PRMLayout(step_separator=DEFAULT_STEP_SEPARATOR)
        if step_separator is not None:
            layout = replace(layout, step_separator=step_separator)
        return layout

    def _verdict_token_ids(self, model: PreTrainedModel) -> tuple[int, int]:
        """The generative head's (positive, negative) token ids: the checkpoint's, else the layout's tokens' ids."""
        config = model.config
        positive = getattr(config, "prm_positive_token_id", None)
        negative = getattr(config, "prm_negative_token_id", None)
        has_ids = positive is not None and negative is not None
        token_ids = (
            (positive, negative)
            if has_ids
            else prm_token_ids(self.tokenizer, self.layout.positive_token, self.layout.negative_token)
        )
        verdicts = (self.layout.positive_token, self.layout.negative_token)
        check_verdict_tokens(model, token_ids, verdicts, where=getattr(config, "_name_or_path", "the PRM"))
        return token_ids

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        head: str | None = None,
        dtype: torch.dtype | str | None = None,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        revision: str | None = None,
        preset: str | PRMPreset | None = None,
        device: str | torch.device = "auto",
        **kwargs,
    ) -> PRMScorer:
        """Load a PRM from a folder or Hub repo id (`load_prm` + `load_processor`); `kwargs` go to `PRMScorer`.

        A published PRM needs nothing but its repo id (e.g. the paper's ob11 7B PRM): `from_pretrained(repo_id)`
        takes the head, input layout, system prompt and pixel bounds from its preset (`trl_vlprm.modeling.presets`).
        A checkpoint trained here reads its own saved settings (they win over a preset). Anything else is refused
        unless `head` is given (`MissingPRMMetadataError`), so a base model is never scored through a randomly
        initialised head.

        Args:
            name_or_path: a local folder or a Hub repo id (resolved as transformers does; offline: from the cache).
            head: default: the head saved with the checkpoint, else the preset's.
            dtype: parameter dtype ("auto": the checkpoint's, "bfloat16", ...); default float32 on the CPU and the
                checkpoint's own on an accelerator.
            min_pixels: image processor minimum area; default: the preset's, else the saved processor's.
            max_pixels: image processor maximum area; default: the preset's, else the saved processor's.
            revision: branch, tag or commit of a repo id.
            preset: read the model as this published PRM (an id from `trl_vlprm.modeling.presets`), e.g. for a
                local copy; default: the preset `name_or_path` names (repo id or hub cache folder), if any.
            device: where the model runs: "auto" (this process's accelerator: `cuda:$LOCAL_RANK` under `accelerate
                launch`, else cuda:0 / mps / xpu, else the CPU; `trl_vlprm.modeling.devices`), or "cpu", "cuda:1", ...

        The same PRM on a vLLM pooling engine is `VLLMScorer.from_pretrained(folder)` (the `vllm:<folder>` and
        `prm:vllm:<folder>` scorer specs).
        """
        chosen = resolve_preset(name_or_path, preset)
        if chosen is not None:
            min_pixels = min_pixels if min_pixels is not None else chosen.min_pixels
            max_pixels = max_pixels if max_pixels is not None else chosen.max_pixels
        placed = resolve_device(device)
        model = load_prm(
            name_or_path,
            head=head,
            dtype=inference_dtype(dtype, placed),
            revision=revision,
            preset=chosen,
            **load_kwargs(placed),
        ).to(placed)
        processor = load_processor(name_or_path, min_pixels=min_pixels, max_pixels=max_pixels, revision=revision)
        return cls(model, processor, head=head, **kwargs)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ---- encoding -------------------------------------------------------------------------------------------

    def _encode_prefix(self, question: Question) -> _Prefix:
        row = question.get("id", "?")
        if question.get("images") and not self.is_vision:
            require_image_support(self.processing_class, self.model.config.model_type, f"question {row}")
        encoded = self.encoder.encode_prompt(question["prompt"], question.get("images") or [], row)
        device = self.device
        input_ids = torch.tensor([encoded.input_ids], device=device)
        prefix = _Prefix(row, question["prompt"], encoded, input_ids, None, {})
        if encoded.mm_token_type_ids is not None:
            prefix.mm_token_type_ids = torch.tensor([encoded.mm_token_type_ids], device=device)
        if encoded.images:
            image_inputs = self.family.image_inputs(self.processing_class, encoded.images)
            prefix.image_inputs = {
                key: tensor.to(device, self.model.dtype) if tensor.is_floating_point() else tensor.to(device)
                for key, tensor in image_inputs.items()
            }
        return prefix

    def _suffixes(self, prefix: _Prefix, candidates: Sequence[Candidate]) -> list[EncodedSteps]:
        """Per candidate: its tokens after the prefix and the index of each step's score token."""
        return [
            self.encoder.encode_candidate(prefix.prompt, prefix.encoded, candidate.steps, row=prefix.row)
            for candidate in candidates
        ]

    def _vision_inputs(self, prefix: _Prefix) -> dict[str, torch.Tensor]:
        inputs = {}
        if prefix.mm_token_type_ids is not None:  # under the name the family's model reads them by
            inputs[self.family.token_types_input] = prefix.mm_token_type_ids
        return {**inputs, **prefix.image_inputs}

    def _prefix_positions(self, prefix: _Prefix) -> torch.Tensor:
        """Rope positions of the prefix, in the shape the model's `position_ids` takes ([1, P] for a text model)."""
        if self.family is None:
            return torch.arange(prefix.input_ids.shape[1], device=self.device)[None]
        return self.family.prefix_positions(
            self._backbone(), prefix.input_ids, prefix.mm_token_type_ids, prefix.image_inputs
        )

    def _text_positions(self, start: int, length: int, batch: int) -> torch.Tensor:
        """Positions of `batch` rows of `length` tokens continuing the prefix at position `start`."""
        if self.family is None:
            return torch.arange(start, start + length)[None].expand(batch, -1)
        return self.family.text_positions(start, length, batch)

    def _backbone(self) -> torch.nn.Module:
        # The transformer under the head (the VLM's base model, or a text LM's): runs the prefix without
        # computing head outputs nobody reads (for a generative PRM, P x vocab logits).
        return getattr(self.model, self.model.base_model_prefix)

    # ---- scoring --------------------------------------------------------------------------------------------

    def _step_probabilities(self, inputs: dict[str, Any], ends: Sequence[Sequence[int]]) -> list[list[float]]:
        """One forward pass; P(correct) read at `ends[row]` (indices into the fed tokens) of each row."""
        rows = torch.tensor([r for r, row_ends in enumerate(ends) for _ in row_ends], dtype=torch.long)
        cols = torch.tensor([c for row_ends in ends for c in row_ends], dtype=torch.long)
        # The head reads the step-end hidden states only: the generative head through its two verdict rows.
        positions = (rows.to(self.device), cols.to(self.device))
        selected = class_logits(self.model, inputs, self.head, self.token_ids, positions)
        probabilities = correct_probability(selected).tolist()
        out, start = [], 0
        for row_ends in ends:
            out.append(probabilities[start : start + len(row_ends)])
            start += len(row_ends)
        return out

    def _run_prefix(self, prefix: _Prefix) -> None:
        positions = self._prefix_positions(prefix)
        outputs = self._backbone()(
            input_ids=prefix.input_ids,
            position_ids=positions,
            use_cache=True,
            **self._vision_inputs(prefix),
        )
        prefix.cache = output_cache(outputs)
        prefix.next_position = int(positions.max()) + 1

    def _expanded_cache(self, prefix: _Prefix, batch: int) -> Cache:
        # Whatever each layer keeps (keys and values; a linear-attention layer's conv and recurrent states, as in
        # Qwen3.5) is copied `batch` times by the cache's own beam reordering, so the kept prefix is never written to.
        cache = copy.deepcopy(prefix.cache)
        cache.reorder_cache(torch.zeros(batch, dtype=torch.long, device=self.device))
        return cache

    @torch.inference_mode()
    def score(self, question: Question, candidates: Sequence[Candidate]) -> list[list[float]]:
        """P(step correct) for every step of every candidate (one list per candidate, one score per step)."""
        return self.score_with_input_lengths(question, candidates)[0]

    @torch.inference_mode()
    def score_with_input_lengths(
        self, question: Question, candidates: Sequence[Candidate]
    ) -> tuple[list[list[float]], list[list[int]]]:
        """`score`, plus for every step the number of tokens the PRM read to score it.

        A step's input length is the length of the sequence a plain forward would need to produce its score: the
        prefix (image tokens included) and the candidate's tokens up to the score position (in the multi-turn
        layout, the paper's `input_ids.shape[1]` for that step). The paper's reward (`aggregation.paper_reward`)
        divides by it. A PRM that judges a step type word by word (`layout.word_verdicts`) scores such steps by
        their lowest word verdict (`word_verdicts.score_as_trained`).
        """
        return score_as_trained(self._score_steps, question, candidates, self.layout.word_verdicts)

    def _score_steps(
        self, question: Question, candidates: Sequence[Candidate]
    ) -> tuple[list[list[float]], list[list[int]]]:
        if not candidates:
            return [], []
        prefix = self._prefix_with_cache(question)
        prefix_length = prefix.input_ids.shape[1]
        suffixes = self._suffixes(prefix, candidates)
        scores: list[list[float]] = [[] for _ in candidates]
        input_lengths = [
            [(prefix_length if suffix.shares_prefix else 0) + end + 1 for end in suffix.ends] for suffix in suffixes
        ]
        # A one-string layout whose first step's tokens merged with the question's cannot reuse the prefix cache:
        # such candidates run whole (rare: a step starting with characters that join the question's last token).
        for i, suffix in enumerate(suffixes):
            if suffix.input_ids and not suffix.shares_prefix:
                scores[i] = self._score_whole(prefix, suffix)
        # Longest first, so each batch pads little and the first batch shows the peak memory.
        shared = [i for i, suffix in enumerate(suffixes) if suffix.input_ids and suffix.shares_prefix]
        order = sorted(shared, key=lambda i: -len(suffixes[i].input_ids))
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            batch = [suffixes[i] for i in chunk]
            inputs = self._batch_inputs(prefix, batch)
            for i, probabilities in zip(chunk, self._step_probabilities(inputs, [suffix.ends for suffix in batch])):
                scores[i] = probabilities
        return scores, input_lengths

    def _prefix_with_cache(self, question: Question) -> _Prefix:
        """The question's prefix, run once: the kept one when it is the same question (`reuse_prefix`)."""
        prefix = self._encode_prefix(question)
        if self.reuse_prefix and self._cached_prefix is not None and self._cached_prefix.same_as(prefix):
            return self._cached_prefix
        self._run_prefix(prefix)
        self._cached_prefix = prefix if self.reuse_prefix else None
        return prefix

    def _batch_inputs(self, prefix: _Prefix, batch: Sequence[EncodedSteps]) -> dict[str, Any]:
        """Model inputs for candidates after a run prefix: right-padded suffixes (longest first), a mask over prefix +
        suffix, positions continuing the prefix's and a copy of its cache per row."""
        prefix_length = prefix.input_ids.shape[1]
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        longest = len(batch[0].input_ids)
        input_ids = torch.full((len(batch), longest), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), prefix_length + longest), dtype=torch.long)
        attention_mask[:, :prefix_length] = 1
        for row, suffix in enumerate(batch):
            ids = suffix.input_ids
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention_mask[row, prefix_length : prefix_length + len(ids)] = 1
        positions = self._text_positions(prefix.next_position, longest, len(batch))
        return {
            "input_ids": input_ids.to(self.device),
            "attention_mask": attention_mask.to(self.device),
            "position_ids": positions.to(self.device),
            CACHE_KEYWORD: self._expanded_cache(prefix, len(batch)),
            "use_cache": True,
        }

    def _score_whole(self, prefix: _Prefix, suffix: EncodedSteps) -> list[float]:
        """One plain forward of a whole sequence (`suffix.input_ids` with the prompt, or prefix + suffix)."""
        if suffix.shares_prefix:
            prefix_length = prefix.input_ids.shape[1]
            ids = torch.cat([prefix.input_ids, torch.tensor([suffix.input_ids], device=self.device)], dim=1)
            ends = [prefix_length + end for end in suffix.ends]
            mm_types = None
            if prefix.mm_token_type_ids is not None:
                suffix_types = torch.zeros((1, len(suffix.input_ids)), dtype=torch.long, device=self.device)
                mm_types = torch.cat([prefix.mm_token_type_ids, suffix_types], dim=1)
        else:
            ids, ends = torch.tensor([suffix.input_ids], device=self.device), suffix.ends
            mm_types = None
            if suffix.mm_token_type_ids is not None:
                mm_types = torch.tensor([suffix.mm_token_type_ids], device=self.device)
        inputs: dict[str, Any] = {"input_ids": ids, **self._vision_inputs(prefix)}
        if mm_types is not None:
            inputs[self.family.token_types_input] = mm_types
        return self._step_probabilities(inputs, [ends])[0]

    @torch.inference_mode()
    def score_plain(self, question: Question, candidates: Sequence[Candidate]) -> list[list[float]]:
        """Reference: each candidate alone, one plain full forward (vision tower and prefix included), no cache.

        The model computes its own positions here, so this also checks the positions `score` builds. Every step is
        read at its end as given (no word pooling, `layout.word_verdicts`: the raw verdicts `score` pools).
        """
        prefix = self._encode_prefix(question)
        suffixes = self._suffixes(prefix, candidates)
        return [self._score_whole(prefix, suffix) if suffix.input_ids else [] for suffix in suffixes]

    def clear_cache(self) -> None:
        """Drop the kept prefix cache (frees its memory)."""
        self._cached_prefix = None
