"""One HTTP attempt at the teacher with the `openai` client, classified; and the retry back-off.

The client's own retries are off (`max_retries=0`): every attempt must pass the budget first, so
the stage retries itself. An attempt ends as "ok" (a 200 and its raw body, unparsed, so it can be
cached before anything else happens to it), a retryable failure ("rate_limited", "server_error",
"timeout", "connection"; with the server's Retry-After when it sent one), or a `TeacherError` for
what retrying cannot fix (401/403: the key; 404 or an unknown-model 400: the model or URL; other 4xx).
"""

from __future__ import annotations

import dataclasses
import email.utils
import random
import time

from jz3_jax.errors import TeacherError

RETRYABLE = ("rate_limited", "server_error", "timeout", "connection", "malformed")


@dataclasses.dataclass(frozen=True)
class Attempt:
    """How one attempt ended: `kind` is "ok" or one of RETRYABLE."""

    kind: str
    raw: str | None = None  # the body of a 200
    retry_after: float | None = None  # seconds the server asked us to wait
    detail: str = ""


def retry_after_seconds(headers) -> float | None:
    """The wait a response asks for (`retry-after-ms`, or `retry-after` in seconds or as an HTTP date)."""
    if headers is None:
        return None
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return max(float(value) / divisor, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value:
        try:
            parsed = email.utils.parsedate_tz(value)
            if parsed is not None:
                return max(float(email.utils.mktime_tz(parsed) - time.time()), 0.0)
        except (TypeError, ValueError, OverflowError):
            return None
    return None


def backoff_delay(retry: int, base: float, cap: float, retry_after: float | None, rng: random.Random) -> float:
    """Seconds before retry number `retry` (0-based): full jitter on min(cap, base * 2**retry), and
    never less than the server's Retry-After."""
    delay = rng.uniform(0.0, min(cap, base * 2.0 ** retry))
    return max(delay, retry_after or 0.0)


class TeacherClient:
    """The teacher endpoint behind the `openai` client, one classified attempt at a time."""

    def __init__(self, base_url: str, api_key: str, timeout_s: float):
        import openai

        self._openai = openai
        self.base_url = base_url
        self._client = openai.OpenAI(base_url=base_url, api_key=api_key, timeout=timeout_s, max_retries=0)

    def attempt(self, body: dict) -> Attempt:
        """Send `body` once; raise TeacherError where retrying cannot help."""
        openai = self._openai
        try:
            response = self._client.chat.completions.with_raw_response.create(**body)
            return Attempt("ok", raw=response.http_response.text)
        except openai.APITimeoutError as error:
            return Attempt("timeout", detail=str(error))
        except openai.APIConnectionError as error:
            return Attempt("connection", detail=f"{error}: {error.__cause__ or ''}")
        except openai.APIStatusError as error:
            return self._status_failure(error, body)

    def _status_failure(self, error, body: dict) -> Attempt:
        status = error.status_code
        wait = retry_after_seconds(getattr(error.response, "headers", None))
        message = _message(error)
        if status == 429:
            return Attempt("rate_limited", retry_after=wait, detail=message)
        if status >= 500 or status == 408:
            return Attempt("server_error", retry_after=wait, detail=f"{status}: {message}")
        if status in (401, 403):
            raise TeacherError(f"the teacher at {self.base_url} refused the API key (HTTP {status}: {message}); "
                               "check the variable named by teacher.api_key_env")
        code = getattr(error, "code", None)
        if status == 404 or code == "model_not_found":
            raise TeacherError(f"the teacher at {self.base_url} does not know model {body['model']!r} (HTTP {status}: "
                               f"{message}); check teacher.model and teacher.base_url")
        raise TeacherError(f"the teacher at {self.base_url} rejected the request (HTTP {status}: {message})")


def _message(error) -> str:
    body = getattr(error, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return inner["message"]
    return str(getattr(error, "message", error))
