"""Batch output and error files -> the answer cache, line by line, cache first.

Each output line is `{"custom_id", "response": {"status_code", "body"}, "error"}`. A 200 body is
written to the cache (temp file + fsync + rename) before it is parsed, exactly as a sync answer;
a body that is not a chat completion is moved aside (`malformed`). Other lines are failures counted
by kind (`rate_limited`, `server_error`, `client_error`, or the error's own code such as
`batch_expired`); requests of the batch with no line at all count as the batch's status
(`expired`, `cancelled`, `failed`). Failed requests are returned for another round.
"""

from __future__ import annotations

import json

from jz3_jax.distill.answers import MalformedBody, parse_body


def line_kind(record: dict) -> str:
    """The failure kind of a non-200 output or error line."""
    status = (record.get("response") or {}).get("status_code")
    if status == 429:
        return "rate_limited"
    if isinstance(status, int) and (status >= 500 or status == 408):
        return "server_error"
    if isinstance(status, int) and status >= 400:
        return "client_error"
    error = record.get("error") or {}
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) and code else "batch_error"


def raw_body(body) -> str:
    """The response body as text, as the sync client would have received it."""
    return body if isinstance(body, str) else json.dumps(body, ensure_ascii=False)


def collect_lines(texts: list[str], owned: set[str], batch_status: str, store, on_answer,
                  count_failure) -> tuple[set[str], set[str]]:
    """Store the answers of one finished batch; (answered hashes, failed hashes).

    `store(hash, raw)` writes the cache; `on_answer(hash, raw, answer)` takes a parsed answer;
    `count_failure(kind, hash)` counts one failure.
    """
    answered, failed = set(), set()
    for text in texts:
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                count_failure("malformed_line", None)
                continue
            digest = record.get("custom_id") if isinstance(record, dict) else None
            if digest not in owned or digest in answered:
                continue
            response = record.get("response") or {}
            if response.get("status_code") == 200 and "body" in response:
                raw = raw_body(response["body"])
                store(digest, raw)  # before anything else happens to it
                try:
                    answer = parse_body(raw)
                except MalformedBody:
                    count_failure("malformed", digest)
                    failed.add(digest)
                    continue
                on_answer(digest, raw, answer)
                answered.add(digest)
                failed.discard(digest)
            else:
                count_failure(line_kind(record), digest)
                failed.add(digest)
    for digest in owned - answered - failed:
        count_failure(batch_status if batch_status != "completed" else "missing", digest)
        failed.add(digest)
    return answered, failed
