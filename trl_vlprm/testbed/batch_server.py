"""A real HTTP server on loopback implementing the OpenAI Files and Batches endpoints, for the batch judge's tests.

It serves, under both `/v1` (OpenAI) and `/openai` (Azure OpenAI; the `api-version` query is ignored):

* `POST /files` (multipart upload, purpose "batch"), `GET /files/{id}`, `GET /files/{id}/content`;
* `POST /batches`, `GET /batches/{id}`, `GET /batches` (list, newest first).

A batch is validated as the API does (JSON lines with `custom_id`, `method` POST, the batch's `url`, a `body`;
`custom_id`s unique; at most `max_requests` lines): an invalid file makes a *failed* batch with the reason in
`errors`. Each request line is answered by `respond(body, custom_id) -> (status, body)` (`judge_responder` wraps the
testbed's `JudgeServer`, so the answers come from gold). What happens to each created batch is scripted by `plans`,
taken in order (then `BatchPlan()`):

* `BatchPlan(outcome="completed", polls=1, error_lines=0)`: reported `in_progress` for `polls` retrievals (with
  `polls=None`, until `release()` is called), then `completed`; the first `error_lines` requests get an error
  line (HTTP 500 body) in the error file, the rest a 200 line in the output file (request order is kept).
* `outcome="failed"`: the batch fails (as a validation failure does), no output at all.
* `outcome="expired"`, `answered=k`: the completion window runs out after `k` requests; their answers are in the
  output file, every other request is in the error file with code `batch_expired`.

Every upload, creation and retrieval is counted in `counts`. Test use only; never a stand-in for the real API.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

Responder = Callable[[Mapping[str, Any], str], tuple[int, Mapping[str, Any]]]
PREFIXES = ("/v1", "/openai")


@dataclass(frozen=True)
class BatchPlan:
    """What the server does with one created batch (see the module docstring)."""

    outcome: str = "completed"
    polls: int | None = 1
    error_lines: int = 0
    answered: int = 0


def judge_responder(judge_server: Any) -> Responder:
    """Answer batch lines with a testbed `JudgeServer` (not started: only its `respond` is used); the question id
    is the `custom_id` before "#" (the batch judge names a request by its solution id, `question_id#k`)."""

    def respond(body: Mapping[str, Any], custom_id: str) -> tuple[int, Mapping[str, Any]]:
        size = len(json.dumps(body))
        status, reply, _, mode = judge_server.respond(
            body, size, question_id=custom_id.split("#")[0] if "#" in custom_id else None
        )
        if mode == "hang":  # no HTTP connection to time out inside a batch: the request fails
            return 500, {"error": {"message": "timed out"}}
        return status, reply

    return respond


class BatchServer:
    """The server (see the module docstring). Use as a context manager or call `start()` / `stop()`."""

    def __init__(self, respond: Responder, plans: Sequence[BatchPlan] = (), max_requests: int = 50_000):
        self.respond = respond
        self.plans = list(plans)
        self.max_requests = max_requests
        self.files: dict[str, dict[str, Any]] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self._outcomes: dict[str, tuple[BatchPlan, int]] = {}
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._released = False

    def release(self) -> None:
        """Let the batches planned with `polls=None` finish at their next retrieval."""
        with self._lock:
            self._released = True

    @property
    def base_url(self) -> str:
        """The OpenAI-style root (`.../v1`); an Azure client takes `azure_endpoint=root_url`."""
        return self.root_url + "/v1"

    @property
    def root_url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("BatchServer is not started")
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def start(self) -> BatchServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server._handle(self, "GET")

            def do_POST(self):
                server._handle(self, "POST")

            def log_message(self, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> BatchServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # --- HTTP -----------------------------------------------------------------------------------------------------

    def _handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        path = urlsplit(handler.path).path
        prefix = next((p for p in PREFIXES if path.startswith(p + "/")), None)
        parts = path[len(prefix) :].strip("/").split("/") if prefix else []
        body = handler.rfile.read(int(handler.headers.get("Content-Length", 0) or 0))
        try:
            with self._lock:
                status, payload = self._route(method, parts, handler.headers.get("Content-Type", ""), body)
        except (ValueError, KeyError) as err:
            status, payload = 400, {"error": {"message": f"bad request: {err}"}}
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        handler.send_response(status)
        handler.send_header(
            "Content-Type", "application/octet-stream" if isinstance(payload, bytes) else "application/json"
        )
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def _route(self, method: str, parts: list[str], content_type: str, body: bytes) -> tuple[int, Any]:
        not_found = 404, {"error": {"message": f"no route {method} /{'/'.join(parts)}"}}
        if parts[:1] == ["files"]:
            if method == "POST" and len(parts) == 1:
                return 200, self._upload(content_type, body)
            if method == "GET" and len(parts) >= 2 and parts[1] in self.files:
                file = self.files[parts[1]]
                return (200, file["content"]) if parts[2:] == ["content"] else (200, file["object"])
            return not_found
        if parts[:1] == ["batches"]:
            if method == "POST" and len(parts) == 1:
                return 200, self._create(json.loads(body))
            if method == "GET" and len(parts) == 1:
                listing = sorted(self.batches.values(), key=lambda b: b["created_at"], reverse=True)
                return 200, {"object": "list", "data": listing, "has_more": False}
            if method == "GET" and len(parts) == 2 and parts[1] in self.batches:
                return 200, self._retrieve(parts[1])
        return not_found

    # --- Files ----------------------------------------------------------------------------------------------------

    def _upload(self, content_type: str, body: bytes) -> dict[str, Any]:
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            f"Content-Type: {content_type}\r\n\r\n".encode() + body
        )
        fields = {part.get_param("name", header="content-disposition"): part for part in message.iter_parts()}
        content = fields["file"].get_payload(decode=True)
        purpose = fields["purpose"].get_payload(decode=True).decode()
        self.counts["files_uploaded"] += 1
        return self._store(content, fields["file"].get_filename() or "upload.jsonl", purpose)["object"]

    def _store(self, content: bytes, filename: str, purpose: str) -> dict[str, Any]:
        file_id = f"file-{len(self.files) + 1:04d}"
        created = int(time.time())
        obj = {"id": file_id, "object": "file", "bytes": len(content), "created_at": created, "filename": filename,
               "purpose": purpose, "status": "processed"}  # fmt: skip
        self.files[file_id] = {"content": content, "object": obj}
        return self.files[file_id]

    # --- Batches --------------------------------------------------------------------------------------------------

    def _create(self, request: Mapping[str, Any]) -> dict[str, Any]:
        file_id = request["input_file_id"]
        if file_id not in self.files:
            raise KeyError(f"no file {file_id}")
        batch_id = f"batch_{len(self.batches) + 1:04d}"
        self.counts["batches_created"] += 1
        self.batches[batch_id] = {
            "id": batch_id, "object": "batch", "endpoint": request["endpoint"], "input_file_id": file_id,
            "completion_window": request["completion_window"], "status": "validating",
            "created_at": time.time_ns() // 1000, "metadata": request.get("metadata"), "output_file_id": None,
            "error_file_id": None, "errors": None, "request_counts": {"total": 0, "completed": 0, "failed": 0},
        }  # fmt: skip
        self._outcomes[batch_id] = (self.plans.pop(0) if self.plans else BatchPlan(), 0)
        return self.batches[batch_id]

    def _retrieve(self, batch_id: str) -> dict[str, Any]:
        self.counts["retrievals"] += 1
        batch = self.batches[batch_id]
        if batch["status"] in ("completed", "failed", "expired"):
            return batch
        plan, polls = self._outcomes[batch_id]
        self._outcomes[batch_id] = (plan, polls + 1)
        if (plan.polls is None and not self._released) or (plan.polls is not None and polls < plan.polls):
            batch["status"] = "in_progress"
            return batch
        self._finish(batch, plan)
        return batch

    def _finish(self, batch: dict[str, Any], plan: BatchPlan) -> None:
        lines, problem = self._validate(self.files[batch["input_file_id"]]["content"], batch["endpoint"])
        if problem or plan.outcome == "failed":
            batch["status"] = "failed"
            message = problem or "the batch failed (scripted)"
            batch["errors"] = {"object": "list", "data": [{"code": "invalid_request", "message": message,
                                                           "line": None, "param": None}]}  # fmt: skip
            return
        output, errors = [], []
        for i, line in enumerate(lines):
            custom_id = line["custom_id"]
            record = {"id": f"batch_req_{batch['id']}_{i}", "custom_id": custom_id}
            if plan.outcome == "expired" and i >= plan.answered:
                message = "This request could not be executed before the completion window expired."
                errors.append({**record, "response": None, "error": {"code": "batch_expired", "message": message}})
                continue
            if i < plan.error_lines:
                status, body = 500, {"error": {"message": "The server had an error processing your request."}}
            else:
                status, body = self.respond(line["body"], custom_id)
                self.counts["requests_answered"] += 1
            record["response"] = {"status_code": status, "request_id": f"req_{i}", "body": body}
            record["error"] = None
            (output if status == 200 else errors).append(record)
        for name, records in (("output_file_id", output), ("error_file_id", errors)):
            if records:
                content = "".join(json.dumps(r) + "\n" for r in records).encode()
                batch[name] = self._store(content, f"{batch['id']}_{name}.jsonl", "batch_output")["object"]["id"]
        batch["status"] = plan.outcome
        batch["request_counts"] = {"total": len(lines), "completed": len(output), "failed": len(errors)}

    def _validate(self, content: bytes, endpoint: str) -> tuple[list[dict[str, Any]], str | None]:
        lines, seen = [], set()
        for number, text in enumerate(content.decode().splitlines(), 1):
            try:
                line = json.loads(text)
            except ValueError:
                return [], f"line {number} is not JSON"
            if line.get("method") != "POST" or line.get("url") != endpoint or "body" not in line:
                return [], f"line {number}: method must be POST, url {endpoint!r}, and a body given"
            if line.get("custom_id") in seen:
                return [], f"line {number}: custom_id {line.get('custom_id')!r} is not unique"
            seen.add(line.get("custom_id"))
            lines.append(line)
        if len(lines) > self.max_requests:
            return [], f"{len(lines)} requests; at most {self.max_requests} a batch"
        return lines, None
