"""`ServerPRMScorer`: a PRM served by `vllm serve` (pooling runner, `token_classify`), scored over HTTP.

Start the server with `prm_server_args(folder)` (value head: the renamed view `vllm_checkpoint` writes; generative
head: the LM head's `-`/`+` rows as a two-class classifier; see `trl_vlprm.guidance.vllm_checkpoints`), then each
candidate is one `/pooling` request: the question as chat messages (images as data URLs) and its steps, each
followed by the separator, as the start of the assistant turn (`continue_final_message`); the server returns every
token's class logits and the score of a step is read at its last token, through the formula `PRMScorer` uses.

Token layout: an HTTP chat request is tokenized by the server as one text, while the trainer tokenizes every step and
separator apart. The two agree unless a token of the tokenizer spans a step boundary (with Qwen's BPE, e.g. `".\\n"`
when a step ends in a full stop and the separator is a newline). The scorer tokenizes the same text locally, reads
the step ends there, and counts candidates whose layout differs from the trainer's (`counters["layout_mismatches"]`,
with a warning once): their scores are then those of a layout the PRM never saw. Prefix caching: vLLM skips it for
token-wise pooling requests (a cached token would yield no row) and the HTTP API cannot turn that off, so a served
PRM computes every prompt in full; the in-process `VLLMScorer` reads the cache.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from trl_vlprm.data.schema import image_data_url, load_image
from trl_vlprm.guidance.policy import Candidate, Question
from trl_vlprm.guidance.server_fleet import ServerFleet
from trl_vlprm.guidance.server_policy import chat_messages
from trl_vlprm.guidance.vllm_checkpoints import vllm_model
from trl_vlprm.guidance.vllm_policy import render_prompt
from trl_vlprm.guidance.vllm_scorer import verdict_token_ids, vllm_prm_config, vllm_prm_layout
from trl_vlprm.guidance.word_verdicts import score_as_trained
from trl_vlprm.modeling.encoding import PRMEncoder, PRMLayout, encode_steps, image_token_counts, is_vision_processor
from trl_vlprm.modeling.heads import correct_probability
from trl_vlprm.modeling.presets import PRMPreset
from trl_vlprm.modeling.processor import get_tokenizer, load_processor
from trl_vlprm.types import DEFAULT_STEP_SEPARATOR
from trl_vlprm.utils.http import reply_start, request_json

logger = logging.getLogger(__name__)


def prm_server_args(
    path: str | Path,
    head: str | None = None,
    cache_dir: str | Path | None = None,
    preset: str | PRMPreset | None = None,
) -> list[str]:
    """`vllm serve` arguments (model folder first) that serve a PRM folder or published PRM id for `ServerPRMScorer`
    (a preset's pixel bounds go to the server's image processor)."""
    name = path
    path, config, head = vllm_prm_config(name, head, preset)
    layout, chosen = vllm_prm_layout(name, config, preset)
    tokenizer = get_tokenizer(load_processor(path))
    token_ids = verdict_token_ids(config, tokenizer, layout) if head == "generative" else None
    folder, kwargs = vllm_model(path, head, tokenizer, token_ids, cache_dir)
    args = [str(folder), "--runner", kwargs["runner"], "--pooler-config", json.dumps(kwargs["pooler_config"])]
    if "convert" in kwargs:
        args += ["--convert", kwargs["convert"], "--hf-overrides", json.dumps(kwargs["hf_overrides"])]
    if chosen is not None and chosen.max_pixels is not None:
        pixels = {"min_pixels": chosen.min_pixels, "max_pixels": chosen.max_pixels}
        args += ["--mm-processor-kwargs", json.dumps({k: v for k, v in pixels.items() if v is not None})]
    return args


class ServerPRMScorer:
    """Scores every step of many candidates with a PRM served by vLLM (see the module docstring).

    Args:
        base_urls: the server root(s), e.g. "http://host:8000" (a `/v1` suffix is dropped: `/pooling` is at the root).
        processing_class: the PRM's tokenizer or image-only processor (for the local layout check and step ends).
        model: the served model name; default: the first the first server lists.
        step_separator: text appended to each step; default: the layout's (the PRM's trained one), else "\\n".
        api_key: bearer token sent to the servers ("EMPTY": none).
        max_concurrency, request_timeout, max_retries, deadline, backoff: as `ServerPolicy` (`ServerFleet`).
        layout: the PRM input layout (`from_pretrained` reads it from the checkpoint or the published PRM's preset);
            default "steps".
    """

    def __init__(
        self,
        base_urls: str | Sequence[str],
        processing_class: Any,
        model: str | None = None,
        step_separator: str | None = None,
        api_key: str = "EMPTY",
        max_concurrency: int = 8,
        request_timeout: float = 120.0,
        max_retries: int = 3,
        deadline: float = 600.0,
        backoff: float = 0.5,
        layout: PRMLayout | None = None,
    ):
        urls = [base_urls] if isinstance(base_urls, str) else list(base_urls)
        urls = [url.rstrip("/").removesuffix("/v1") for url in urls]
        retry_on = (OSError, ValueError)  # no answer, an error status, or a reply that is not what the route returns
        self.fleet = ServerFleet(
            urls, max_concurrency, request_timeout, max_retries, deadline, backoff, retry_on, None, "ServerPRMScorer"
        )
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key and api_key != "EMPTY" else {}
        self.processing_class = processing_class
        self.tokenizer = get_tokenizer(processing_class)
        layout = layout or PRMLayout(step_separator=DEFAULT_STEP_SEPARATOR)
        self.layout = replace(layout, step_separator=step_separator) if step_separator else layout
        self.step_separator = self.layout.step_separator
        self.encoder = PRMEncoder(processing_class, self.layout)
        self.model = model or self._served_model()
        self.counters = {"requests": 0, "prompt_tokens": 0, "layout_mismatches": 0}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="server-prm")

    @classmethod
    def from_pretrained(
        cls,
        base_urls: str | Sequence[str],
        path: str | Path,
        preset: str | PRMPreset | None = None,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        **kwargs,
    ) -> ServerPRMScorer:
        """A scorer for the PRM (folder or published PRM id) served at `base_urls`: the checkpoint, else its preset,
        gives the processor, its pixel bounds and the input layout (serve it with `prm_server_args`)."""
        name = path
        path, config, _ = vllm_prm_config(name, kwargs.pop("head", None), preset)
        layout, chosen = vllm_prm_layout(name, config, preset)
        if chosen is not None:
            min_pixels = min_pixels if min_pixels is not None else chosen.min_pixels
            max_pixels = max_pixels if max_pixels is not None else chosen.max_pixels
        processor = load_processor(path, min_pixels=min_pixels, max_pixels=max_pixels)
        return cls(base_urls, processor, layout=layout, **kwargs)

    def _served_model(self) -> str:
        """The name of the model the first server serves (`/v1/models`)."""
        url = self.fleet.base_urls[0] + "/v1/models"
        reply = request_json(url, headers=self._headers, timeout=self.fleet.request_timeout)
        return _field(reply, url, "model list", "data", 0, "id")

    # ---- layout ---------------------------------------------------------------------------------------------

    def step_end_tokens(self, question: Question, steps: Sequence[str]) -> tuple[list[int], int, bool]:
        """Indices of each step's last token in the server's tokenization of the request, its token count, and
        whether that tokenization of the steps equals the trainer's (steps and separators tokenized apart)."""
        system_prompt = self.layout.system_prompt
        text, images = render_prompt(self.processing_class, question, steps, self.step_separator, system_prompt)
        if images:  # the server expands each image placeholder to its image tokens
            token = self.processing_class.image_token
            pieces = text.split(token)
            counts = image_token_counts(self.processing_class, images)
            text = pieces[0] + "".join(token * n + piece for n, piece in zip(counts, pieces[1:]))
        encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        offsets = encoded["offset_mapping"]
        position = len(text) - sum(len(step) + len(self.step_separator) for step in steps)
        start = position
        ends = []
        aligned = True
        for step in steps:
            position += len(step) + len(self.step_separator)
            index = next(i for i, (a, b) in enumerate(offsets) if a < position <= b)
            aligned &= offsets[index][1] == position
            ends.append(index)
        first = next(i for i, (a, b) in enumerate(offsets) if b > start)
        trainer_ids = [t for ids in encode_steps(self.tokenizer, steps, self.step_separator) for t in ids]
        aligned &= encoded["input_ids"][first:] == trainer_ids
        return ends, len(encoded["input_ids"]), aligned

    # ---- scoring --------------------------------------------------------------------------------------------

    def _request(self, question: Question, steps: Sequence[str]) -> tuple[dict[str, Any], list[int], int, bool]:
        """The `/pooling` request body of one candidate, each step's score position in the server's tokenization,
        that tokenization's length, and whether it is the trainer's layout."""
        body: dict[str, Any] = {"model": self.model, "task": "token_classify", "use_activation": False}
        if self.layout.name == "steps" and self.encoder.is_vision:
            ends, length, aligned = self.step_end_tokens(question, steps)
            messages = chat_messages(question, steps, self.step_separator, self.layout.system_prompt)
            body.update(messages=messages, continue_final_message=True, add_generation_prompt=False)
            return body, ends, length, aligned
        row = question.get("id", "?")
        prompt = self.encoder.encode_prompt(question["prompt"], question.get("images") or [], row)
        encoded = self.encoder.encode_candidate(question["prompt"], prompt, steps, row=row)
        offset = len(prompt.input_ids) if encoded.shares_prefix else 0
        ids = (prompt.input_ids if encoded.shares_prefix else []) + encoded.input_ids
        ends = [offset + end for end in encoded.ends]
        if not self.encoder.is_vision:  # token ids: exactly the trainer's layout
            body["input"] = ids
            return body, ends, len(ids), True
        # The paper's conversation, rendered by the server's chat template as the encoder renders it locally.
        urls = iter([image_data_url(image, row, f"images[{i}]") for i, image in enumerate(prompt.images)])
        messages = self.encoder.conversation(question["prompt"], steps)
        for message in messages:
            message["content"] = [
                {"type": "image_url", "image_url": {"url": next(urls)}} if part.get("type") == "image" else part
                for part in message["content"]
            ]
        body.update(messages=messages, add_generation_prompt=True, continue_final_message=False)
        return body, ends, len(ids), True

    def _score_one(self, question: Question, candidate: Candidate) -> tuple[list[float], list[int]]:
        if not candidate.steps:
            return [], []
        body, ends, length, aligned = self._request(question, candidate.steps)
        qid = question.get("id", "?")

        def send(index: int, timeout: float) -> list[list[float]]:
            url = self.fleet.base_urls[index] + "/pooling"
            reply = request_json(url, body, headers=self._headers, timeout=timeout)
            return _field(reply, url, "token rows", "data", 0, "data")

        rows = self.fleet.request(send, f"question {qid}")
        if len(rows) != length:
            raise ValueError(
                f"question {qid}: the server returned {len(rows)} token rows, the local tokenization has {length}: "
                "the served model's chat template or tokenizer differs from the processing class given"
            )
        with self._lock:
            self.counters["requests"] += 1
            self.counters["prompt_tokens"] += length
            if not aligned:
                if not self.counters["layout_mismatches"]:
                    logger.warning(
                        "ServerPRMScorer: question %s: the server tokenizes a step boundary differently from the "
                        "trainer (a token spans it); such scores read a layout the PRM never saw",
                        qid,
                    )
                self.counters["layout_mismatches"] += 1
        logits = torch.tensor([rows[i] for i in ends], dtype=torch.float32)
        return correct_probability(logits).tolist(), [end + 1 for end in ends]

    def score(self, question: Question, candidates: Sequence[Candidate]) -> list[list[float]]:
        """P(step correct) for every step of every candidate, one request per candidate, concurrently."""
        return self.score_with_input_lengths(question, candidates)[0]

    def score_with_input_lengths(
        self, question: Question, candidates: Sequence[Candidate]
    ) -> tuple[list[list[float]], list[list[int]]]:
        """`score`, plus for every step the number of tokens the PRM read to score it (as `PRMScorer` reports them;
        the paper's reward divides by it); steps the PRM judges word by word (`layout.word_verdicts`) by their
        lowest word verdict."""
        return score_as_trained(self._score_steps, question, candidates, self.layout.word_verdicts)

    def _score_steps(
        self, question: Question, candidates: Sequence[Candidate]
    ) -> tuple[list[list[float]], list[list[int]]]:
        if is_vision_processor(self.processing_class):  # decode the images once, not in every request thread
            qid = question.get("id", "?")
            images = [load_image(im, qid, f"images[{i}]") for i, im in enumerate(question.get("images") or [])]
            question = {**question, "images": images}
        results = list(self._pool.map(lambda candidate: self._score_one(question, candidate), candidates))
        return [scores for scores, _ in results], [lengths for _, lengths in results]

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def _field(reply: Any, url: str, what: str, *path: str | int) -> Any:
    """`reply[path[0]][path[1]]...`; a reply without it is a `ValueError` naming the URL and showing the reply."""
    value = reply
    try:
        for key in path:
            value = value[key]
    except (KeyError, IndexError, TypeError):
        where = "".join(f"[{key}]" if isinstance(key, int) else f".{key}" for key in path).lstrip(".")
        raise ValueError(f"{url}: no {what} ({where}) in the reply: {reply_start(json.dumps(reply))!r}") from None
    return value
