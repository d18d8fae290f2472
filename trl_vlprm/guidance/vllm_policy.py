"""A `Policy` on a vLLM engine: images as `multi_modal_data`, n samples per request, prefix caching on.

Semantics match `HFPolicy`: the question is rendered with the model's chat template (one image placeholder per
image, expanded by vLLM), the steps of a prefix follow the assistant header joined by the step separator,
`sample_next_steps` stops each sample at the separator (a vLLM stop string), and `complete` runs to the end of the
solution. The n samples of a call are one request with `SamplingParams(n=n)`, so the prompt and image are encoded
once and, with prefix caching, the question prefix is shared by every later call on the same question (beam search
and step-by-step selection re-send the question with a longer prefix at every step).

One difference from `HFPolicy`: a vLLM stop string matches anywhere in the generated text, so a sample that starts
with the separator stops there and gives an empty step (`steps == []`, `finished == False`); `HFPolicy` skips
leading whitespace. vLLM is imported lazily: this module imports without it, `VLLMPolicy` needs it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from trl_vlprm.data.schema import load_image
from trl_vlprm.guidance.policy import Continuation, PolicyStats, Question
from trl_vlprm.guidance.sampling import SamplingConfig, SamplingPolicy
from trl_vlprm.guidance.solutions import question_messages, read_answer, split_steps

MISSING_VLLM_MESSAGE = (
    "VLLMPolicy needs vLLM, which is not installed: `pip install 'trl_vlprm[vllm]'` on a GPU machine; on a CPU-only "
    "machine use a separate venv made by `.ci/vllm_setup.sh` (see docs/vllm.md). HFPolicy needs no extra package."
)

# Call i samples under seed `seed + i * _SEED_STRIDE`; vLLM gives the j-th of the n samples `request seed + j`, so a
# stride above any n keeps the samples of different calls on different seeds.
_SEED_STRIDE = 1 << 20


def import_vllm():
    """The `vllm` module, or an ImportError saying how to install it."""
    try:
        import vllm
    except ImportError as err:
        raise ImportError(MISSING_VLLM_MESSAGE) from err
    return vllm


def render_prompt(
    processing_class, question: Question, prefix: Sequence[str], step_separator: str, system_prompt: str | None = None
) -> tuple[str, list]:
    """The prompt text (chat template, image placeholders, then the prefix steps each followed by the separator) and
    the question's images as RGB PIL images, in placeholder order.

    Raises ValueError naming the question and field when the number of images differs from the placeholders, or when
    a text-only model gets images.
    """
    qid = question.get("id", "?")
    messages = question_messages(question, system_prompt)
    images = [load_image(im, qid, f"images[{i}]") for i, im in enumerate(question.get("images") or [])]
    num_placeholders = sum(
        1 for m in messages if not isinstance(m["content"], str) for p in m["content"] if p.get("type") == "image"
    )
    if num_placeholders != len(images):
        raise ValueError(
            f"question {qid}: field 'images': {len(images)} image(s) but {num_placeholders} placeholder(s) in 'prompt'"
        )
    if hasattr(processing_class, "image_processor"):
        text = processing_class.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:
        if images:
            raise ValueError(f"question {qid}: field 'images': a text-only policy got images")
        flat = [
            {"role": m["role"], "content": "".join(p.get("text", "") for p in m["content"])}
            if not isinstance(m["content"], str)
            else m
            for m in messages
        ]
        text = processing_class.apply_chat_template(flat, tokenize=False, add_generation_prompt=True)
    return text + "".join(step + step_separator for step in prefix), images


def parse_next_step(completion) -> tuple[list[str], bool]:
    """(steps, finished) of one vLLM `CompletionOutput` sampled with the separator as stop string.

    A stop-string stop (`stop_reason` is the string) means the step ended and the solution goes on; an end-of-sequence
    stop (`finish_reason == "stop"` with no stop string) means the solution is over; the token budget
    (`finish_reason == "length"`) cuts the step and the solution goes on.
    """
    step = completion.text.strip()
    finished = completion.finish_reason == "stop" and not isinstance(completion.stop_reason, str)
    return ([step] if step else []), finished


class VLLMPolicy(SamplingPolicy):
    """Policy on a vLLM engine (`vllm.LLM`).

    Args:
        llm: a `vllm.LLM`, built with `enable_prefix_caching=True` (see `from_pretrained`).
        processor: the model's processor (a tokenizer for text-only models), used only to render prompts; default
            `trl_vlprm.modeling.processor.load_processor` on the engine's model folder.
        sampling: the sampling settings (`SamplingConfig`); `settings` (its fields as keywords) replace some.
            With `seed`, call i samples under seed `seed + i * 2**20` (sample j of the call: that plus j).
        answer_extractor: `(solution_text, question) -> answer` for finished solutions.
    """

    def __init__(
        self,
        llm,
        processor=None,
        sampling: SamplingConfig | None = None,
        answer_extractor: Callable[[str, Question], str | None] = read_answer,
        **settings: Any,
    ):
        self._vllm = import_vllm()
        self.sampling = SamplingConfig.of(sampling, "VLLMPolicy", **settings)
        if processor is None:
            from trl_vlprm.modeling.processor import load_processor

            processor = load_processor(llm.model_config.model)
        self.llm = llm
        self.processor = processor
        self.answer_extractor = answer_extractor
        self.stats = PolicyStats()

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str,
        max_model_len: int = 4096,
        max_images_per_prompt: int = 1,
        dtype: str = "auto",
        revision: str | None = None,
        llm_kwargs: Mapping[str, Any] | None = None,
        **policy_kwargs,
    ) -> VLLMPolicy:
        """Start a vLLM engine on a model folder or Hub repo id, prefix caching on, and wrap it.

        Args:
            name_or_path: a model folder or a Hub repo id; a repo id is resolved to its snapshot folder in the
                Hugging Face cache (downloaded when the Hub is reachable, read from the cache under
                `HF_HUB_OFFLINE=1`), so the engine and the processor read the very same files.
            max_model_len: longest prompt + generation in tokens (bounds the KV cache per sequence).
            max_images_per_prompt: vLLM's `limit_mm_per_prompt["image"]`; videos are off (the PRM pipeline reads
                images only, and videos need torchvision).
            dtype: engine dtype ("auto", "bfloat16", "float32", ...).
            revision: branch, tag or commit of a repo id.
            llm_kwargs: more `vllm.LLM` arguments (`gpu_memory_utilization`, `tensor_parallel_size`, ...).
            policy_kwargs: `VLLMPolicy` arguments (`sampling`, or `SamplingConfig` fields such as `temperature`).
        """
        vllm = import_vllm()
        llm_kwargs = dict(llm_kwargs or {})
        if llm_kwargs.pop("enable_prefix_caching", True) is not True:
            raise ValueError("VLLMPolicy.from_pretrained: llm_kwargs['enable_prefix_caching'] must stay True")
        llm_kwargs.setdefault("limit_mm_per_prompt", {"image": max_images_per_prompt, "video": 0})
        from trl_vlprm.modeling.hub import model_snapshot_dir

        folder = model_snapshot_dir(name_or_path, revision)
        llm = vllm.LLM(
            model=str(folder), max_model_len=max_model_len, dtype=dtype, enable_prefix_caching=True, **llm_kwargs
        )
        return cls(llm, **policy_kwargs)

    # -- Policy protocol ---------------------------------------------------------------------------------------

    def sample_next_steps(self, question: Question, prefix: Sequence[str], n: int) -> list[Continuation]:
        results = []
        for completion in self._generate(question, prefix, n, self.sampling.max_step_tokens, stop_at_separator=True):
            steps, finished = parse_next_step(completion)
            answer = self.answer_extractor(self._solution(prefix, steps), question) if finished else None
            results.append(Continuation(steps=steps, finished=finished, answer=answer, num_tokens=completion.tokens))
        self.stats.record(results)
        return results

    def complete(self, question: Question, prefix: Sequence[str], n: int) -> list[Continuation]:
        results = []
        for completion in self._generate(question, prefix, n, self.sampling.max_new_tokens, stop_at_separator=False):
            steps = split_steps(completion.text, self.sampling.step_separator)
            # The policy stopped (end of text or budget): the solution is over either way; the answer may be missing.
            answer = self.answer_extractor(self._solution(prefix, steps), question)
            results.append(Continuation(steps=steps, finished=True, answer=answer, num_tokens=completion.tokens))
        self.stats.record(results)
        return results

    # -- requests ----------------------------------------------------------------------------------------------

    def build_request(self, question: Question, prefix: Sequence[str]) -> dict[str, Any]:
        """The vLLM prompt of a question and prefix: `{"prompt": text, "multi_modal_data": {"image": [...]}}`."""
        text, images = render_prompt(
            self.processor, question, prefix, self.sampling.step_separator, self.sampling.system_prompt
        )
        return {"prompt": text, "multi_modal_data": {"image": images}} if images else {"prompt": text}

    def sampling_params(self, n: int, max_tokens: int, stop_at_separator: bool):
        """`vllm.SamplingParams` of one call (the call counter picks the seed)."""
        greedy = self.sampling.temperature == 0
        return self._vllm.SamplingParams(
            n=1 if greedy else n,
            temperature=0.0 if greedy else self.sampling.temperature,
            top_p=1.0 if greedy else self.sampling.top_p,
            # vLLM reads top_k <= 0 as "no filter" (-1 in older releases, 0 in newer ones).
            top_k=(self.sampling.top_k or -1) if not greedy else -1,
            repetition_penalty=self.sampling.repetition_penalty,
            max_tokens=max_tokens,
            stop=[self.sampling.step_separator] if stop_at_separator else None,
            seed=None if self.sampling.seed is None else self.sampling.seed + self.stats.calls * _SEED_STRIDE,
        )

    def _generate(self, question: Question, prefix: Sequence[str], n: int, max_tokens: int, stop_at_separator: bool):
        if n < 1:
            raise ValueError(f"question {question.get('id', '?')}: n={n}; must be >= 1")
        request = self.build_request(question, prefix)
        params = self.sampling_params(n, max_tokens, stop_at_separator)
        (output,) = self.llm.generate([request], params, use_tqdm=False)
        completions = [_Completion.of(c) for c in output.outputs]
        if params.n < n:  # greedy: n identical samples; their tokens were generated once
            completions += [completions[0].repeated()] * (n - params.n)
        return completions


class _Completion:
    """What the policy reads of a vLLM `CompletionOutput`, with the token count of this sample."""

    __slots__ = ("text", "finish_reason", "stop_reason", "tokens")

    def __init__(self, text: str, finish_reason: str | None, stop_reason, tokens: int):
        self.text = text
        self.finish_reason = finish_reason
        self.stop_reason = stop_reason
        self.tokens = tokens

    @classmethod
    def of(cls, output) -> _Completion:
        return cls(output.text, output.finish_reason, output.stop_reason, len(output.token_ids))

    def repeated(self) -> _Completion:
        return _Completion(self.text, self.finish_reason, self.stop_reason, 0)
