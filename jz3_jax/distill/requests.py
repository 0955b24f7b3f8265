"""Snippet records in, teacher requests out: one chat request per (snippet, level, kind), hashed.

The request hash is the SHA-256 of the canonical JSON of the full request body (model, messages,
sampling settings), so any change to the prompt or the settings is a different request, and the
same request is the same hash in every run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

from jz3_jax.prompts.plan import PlannedPrompt, PromptPlan
from jz3_jax.prompts.snippets import Snippet

_PER_MESSAGE_TOKENS = 16  # chat-template tokens around one message (a generous bound)


@dataclasses.dataclass(frozen=True)
class TeacherRequest:
    """One request: the prompt it renders, the body sent, its hash and a bound on its token cost."""

    prompt: PlannedPrompt
    body: dict
    hash: str
    token_bound: int


def request_body(prompt: str, teacher) -> dict:
    """The chat-completions body for one prompt under the `teacher` settings."""
    body = {"model": teacher.model, "messages": [{"role": "user", "content": prompt}],
            "temperature": teacher.temperature, "top_p": teacher.top_p, "max_tokens": teacher.max_tokens}
    if teacher.stop:
        body["stop"] = list(teacher.stop)
    return body


def request_hash(body: dict) -> str:
    canonical = json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def token_bound(body: dict) -> int:
    """At most the tokens one attempt can cost: no tokenizer makes more tokens than UTF-8 bytes,
    plus the chat template's tokens around each message, plus `max_tokens`."""
    prompt = sum(len(m["content"].encode("utf-8")) + _PER_MESSAGE_TOKENS for m in body["messages"])
    return prompt + _PER_MESSAGE_TOKENS + body["max_tokens"]


def build_requests(snippets: list[Snippet], plan: PromptPlan, teacher) -> list[TeacherRequest]:
    """Every request of the run, in snippet then (level, kind) order, without repeats."""
    requests, seen = [], set()
    for snippet in snippets:
        for prompt in plan.prompts(snippet.id, snippet.source, snippet.text):
            body = request_body(prompt.prompt, teacher)
            digest = request_hash(body)
            if digest not in seen:
                seen.add(digest)
                requests.append(TeacherRequest(prompt, body, digest, token_bound(body)))
    return requests
