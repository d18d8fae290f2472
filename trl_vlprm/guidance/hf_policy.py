"""A `Policy` backed by transformers `generate`: the CPU default and the fallback when vLLM is not installed.

Semantics match `VLLMPolicy`: the question is rendered with the processor's chat template (images included), the
steps of a prefix follow the assistant header joined by the step separator, `sample_next_steps` stops each sample at
the first separator after some text, and `complete` runs to the end of the solution. `n` samples come from one
`generate` call (`num_return_sequences`); with `temperature=0` decoding is greedy and the n samples are one sample
repeated (greedy decoding cannot differ between samples).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from trl_vlprm.data.schema import load_image
from trl_vlprm.guidance.policy import Continuation, PolicyStats, Question
from trl_vlprm.guidance.sampling import SamplingConfig, SamplingPolicy
from trl_vlprm.guidance.solutions import question_messages, read_answer, split_steps


class _SeparatorStop(StoppingCriteria):
    """Stops each sequence once its generated text holds the separator after some non-blank text."""

    def __init__(self, tokenizer, prompt_length: int, separator: str):
        self.tokenizer = tokenizer
        self.prompt_length = prompt_length
        self.separator = separator

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_length :], skip_special_tokens=True)
        done = [self.separator in text.lstrip() for text in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class HFPolicy(SamplingPolicy):
    """Policy on a transformers vision-language (or text) model.

    Args:
        model: a generative model (`Qwen2VLForConditionalGeneration`, `Qwen2_5_VLForConditionalGeneration`, or any
            causal LM for text-only questions).
        processor: its processor (a tokenizer for text-only models), e.g. from `trl_vlprm.modeling.load_processor`.
        sampling: the sampling settings (`SamplingConfig`); `settings` (its fields as keywords) replace some.
            With `seed`, call i samples under seed `seed + i`.
        answer_extractor: `(solution_text, question) -> answer` for finished solutions.
    """

    def __init__(
        self,
        model,
        processor,
        sampling: SamplingConfig | None = None,
        answer_extractor: Callable[[str, Question], str | None] = read_answer,
        **settings: Any,
    ):
        self.sampling = SamplingConfig.of(sampling, "HFPolicy", **settings)
        self.model = model.eval()
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.answer_extractor = answer_extractor
        self.stats = PolicyStats()
        end_ids = model.generation_config.eos_token_id
        end_ids = [end_ids] if isinstance(end_ids, int) else list(end_ids or [])
        self._eos_ids = set(end_ids) | ({self.tokenizer.eos_token_id} - {None})
        self._pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else min(self._eos_ids)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str,
        dtype: str | torch.dtype | None = None,
        revision: str | None = None,
        device: str | torch.device = "auto",
        **kwargs,
    ) -> HFPolicy:
        """Load model and processor from a folder or Hub repo id (at `revision`), resolved as transformers does.

        A model of a vision-language family loads with the family's generation class; a model without an image
        processor as a causal LM (text only). `device`: "auto" (this process's accelerator: `cuda:$LOCAL_RANK` under
        `accelerate launch`, else cuda:0 / mps / xpu, else the CPU; `trl_vlprm.modeling.devices`), or "cpu",
        "cuda:1", ...; `dtype`: default float32 on the CPU and the checkpoint's own ("auto") on an accelerator.
        """
        from transformers import AutoModelForCausalLM

        from trl_vlprm.modeling.devices import inference_dtype, load_kwargs, resolve_device
        from trl_vlprm.modeling.families import family_of_processor
        from trl_vlprm.modeling.processor import load_processor

        placed = resolve_device(device)
        processor = load_processor(name_or_path, revision=revision)
        family = family_of_processor(processor)
        model_class = family.generative_class() if family is not None else AutoModelForCausalLM
        model = model_class.from_pretrained(
            name_or_path, dtype=inference_dtype(dtype, placed), revision=revision, **load_kwargs(placed)
        )
        return cls(model.to(placed), processor, **kwargs)

    # -- Policy protocol ---------------------------------------------------------------------------------------

    def sample_next_steps(self, question: Question, prefix: Sequence[str], n: int) -> list[Continuation]:
        results = []
        for text, tokens, ended in self._generate(
            question, prefix, n, self.sampling.max_step_tokens, stop_at_separator=True
        ):
            text = text.lstrip()
            cut = text.find(self.sampling.step_separator)
            step = (text if cut < 0 else text[:cut]).strip()
            finished = ended and cut < 0
            answer = self.answer_extractor(self._solution(prefix, [step]), question) if finished else None
            results.append(
                Continuation(steps=[step] if step else [], finished=finished, answer=answer, num_tokens=tokens)
            )
        self.stats.record(results)
        return results

    def complete(self, question: Question, prefix: Sequence[str], n: int) -> list[Continuation]:
        results = []
        for text, tokens, _ in self._generate(
            question, prefix, n, self.sampling.max_new_tokens, stop_at_separator=False
        ):
            steps = split_steps(text, self.sampling.step_separator)
            # The policy stopped (end of text or budget): the solution is over either way; the answer may be missing.
            answer = self.answer_extractor(self._solution(prefix, steps), question)
            results.append(Continuation(steps=steps, finished=True, answer=answer, num_tokens=tokens))
        self.stats.record(results)
        return results

    # -- internals ---------------------------------------------------------------------------------------------

    def _inputs(self, question: Question, prefix: Sequence[str]) -> dict[str, torch.Tensor]:
        messages = question_messages(question, self.sampling.system_prompt)
        images = [
            load_image(im, question.get("id", "?"), f"images[{i}]")
            for i, im in enumerate(question.get("images") or [])
        ]
        if hasattr(self.processor, "image_processor"):
            text = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            text += "".join(step + self.sampling.step_separator for step in prefix)
            inputs = self.processor(text=[text], images=images or None, return_tensors="pt")
        else:
            if images:
                raise ValueError(f"question {question.get('id', '?')}: field 'images': a text-only policy got images")
            flat = [{"role": m["role"], "content": "".join(p.get("text", "") for p in m["content"])} for m in messages]
            text = self.tokenizer.apply_chat_template(flat, tokenize=False, add_generation_prompt=True)
            text += "".join(step + self.sampling.step_separator for step in prefix)
            inputs = self.tokenizer([text], return_tensors="pt", add_special_tokens=False)
        return {k: v.to(self.model.device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}

    @torch.no_grad()
    def _generate(
        self, question: Question, prefix: Sequence[str], n: int, max_new_tokens: int, stop_at_separator: bool
    ) -> list[tuple[str, int, bool]]:
        """n generations as (text, generated tokens, ended by an end-of-sequence token)."""
        if n < 1:
            raise ValueError(f"question {question.get('id', '?')}: n={n}; must be >= 1")
        inputs = self._inputs(question, prefix)
        prompt_length = inputs["input_ids"].shape[1]
        greedy = self.sampling.temperature == 0
        # top_k=0 disables the filter in transformers; the penalty applies to greedy decoding too, as in vLLM.
        settings = self.sampling
        sampling = {} if greedy else {"temperature": settings.temperature, "top_p": settings.top_p}
        if not greedy:
            sampling["top_k"] = settings.top_k or 0
        sampling["repetition_penalty"] = settings.repetition_penalty
        stopping = StoppingCriteriaList()
        if stop_at_separator:
            stopping.append(_SeparatorStop(self.tokenizer, prompt_length, self.sampling.step_separator))
        with torch.random.fork_rng(devices=[]) if self.sampling.seed is not None else nullcontext():
            if self.sampling.seed is not None:
                torch.manual_seed(self.sampling.seed + self.stats.calls)
            output = self.model.generate(
                **inputs,
                **sampling,
                do_sample=not greedy,
                num_return_sequences=1 if greedy else n,
                max_new_tokens=max_new_tokens,
                stopping_criteria=stopping,
                pad_token_id=self._pad_id,
                eos_token_id=sorted(self._eos_ids),
            )
        generations = [self._decode_row(row[prompt_length:]) for row in output]
        if greedy:  # n identical samples; their tokens were generated once
            generations = generations + [(generations[0][0], 0, generations[0][2])] * (n - 1)
        return generations

    def _decode_row(self, new_ids: torch.Tensor) -> tuple[str, int, bool]:
        ids = new_ids.tolist()
        length, ended = len(ids), False
        for position, token in enumerate(ids):
            if token in self._eos_ids:
                length, ended = position + 1, True
                break
            if token == self._pad_id:  # padding after a stop-string stop
                length = position
                break
        return self.tokenizer.decode(ids[:length], skip_special_tokens=True), length, ended
