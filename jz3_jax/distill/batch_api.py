"""The provider's Files and Batches endpoints through the `openai` client, with retries.

Uploads, downloads and lookups are retried (`teacher.max_retries`, with the stage's back-off) on a
429, a 5xx, a timeout or a dropped connection: none of them can pay for a request twice. A
`batches.create` is the one call that submits requests, so before each retry of it the provider's
batches are listed for this batch's `jz3_ledger` metadata: a create whose answer was lost to a
dropped connection is found, not repeated. A 404 on the batch endpoints means the provider has no
Batch API: a TeacherError naming `distill.mode` and the URL.
"""

from __future__ import annotations

import random
import time

from jz3_jax.distill.client import backoff_delay, retry_after_seconds
from jz3_jax.errors import TeacherError

ENDPOINT = "/v1/chat/completions"
TERMINAL = ("completed", "failed", "expired", "cancelled")


class NotFound(Exception):
    """A 404 from the provider."""


class BatchAPI:
    """Files and batches of one provider (`teacher.*`)."""

    def __init__(self, tc, api_key: str, seed: int = 0):
        import openai

        self._openai = openai
        self.tc = tc
        self.base_url = tc.base_url.rstrip("/")
        self._client = openai.OpenAI(base_url=tc.base_url, api_key=api_key, timeout=tc.timeout_s, max_retries=0)
        self._rng = random.Random(seed)

    def _call(self, what: str, fn, before_retry=None):
        """`fn()` with retries on transient failures; NotFound on a 404; TeacherError otherwise."""
        openai, detail = self._openai, ""
        for attempt in range(self.tc.max_retries + 1):
            if attempt:
                if before_retry is not None and (found := before_retry()) is not None:
                    return found
            try:
                return fn()
            except (openai.APITimeoutError, openai.APIConnectionError) as error:
                detail, wait = f"{error}: {error.__cause__ or ''}", None
            except openai.APIStatusError as error:
                status = error.status_code
                if status == 404:
                    raise NotFound(f"{what}: HTTP 404") from None
                if status in (401, 403):
                    raise TeacherError(f"the teacher at {self.base_url} refused the API key (HTTP {status}) "
                                       f"while trying to {what}; check teacher.api_key_env") from None
                if status != 429 and status < 500 and status != 408:
                    raise TeacherError(f"distill.mode=batch: {what} at {self.base_url} failed (HTTP {status}: "
                                       f"{error.message})") from None
                detail, wait = f"HTTP {status}", retry_after_seconds(getattr(error.response, "headers", None))
            time.sleep(backoff_delay(attempt, self.tc.backoff_s, self.tc.max_backoff_s, wait, self._rng))
        raise TeacherError(f"distill.mode=batch: could not {what} at {self.base_url} after "
                           f"{self.tc.max_retries + 1} attempts ({detail}); check teacher.base_url and the network")

    def _no_batch_api(self, path: str) -> TeacherError:
        return TeacherError(f"distill.mode=batch needs the Batch API, but {self.base_url}/{path} answers 404 at "
                            f"{self.base_url}; use distill.mode=sync or a provider with /v1/files and /v1/batches")

    def probe(self) -> None:
        """Fail early (before any upload) when the provider has no batch endpoint."""
        try:
            self._call("list batches", lambda: self._client.batches.list(limit=1))
        except NotFound:
            raise self._no_batch_api("batches") from None

    def find(self, ledger_ids: set[str], since: float = 0.0) -> dict[str, str]:
        """ledger id -> batch id, for the provider's batches that carry one of `ledger_ids`; the list
        (newest first) is read back to `since` (a time before the first of them was recorded)."""
        found: dict[str, str] = {}
        if not ledger_ids:
            return found
        try:
            page = self._call("list batches", lambda: self._client.batches.list(limit=100))
        except NotFound:
            raise self._no_batch_api("batches") from None
        for batch in page:  # auto-paginates
            if since and (batch.created_at or since) < since - 600:  # older than any of ours (clock skew)
                break
            lid = (batch.metadata or {}).get("jz3_ledger")
            if lid in ledger_ids:
                found.setdefault(lid, batch.id)
                if len(found) == len(ledger_ids):
                    break
        return found

    def upload(self, name: str, data: bytes) -> str:
        """Upload one batch input file; its file id."""
        try:
            return self._call("upload a batch input file",
                              lambda: self._client.files.create(file=(name, data, "application/jsonl"),
                                                                purpose="batch").id)
        except NotFound:
            raise self._no_batch_api("files") from None

    def create(self, file_id: str, ledger_id: str) -> str:
        """Submit the batch of `file_id` once; its batch id."""
        def create():
            return self._client.batches.create(input_file_id=file_id, endpoint=ENDPOINT, completion_window="24h",
                                               metadata={"jz3_ledger": ledger_id}).id

        try:
            return self._call("submit a batch", create, lambda: self.find({ledger_id}).get(ledger_id))
        except NotFound:
            raise self._no_batch_api("batches") from None

    def retrieve(self, batch_id: str):
        """The provider's batch object, or None when it does not know `batch_id`."""
        try:
            return self._call(f"retrieve batch {batch_id}", lambda: self._client.batches.retrieve(batch_id))
        except NotFound:
            return None

    def content(self, file_id: str) -> str:
        """The text of an output or error file."""
        try:
            return self._call(f"download file {file_id}", lambda: self._client.files.content(file_id).text)
        except NotFound:
            raise TeacherError(f"distill.mode=batch: file {file_id} is gone from {self.base_url}") from None
