"""Read a raw chat-completions response body: the answer text, why it ended, and its usage."""

from __future__ import annotations

import dataclasses
import json


@dataclasses.dataclass(frozen=True)
class Answer:
    """The parts of a chat completion distill uses."""

    content: str | None  # None: the teacher refused or sent no text
    refusal: str | None
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    model: str | None
    usage_known: bool = True  # False: the body had no usage (the token budget counts the bound)


class MalformedBody(ValueError):
    """A 200 response whose body is not a chat completion."""


def parse_body(raw: str) -> Answer:
    """The `Answer` in a response body, or MalformedBody saying what is wrong."""
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, TypeError) as error:
        raise MalformedBody(f"not JSON ({error})") from None
    if not isinstance(body, dict):
        raise MalformedBody(f"expected a JSON object, got {type(body).__name__}")
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise MalformedBody("no choices")
    message = choices[0].get("message")
    if not isinstance(message, dict):
        raise MalformedBody("choice without a message")
    content, refusal = message.get("content"), message.get("refusal")
    if content is not None and not isinstance(content, str):
        raise MalformedBody(f"message content is {type(content).__name__}, not a string")
    usage = body.get("usage") if isinstance(body.get("usage"), dict) else None
    known = usage is not None
    usage = usage or {}
    tokens = [usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)]
    if not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in tokens):
        raise MalformedBody(f"bad usage {usage!r}")
    model = body.get("model") if isinstance(body.get("model"), str) else None
    return Answer(content, refusal if isinstance(refusal, str) else None, choices[0].get("finish_reason"),
                  tokens[0], tokens[1], model, known)
