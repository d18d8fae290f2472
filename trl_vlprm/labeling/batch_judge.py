"""The judge through the OpenAI Batch API (Files + Batches endpoints): how labelling at the paper's scale is judged.

`BatchJudge.judge_many(items, custom_ids, key)` returns the same `JudgeResult`s as the online `JudgeClient`, but
sends the requests as Batch API input files (one JSON line a request: `custom_id`, `method`, `url`, `body`, the body
built by the `JudgeConfig.judge_prompt` prompt), split so that no file exceeds the API's limits
(`judge_batch_max_requests` lines, `judge_batch_max_bytes` bytes), uploads them, creates one batch per file, polls
until each ends, and downloads its output and error files. Half the price of online requests, no rate limits to
manage; a batch takes up to its completion window (24 h).

Resumable: everything lives in `state_dir` under the `key` of the call. `{key}.state.json` (written to a temp name
and renamed after every step) records each submission: its input file, the uploaded file id, the batch id, its
status, and the downloaded output/error files. A rerun with the same requests polls and downloads instead of
submitting again; a file uploaded but not yet turned into a batch is looked up among the account's batches before a
new batch is created. Requests left unanswered when a batch ends (a failed or expired batch, a line of the error
file) are submitted again in a new round, at most `judge_batch_max_resubmits` times; after that each is reported by
its `custom_id` with the last error, its verdicts "unknown". An answer that cannot be parsed is "unknown" at once
(counted as a `parse` error, not resubmitted: the Batch API bills it, and a judge that ignored the format once
tends to again). A tqdm bar shows requests done / total, batches in flight, tokens and the cost at the stated
prices (`judge_input_price_per_mtok`, `judge_output_price_per_mtok`).

The client is the official `openai` one: `OpenAI(base_url=judge_base_url)`, or `AzureOpenAI` when
`judge_azure_endpoint` is set (Azure differs only there: the client, and the `/chat/completions` URL without `/v1`).
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import openai
from tqdm.auto import tqdm

from trl_vlprm.labeling.judge import JudgeConfig, JudgeResult, _sample, openai_client
from trl_vlprm.labeling.judge_prompts import JUDGE_PROMPTS, UNKNOWN
from trl_vlprm.utils.resume import atomic_write_text, stable_digest

TERMINAL = ("completed", "failed", "expired", "cancelled")
BATCH_DIR = "batch_judge"  # a labelling run's batch state, input files and downloads, beside its shards


def batch_client(config: JudgeConfig) -> openai.OpenAI:
    """The synchronous `openai` client of the batch judge: Azure OpenAI when `judge_azure_endpoint` is set."""
    if config.judge_azure_endpoint:
        return openai.AzureOpenAI(
            azure_endpoint=config.judge_azure_endpoint,
            api_version=config.judge_azure_api_version,
            api_key=os.environ.get(config.judge_api_key_env or "", "") or "EMPTY",
            max_retries=config.judge_max_retries,
            timeout=config.judge_timeout,
        )
    return openai_client(config, asynchronous=False)


def batch_cost(config: JudgeConfig, prompt_tokens: int, completion_tokens: int) -> float:
    """Dollars for these tokens at the configured batch prices."""
    return (
        prompt_tokens * config.judge_input_price_per_mtok + completion_tokens * config.judge_output_price_per_mtok
    ) / 1e6


def split_lines(lines: Sequence[tuple[str, str]], max_requests: int, max_bytes: int) -> list[list[tuple[str, str]]]:
    """Cut `(custom_id, JSON line)` pairs into input files of at most `max_requests` lines and `max_bytes` bytes
    (newlines included); a single line larger than `max_bytes` is an error naming its custom_id."""
    parts: list[list[tuple[str, str]]] = []
    size = 0
    for custom_id, line in lines:
        length = len(line.encode()) + 1
        if length > max_bytes:
            raise ValueError(f"request {custom_id!r} is {length} bytes, over the batch input limit of {max_bytes}")
        if not parts or len(parts[-1]) >= max_requests or size + length > max_bytes:
            parts.append([])
            size = 0
        parts[-1].append((custom_id, line))
        size += length
    return parts


class BatchJudge:
    """Judges solutions through the Batch API (see the module docstring).

    Args:
        config: the judge's settings (endpoint, model, prompt, batch limits, prices).
        state_dir: folder of the state files, input files and downloaded outputs (created when missing).
        show_progress: show the tqdm bar.
        sleep: how to wait between polls (a test passes one that interrupts the run).

    Attributes:
        counts: over the judge's life: files uploaded, batches created and reused, rounds, requests by outcome,
            errors by kind, tokens.
        error_samples: the first full error text of each kind.
    """

    def __init__(
        self,
        config: JudgeConfig,
        state_dir: str | Path,
        show_progress: bool = True,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.config = config
        self.prompt = JUDGE_PROMPTS.get(config.judge_prompt, "JudgeConfig.judge_prompt")
        self.state_dir = Path(state_dir)
        self.show_progress = show_progress
        self.sleep = sleep
        self.azure = bool(config.judge_azure_endpoint)
        self.url = "/chat/completions" if self.azure else "/v1/chat/completions"
        self.counts: Counter[str] = Counter()
        self.error_samples: dict[str, str] = {}
        self._client: openai.OpenAI | None = None

    @property
    def client(self) -> openai.OpenAI:
        if self._client is None:
            self._client = batch_client(self.config)
        return self._client

    # --- requests -------------------------------------------------------------------------------------------------

    def judge_many(self, items: Sequence[tuple], custom_ids: Sequence[str], key: str) -> list[JudgeResult]:
        """Verdicts on every solution of `items` (`(question, steps, step_types[, answer])`), in order.

        `custom_ids` name the requests (unique); `key` names this call's state in `state_dir`: calling again with
        the same key and requests resumes it.
        """
        if len(set(custom_ids)) != len(custom_ids) or len(custom_ids) != len(items):
            raise ValueError("custom_ids must be unique, one per item")
        results = {cid: JudgeResult(verdicts=[UNKNOWN] * len(item[1])) for cid, item in zip(custom_ids, items)}
        lines, step_types = [], {}
        for cid, item in zip(custom_ids, items):
            question, steps, types = item[:3]
            types = list(types) if types is not None else [None] * len(steps)
            answer = item[3] if len(item) > 3 else None
            if not steps:
                continue
            try:
                body = self.prompt.request_body(self.config, question, steps, types, answer)
            except ValueError as err:
                self._error(results[cid], "render", f"render: {err}")
                continue
            step_types[cid] = types
            lines.append((cid, json.dumps({"custom_id": cid, "method": "POST", "url": self.url, "body": body})))
        if lines:
            answers, failures, attempts = self._run(key, lines)
            for cid, types in step_types.items():
                self._read(results[cid], types, answers.get(cid), failures.get(cid), attempts.get(cid, 0))
        for result in results.values():
            self.counts["solutions"] += 1
            self.counts["failed_solutions"] += int(result.failed)
            self.counts.update("steps " + v for v in result.verdicts)
        return [results[cid] for cid in custom_ids]

    def _read(self, result: JudgeResult, types, answer, failure, attempts) -> None:
        result.attempts = attempts
        if answer is None:
            kind = failure.split(":")[0] if failure else "batch"
            self._error(result, kind, failure or "batch: no answer")
            return
        usage = answer.get("usage") or {}
        result.prompt_tokens = int(usage.get("prompt_tokens") or 0)
        result.completion_tokens = int(usage.get("completion_tokens") or 0)
        try:
            content = answer["choices"][0]["message"]["content"]
            if not isinstance(content, str):
                raise ValueError("message content is not a string")
            result.verdicts = self.prompt.parse(content, types)
        except (ValueError, KeyError, IndexError, TypeError) as err:
            self._error(result, "parse", f"parse: {_sample(str(err))}")

    def _error(self, result: JudgeResult, kind: str, text: str) -> None:
        result.errors.append(text)
        self.counts["error " + kind] += 1
        self.error_samples.setdefault(kind, text)

    # --- the batch run --------------------------------------------------------------------------------------------

    def _run(self, key: str, lines: list[tuple[str, str]]) -> tuple[dict, dict, Counter]:
        """Submit, poll and download until every request is answered or out of resubmissions; returns the answer
        body by custom_id, the last error by custom_id, and the submissions each request was in."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        state_path = self.state_dir / f"{key}.state.json"
        digest = stable_digest(sorted(lines))
        if state_path.exists():
            state = json.loads(state_path.read_text())
            if state["digest"] != digest:
                raise ValueError(
                    f"{state_path}: recorded for other requests than these ({state['requests']} then, {len(lines)} "
                    "now); its batches were not reused. Restore the inputs, or move the file aside to submit anew."
                )
        else:
            state = {"digest": digest, "requests": len(lines), "submissions": []}
        save = lambda: atomic_write_text(state_path, json.dumps(state, indent=1))  # noqa: E731
        bar = tqdm(total=len(lines), desc=f"batch judge {key}", unit="req", disable=not self.show_progress)
        try:
            while True:
                for submission in state["submissions"]:
                    if not submission["collected"]:
                        self._advance(submission, save)
                answers, failures, attempts = self._collected(state)
                busy = [s for s in state["submissions"] if not s["collected"]]
                in_flight = {cid for s in busy for cid in s["custom_ids"]}
                retry = [
                    (cid, line)
                    for cid, line in lines
                    if cid not in answers
                    and cid not in in_flight
                    and attempts[cid] <= self.config.judge_batch_max_resubmits
                ]
                if retry:
                    self._submit(key, state, retry, save)
                    continue
                finished = sum(1 for cid, _ in lines if cid in answers or cid not in in_flight)
                self._show(bar, finished, busy, answers)
                if not busy:
                    return answers, failures, attempts
                self.sleep(self.config.judge_batch_poll_seconds)
        finally:
            bar.close()

    def _submit(self, key: str, state: dict, lines: list[tuple[str, str]], save) -> None:
        """A new round: the lines cut into input files within the limits, each written, then recorded."""
        round_index = 1 + max((s["round"] for s in state["submissions"]), default=-1)
        if round_index:
            self.counts["resubmitted_requests"] += len(lines)
        parts = split_lines(lines, self.config.judge_batch_max_requests, self.config.judge_batch_max_bytes)
        for p, part in enumerate(parts):
            name = f"{key}.r{round_index}.p{p}.input.jsonl"
            atomic_write_text(self.state_dir / name, "".join(line + "\n" for _, line in part))
            state["submissions"].append(
                {
                    "round": round_index,
                    "part": p,
                    "input": name,
                    "custom_ids": [cid for cid, _ in part],
                    "file_id": None,
                    "batch_id": None,
                    "status": None,
                    "output": None,
                    "errors": None,
                    "batch_errors": None,
                    "collected": False,
                }
            )
        self.counts["rounds"] += 1
        save()

    def _advance(self, submission: dict, save) -> None:
        """One step of a submission: upload, create its batch, poll it, download what it produced."""
        client = self.client
        if submission["file_id"] is None:
            with open(self.state_dir / submission["input"], "rb") as handle:
                submission["file_id"] = client.files.create(file=handle, purpose="batch").id
            self.counts["files_uploaded"] += 1
            save()
        if submission["batch_id"] is None:
            existing = next((b for b in client.batches.list() if b.input_file_id == submission["file_id"]), None)
            if existing is not None:  # created before a crash that lost its id
                self.counts["batches_reused"] += 1
            else:
                existing = client.batches.create(
                    input_file_id=submission["file_id"],
                    endpoint=self.url,
                    completion_window=self.config.judge_batch_completion_window,
                )
                self.counts["batches_created"] += 1
            submission["batch_id"] = existing.id
            save()
        batch = client.batches.retrieve(submission["batch_id"])
        if batch.status not in TERMINAL:
            if batch.status != submission["status"]:
                submission["status"] = batch.status
                save()
            return
        submission["status"] = batch.status
        stem = submission["input"].removesuffix(".input.jsonl")
        for field, file_id in (("output", batch.output_file_id), ("errors", batch.error_file_id)):
            if file_id:
                name = f"{stem}.{field}.jsonl"
                atomic_write_text(self.state_dir / name, client.files.content(file_id).content)
                submission[field] = name
        if batch.errors and batch.errors.data:
            submission["batch_errors"] = "; ".join(f"{e.code}: {e.message}" for e in batch.errors.data)
        submission["collected"] = True
        self.counts[f"batches {batch.status}"] += 1
        save()

    def _collected(self, state: dict) -> tuple[dict, dict, Counter]:
        """Answers (200 bodies) and last errors by custom_id from every downloaded file; submissions per id."""
        answers = {}
        failures = {}
        attempts = Counter()
        for submission in state["submissions"]:
            if not submission["collected"]:
                continue
            attempts.update(submission["custom_ids"])
            for cid in submission["custom_ids"]:  # unless a line says otherwise, the batch as a whole failed
                failures[cid] = f"batch {submission['status']}: " + (submission["batch_errors"] or "no answer")
            for field in ("output", "errors"):
                if not submission[field]:
                    continue
                for text in (self.state_dir / submission[field]).read_text().splitlines():
                    line = json.loads(text)
                    response, error = line.get("response") or {}, line.get("error")
                    if response.get("status_code") == 200 and not error:
                        answers[line["custom_id"]] = response.get("body") or {}
                    elif error:
                        failures[line["custom_id"]] = f"batch {error.get('code')}: {error.get('message')}"
                    else:
                        body = json.dumps(response.get("body"))
                        failures[line["custom_id"]] = f"http {response.get('status_code')}: {_sample(body)}"
        return answers, failures, attempts

    def _show(self, bar, finished: int, busy: list[dict], answers: dict) -> None:
        bar.n = finished
        prompt = sum(int((a.get("usage") or {}).get("prompt_tokens") or 0) for a in answers.values())
        completion = sum(int((a.get("usage") or {}).get("completion_tokens") or 0) for a in answers.values())
        bar.set_postfix(
            in_flight=len(busy),
            status=",".join(sorted({s["status"] or "new" for s in busy})) or "done",
            tokens=prompt + completion,
            cost=f"${batch_cost(self.config, prompt, completion):.4f}",
        )
        bar.refresh()
