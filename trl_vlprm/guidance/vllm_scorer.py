"""`VLLMScorer`: the `StepScorer` of a trained PRM on a vLLM pooling engine, scores equal to `PRMScorer`'s.

vLLM runs both PRM heads as a *pooling* model with the `token_classify` task: for every prompt token it returns the
label probabilities, and a step's score is read at its last token (the separator), where the trainer put its label.

- **value head** (the model family's token-classification class): vLLM converts the architecture to its classifier
  model, whose weight mapper may expect the head under another name (`vllm_checkpoint` writes a renamed view).
- **generative head** (the VLM's LM head): vLLM takes the LM-head rows of `-` and `+` as a two-class classifier
  (online, or through a view for the families whose LM head vLLM's conversion misses), so its softmax is
  P(+) / (P(+) + P(-)), the generative PRM's score. Both in `trl_vlprm.guidance.vllm_checkpoints`.

Token ids come from the one encoder (`trl_vlprm.modeling.encoding.PRMEncoder`, as `PRMScorer` and the trainer use
it) in the PRM's layout (`steps`, the paper's `multi_turn`, or `text`: the one saved with the checkpoint, else the
published PRM's preset), sent as token prompts with the images as `multi_modal_data`, so vLLM scores exactly the
layout the PRM was trained on. A published PRM needs nothing but its id: its preset gives the head, layout, system
prompt and pixel bounds (`trl_vlprm.modeling.presets`).

Prefix caching: vLLM skips the prefix cache for token-wise pooling by default, because a cached token yields no
output row. This scorer reads the cache anyway (`skip_reading_prefix_cache=False`) and aligns the returned rows with
the *end* of the prompt: the image and question blocks, and across beam-search rounds the earlier steps, are computed
once. A step end that falls inside the cached part is either known already (scores are kept per token prefix for the
current question: a causal PRM's score at a token depends only on the tokens up to it) or rescored without the
cache, so every score is a computed one.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from trl_vlprm.guidance.policy import Candidate, Question
from trl_vlprm.guidance.vllm_checkpoints import vllm_model
from trl_vlprm.guidance.vllm_policy import import_vllm
from trl_vlprm.guidance.word_verdicts import score_as_trained
from trl_vlprm.modeling.encoding import EncodedPrompt, PRMEncoder, PRMLayout
from trl_vlprm.modeling.families import family_of_processor
from trl_vlprm.modeling.heads import HEADS, MissingPRMMetadataError, correct_probability, prm_token_ids, resolve_preset
from trl_vlprm.modeling.hub import model_snapshot_dir, read_model_json
from trl_vlprm.modeling.presets import PRMPreset
from trl_vlprm.modeling.processor import get_tokenizer, load_processor
from trl_vlprm.types import DEFAULT_STEP_SEPARATOR

logger = logging.getLogger(__name__)


def vllm_prm_config(
    path: str | Path, head: str | None = None, preset: str | PRMPreset | None = None
) -> tuple[Path, dict[str, Any], str]:
    """(local folder, config, head) of a PRM given by folder or Hub repo id, checked for the vLLM backends.

    The head is `head`, else the one the checkpoint records, else its published preset's. A checkpoint with none of
    them is refused rather than scored through a value head vLLM would initialise at random.
    """
    folder = model_snapshot_dir(path)
    config = read_model_json(folder, "config.json") or {}
    chosen = resolve_preset(path, preset)
    head = head or config.get("prm_head") or (chosen.head if chosen is not None else None)
    if head is None:
        raise MissingPRMMetadataError(
            f"{path}: its config records no prm_head and it is no known published PRM, so nothing says how to score "
            "it; pass head='value' or head='generative' (or preset='<hub id>' for a copy of a published PRM)"
        )
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {head!r}")
    return folder, config, head


def vllm_prm_layout(
    path: str | Path, config: Mapping[str, Any], preset: str | PRMPreset | None = None
) -> tuple[PRMLayout, PRMPreset | None]:
    """The PRM input layout to encode with (the checkpoint's; a published PRM's preset when the checkpoint records
    no layout name, as `load_prm` reads it; else "steps" with the recorded separator) and the preset, if any."""
    chosen = resolve_preset(path, preset)
    saved = PRMLayout.from_config(SimpleNamespace(**config))
    if chosen is not None and config.get("prm_layout") is None:
        return chosen.layout, chosen
    return saved or PRMLayout(step_separator=DEFAULT_STEP_SEPARATOR), chosen


def verdict_token_ids(config: Mapping[str, Any], tokenizer: Any, layout: PRMLayout) -> tuple[int, int]:
    """(positive, negative) token ids of a generative PRM: recorded in its config, else its layout's tokens."""
    positive, negative = config.get("prm_positive_token_id"), config.get("prm_negative_token_id")
    if positive is not None and negative is not None:
        return positive, negative
    return prm_token_ids(tokenizer, layout.positive_token, layout.negative_token)


class VLLMScorer:
    """Scores every step of many candidates to one question with a PRM on a vLLM pooling engine.

    Args:
        llm: a `vllm.LLM` running the PRM with `runner="pooling"` and the `token_classify` task, prefix caching on
            (`from_pretrained` builds it).
        processing_class: the PRM's tokenizer or image-only processor (`load_processor`).
        step_separator: text appended to each step; default: the layout's (the separator the PRM was trained with),
            else "\\n". A different one than the trained one logs a warning.
        head: "value" or "generative"; default: the checkpoint's `prm_head`, else "value" (only used to name the
            classes: the engine was built for one head).
        reuse_cache: read vLLM's prefix cache (the point of this scorer); False computes every token of every prompt.
        batch_size: candidates per `encode` call (vLLM schedules them itself; this bounds the returned rows held).
        layout: the PRM input layout; default: the one saved in the engine's config, else "steps".
    """

    def __init__(
        self,
        llm,
        processing_class: Any,
        step_separator: str | None = None,
        head: str | None = None,
        reuse_cache: bool = True,
        batch_size: int = 256,
        layout: PRMLayout | None = None,
    ):
        self._vllm = import_vllm()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        hf_config = llm.llm_engine.vllm_config.model_config.hf_config
        self.llm = llm
        self.processing_class = processing_class
        self.tokenizer = get_tokenizer(processing_class)
        self.head = head or getattr(hf_config, "prm_head", None) or "value"
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
        layout = layout or PRMLayout.from_config(hf_config)
        if step_separator is not None and layout is not None and step_separator != layout.step_separator:
            trained = layout.step_separator
            logger.warning("VLLMScorer: step_separator %r differs from the trained one (%r)", step_separator, trained)
        layout = layout or PRMLayout(step_separator=DEFAULT_STEP_SEPARATOR)
        if step_separator is not None:
            layout = replace(layout, step_separator=step_separator)
        self.layout = layout
        self.step_separator = layout.step_separator
        self.encoder = PRMEncoder(processing_class, layout)
        self.reuse_cache = reuse_cache
        self.family = family_of_processor(processing_class)
        self._collapsed: tuple[EncodedPrompt, list[int]] | None = None  # the current question's vLLM prefix
        self._current_question: str | None = None
        self._known: dict[bytes, float] = {}  # token-prefix digest -> score, for the current question
        self.counters = {"prompts": 0, "computed_tokens": 0, "prompt_tokens": 0, "rescored": 0, "known_steps": 0}

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        head: str | None = None,
        max_model_len: int = 4096,
        max_images_per_prompt: int = 1,
        dtype: Any = "auto",
        llm_kwargs: Mapping[str, Any] | None = None,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        cache_dir: str | Path | None = None,
        preset: str | PRMPreset | None = None,
        **kwargs,
    ) -> VLLMScorer:
        """Start a vLLM pooling engine on a PRM (folder or Hub repo id, value or generative head) and wrap it.

        A published PRM needs nothing but its id (e.g. the paper's ob11 7B PRM): its preset gives the head, input
        layout, system prompt and pixel bounds, as for `PRMScorer.from_pretrained`.

        Args:
            path: a trained PRM folder (its config records `prm_head`), a published PRM's id or folder, or a base VLM
                with `head="generative"`.
            head: overrides the checkpoint's head.
            max_model_len: longest prompt (image tokens included) in tokens.
            max_images_per_prompt: vLLM's `limit_mm_per_prompt["image"]`; videos are off.
            dtype: engine dtype ("auto", "bfloat16", "float32", ...).
            llm_kwargs: more `vllm.LLM` arguments (`gpu_memory_utilization`, `tensor_parallel_size`, ...).
            min_pixels, max_pixels: image resizing bounds, for the local encoding and vLLM's processor alike;
                default: the preset's, else the saved processor's.
            cache_dir: where a value head's vLLM view of the checkpoint is written (see `vllm_checkpoint`).
            preset: read the model as this published PRM (an id from `trl_vlprm.modeling.presets`), e.g. a local copy.
            kwargs: `VLLMScorer` arguments (`step_separator`, `reuse_cache`, `batch_size`).
        """
        vllm = import_vllm()
        dtype = str(dtype).removeprefix("torch.") if dtype is not None else "auto"  # torch.float32 -> "float32"
        name = path
        path, config, head = vllm_prm_config(name, head, preset)
        layout, chosen = vllm_prm_layout(name, config, preset)
        if chosen is not None:
            min_pixels = min_pixels if min_pixels is not None else chosen.min_pixels
            max_pixels = max_pixels if max_pixels is not None else chosen.max_pixels
        processor = load_processor(path, min_pixels=min_pixels, max_pixels=max_pixels)
        token_ids = verdict_token_ids(config, get_tokenizer(processor), layout) if head == "generative" else None
        folder, model_kwargs = vllm_model(path, head, get_tokenizer(processor), token_ids, cache_dir)
        llm_kwargs = dict(llm_kwargs or {})
        if llm_kwargs.pop("enable_prefix_caching", True) is not True:
            raise ValueError("VLLMScorer.from_pretrained: llm_kwargs['enable_prefix_caching'] must stay True")
        llm_kwargs.setdefault("limit_mm_per_prompt", {"image": max_images_per_prompt, "video": 0})
        pixels = {k: v for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if v is not None}
        if pixels:
            llm_kwargs.setdefault("mm_processor_kwargs", pixels)
        llm = vllm.LLM(
            model=str(folder),
            max_model_len=max_model_len,
            dtype=dtype,
            enable_prefix_caching=True,
            **model_kwargs,
            **llm_kwargs,
        )
        return cls(llm, processor, head=head, layout=layout, **kwargs)

    # ---- scoring --------------------------------------------------------------------------------------------

    def _prompt(self, prompt: EncodedPrompt, ids: list[int]) -> dict[str, Any]:
        """A vLLM token prompt of the whole sequence `ids`. vLLM expands every image placeholder it is given, so each
        image's expansion goes back to the template's placeholder (`ModelFamily.collapse_image_tokens`); vLLM's
        expansion gives back exactly `ids` (the image processor is the same)."""
        if not prompt.images:
            return {"prompt_token_ids": list(ids)}
        size = len(prompt.input_ids)
        if ids[:size] == prompt.input_ids:  # the question's collapsed ids are worked out once
            if self._collapsed is None or self._collapsed[0] is not prompt:
                collapsed = self.family.collapse_image_tokens(self.processing_class, prompt.input_ids, prompt.images)
                self._collapsed = (prompt, collapsed)
            collapsed = self._collapsed[1] + list(ids[size:])
        else:
            collapsed = self.family.collapse_image_tokens(self.processing_class, ids, prompt.images)
        return {"prompt_token_ids": collapsed, "multi_modal_data": {"image": prompt.images}}

    def _sequences(self, question: Question, candidates: Sequence[Candidate]):
        """The encoded question and, per candidate, its whole token ids and each step's score position in them."""
        row = question.get("id", "?")
        prompt = self.encoder.encode_prompt(question["prompt"], question.get("images") or [], row)
        sequences = []
        for candidate in candidates:
            encoded = self.encoder.encode_candidate(question["prompt"], prompt, candidate.steps, row=row)
            if not encoded.input_ids:
                sequences.append(([], []))
            elif encoded.shares_prefix:
                offset = len(prompt.input_ids)
                sequences.append((prompt.input_ids + encoded.input_ids, [offset + end for end in encoded.ends]))
            else:  # a one-string layout merged the question's last token with the first step's: the whole row
                sequences.append((list(encoded.input_ids), list(encoded.ends)))
        return prompt, sequences

    def _encode(self, prompts: list[dict[str, Any]], use_cache: bool) -> list[list[float]]:
        """P(correct) for the *computed* tokens of each prompt (the last rows; cached tokens give none)."""
        # Raw class logits, turned into P(correct) by the formula PRMScorer uses (vLLM's own activation depends on
        # the config's problem_type: a soft-label head saved as regression would get none).
        params = self._vllm.PoolingParams(
            task="token_classify", use_activation=False, skip_reading_prefix_cache=not use_cache
        )
        rows = []
        for start in range(0, len(prompts), self.batch_size):
            outputs = self.llm.encode(
                prompts[start : start + self.batch_size],
                pooling_params=params,
                pooling_task="token_classify",
                use_tqdm=False,
            )
            rows += [correct_probability(output.outputs.data).tolist() for output in outputs]
        return rows

    def score(self, question: Question, candidates: Sequence[Candidate]) -> list[list[float]]:
        """P(step correct) for every step of every candidate (one list per candidate, one score per step)."""
        return self.score_with_input_lengths(question, candidates)[0]

    def score_with_input_lengths(
        self, question: Question, candidates: Sequence[Candidate]
    ) -> tuple[list[list[float]], list[list[int]]]:
        """`score`, plus for every step the number of tokens the PRM read to score it (as `PRMScorer` reports them:
        the sequence up to and including the step's score token, image tokens counted; the paper's reward divides
        by it); steps the PRM judges word by word (`layout.word_verdicts`) by their lowest word verdict."""
        return score_as_trained(self._score_steps, question, candidates, self.layout.word_verdicts)

    def _score_steps(
        self, question: Question, candidates: Sequence[Candidate]
    ) -> tuple[list[list[float]], list[list[int]]]:
        if not candidates:
            return [], []
        prompt, sequences = self._sequences(question, candidates)
        key = self._question_key(prompt)
        if key != self._current_question:
            self._current_question = key
            self._known = {}
        scores: list[list[float | None]] = []
        todo: list[int] = []  # candidates with a step score still unknown
        for i, (ids, ends) in enumerate(sequences):
            known = [self._known.get(self._digest(ids, end)) for end in ends]
            scores.append(known)
            self.counters["known_steps"] += sum(s is not None for s in known)
            if any(s is None for s in known):
                todo.append(i)
        # Identical candidates are scored once: vLLM would compute their shared blocks only once anyway, and a
        # twin scored in the same batch would find its step ends cached and need a rescore.
        unique: dict[tuple[int, ...], int] = {}
        for i in todo:
            unique.setdefault(tuple(sequences[i][0]), i)
        order = list(unique.values())
        rescore = self._fill(prompt, sequences, scores, order, use_cache=self.reuse_cache)
        if rescore:
            self.counters["rescored"] += len(rescore)
            missing = self._fill(prompt, sequences, scores, rescore, use_cache=False)
            assert not missing, "a prompt computed without the cache returned too few rows"
        for i in todo:
            scores[i] = list(scores[unique[tuple(sequences[i][0])]])
        lengths = [[end + 1 for end in ends] for _, ends in sequences]
        return [[float(s) for s in row] for row in scores], lengths

    def _fill(self, prompt, sequences, scores, indices: list[int], use_cache: bool) -> list[int]:
        """Score candidates `indices` in one engine call; returns those with a needed step end left uncomputed."""
        if not indices:
            return []
        rows = self._encode([self._prompt(prompt, sequences[i][0]) for i in indices], use_cache)
        incomplete = []
        for i, probabilities in zip(indices, rows):
            ids, ends = sequences[i]
            first_computed = len(ids) - len(probabilities)  # rows are the last tokens of the prompt
            self.counters["prompts"] += 1
            self.counters["prompt_tokens"] += len(ids)
            self.counters["computed_tokens"] += len(probabilities)
            for step, end in enumerate(ends):
                if end >= first_computed:
                    value = probabilities[end - first_computed]
                    scores[i][step] = value
                    self._known[self._digest(ids, end)] = value
                elif scores[i][step] is None:
                    incomplete.append(i)
                    break
        return incomplete

    def _question_key(self, prompt: EncodedPrompt) -> str:
        """Identifies the question (prompt tokens and image pixels): kept scores are dropped when it changes."""
        digest = hashlib.sha256(json.dumps(prompt.input_ids).encode())
        for image in prompt.images:
            digest.update(repr((image.size, image.mode)).encode())
            digest.update(image.tobytes())
        return digest.hexdigest()

    def _digest(self, ids: list[int], end: int) -> bytes:
        # The score at a token depends on the images (fixed for the current question) and the tokens up to it.
        return hashlib.sha256(json.dumps(ids[: end + 1]).encode()).digest()

    def clear_cache(self) -> None:
        """Forget the kept scores and reset vLLM's prefix cache."""
        self._current_question = None
        self._known = {}
        self.llm.reset_prefix_cache()
