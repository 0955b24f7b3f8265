"""The OpenAI wire format: request bodies in (checked, tokenized), response, chunk and error bodies out.

Nothing here touches the engine or the network: `parse_request` turns a decoded JSON body into the
prompt ids and one `SamplingParams` per choice, or raises `ApiError` with the HTTP status and the
OpenAI-style error body to send back.
"""

from __future__ import annotations

import dataclasses
import math
import time
import uuid
from typing import Any

from jz3_jax.decoding.engine import Generation
from jz3_jax.decoding.sampling import SamplingParams

CHAT = "chat"
COMPLETION = "completion"
MAX_N = 16  # choices per request; each one takes an engine row
MAX_STOP = 16
# Fields that would change what a client gets back but are not implemented: refuse, never ignore.
_UNSUPPORTED = {"logprobs": (None, False), "top_logprobs": (None, 0), "echo": (None, False), "suffix": (None, ""),
                "best_of": (None, 1), "tools": (None, []), "functions": (None, []), "frequency_penalty": (None, 0),
                "presence_penalty": (None, 0), "logit_bias": (None, {}), "response_format": (None, {"type": "text"})}
_ROLES = ("system", "developer", "user", "assistant", "tool")


class ApiError(Exception):
    """A request that fails with HTTP `status` and an OpenAI-style error body."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        """`{"error": {...}}` as OpenAI sends it."""
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    """The OpenAI error object."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def invalid(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    """An HTTP 400 `invalid_request_error`."""
    return ApiError(400, message, param=param, code=code)


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What request parsing needs to know about the served model."""

    name: str
    tokenizer: Any  # jz3_jax.tokenizer.Tokenizer
    max_seq_len: int
    defaults: SamplingParams  # temperature/top_p/top_k/max_new_tokens used when a request omits them


@dataclasses.dataclass
class ParsedRequest:
    """A checked request: the prompt tokens, one `SamplingParams` per choice, and how to answer."""

    kind: str  # CHAT | COMPLETION
    prompt_ids: list[int]
    params: list[SamplingParams]
    stream: bool = False
    include_usage: bool = False
    id: str = ""
    created: int = 0


# --- request parsing ---------------------------------------------------------------------------


def parse_request(kind: str, body: Any, model: ModelInfo) -> ParsedRequest:
    """Check an OpenAI request body (`kind` CHAT or COMPLETION) and tokenize its prompt.

    Raises ApiError (400) for anything the engine could not run or that OpenAI would refuse.
    """
    if not isinstance(body, dict):
        raise invalid("the request body must be a JSON object")
    requested = body.get("model")
    if requested is not None and requested != model.name:
        raise invalid(f"the model {requested!r} does not exist; this server serves {model.name!r}", "model",
                      "model_not_found")
    for key, allowed in _UNSUPPORTED.items():
        if key in body and body[key] not in allowed:
            raise invalid(f"{key!r} is not supported by this server", key, "unsupported_parameter")
    if kind == CHAT:
        prompt_ids, prompt_param = _chat_prompt(body, model.tokenizer), "messages"
    else:
        prompt_ids, prompt_param = _completion_prompt(body, model.tokenizer), "prompt"
    room = model.max_seq_len - len(prompt_ids)
    if not prompt_ids:
        raise invalid("the prompt is empty", prompt_param)
    if room < 1:
        raise _too_long(len(prompt_ids), 1, model.max_seq_len, prompt_param)

    newer = kind == CHAT and body.get("max_completion_tokens") is not None
    max_key = "max_completion_tokens" if newer else "max_tokens"
    max_tokens = _integer(body, max_key, None, low=1)
    if max_tokens is None:
        max_tokens = min(model.defaults.max_new_tokens, room)
    elif max_tokens > room:
        raise _too_long(len(prompt_ids), max_tokens, model.max_seq_len, prompt_param)

    n = _integer(body, "n", 1, low=1, high=MAX_N)
    seed = _integer(body, "seed", None)
    temperature = _number(body, "temperature", model.defaults.temperature, 0.0, 2.0)
    top_p = _number(body, "top_p", model.defaults.top_p, 0.0, 1.0, open_low=True)
    top_k = _integer(body, "top_k", model.defaults.top_k, low=-1)  # extension; -1 (vLLM's "off") = 0
    stop = _stop(body.get("stop"))
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise invalid("'stream' must be a boolean", "stream")
    options = body.get("stream_options")
    if options is not None and (not isinstance(options, dict) or not stream):
        raise invalid("'stream_options' must be an object and needs 'stream': true", "stream_options")
    include_usage = bool((options or {}).get("include_usage", False))
    try:
        params = [SamplingParams(temperature=temperature, top_p=top_p, top_k=max(top_k, 0), max_new_tokens=max_tokens,
                                 seed=None if seed is None else seed + i, stop=stop) for i in range(n)]
    except ValueError as error:  # the engine's own checks, in case they are stricter than ours
        raise invalid(str(error)) from error
    prefix = "chatcmpl-" if kind == CHAT else "cmpl-"
    return ParsedRequest(kind, prompt_ids, params, stream, include_usage, prefix + uuid.uuid4().hex[:24],
                         int(time.time()))


def _too_long(prompt: int, new: int, context: int, param: str) -> ApiError:
    return invalid(f"this model's maximum context length is {context} tokens; the request has {prompt} prompt "
                   f"tokens and asks for {new} new tokens ({prompt + new} in all)", param, "context_length_exceeded")


def _chat_prompt(body: dict, tokenizer) -> list[int]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise invalid("'messages' must be a non-empty list of messages", "messages")
    plain = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in _ROLES:
            raise invalid(f"messages[{i}] must be an object with a 'role' in {', '.join(_ROLES)}", f"messages[{i}]")
        plain.append({"role": message["role"], "content": _message_text(message.get("content"), i)})
    if not tokenizer.has_chat_template:
        raise invalid("the served model's tokenizer has no chat template; use /v1/completions", "messages")
    from jz3_jax.tokenizer import TokenizerError

    try:
        text = tokenizer.apply_chat_template(plain, add_generation_prompt=True)
    except TokenizerError as error:  # e.g. a template that raises on an unexpected role order
        raise invalid(str(error), "messages") from error
    return tokenizer.encode(text)


def _message_text(content: Any, i: int) -> str:
    """A message's content as text: a string, or a list of `{"type": "text", "text": ...}` parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                         and isinstance(p.get("text"), str) for p in content):
        return "".join(p["text"] for p in content)
    raise invalid(f"messages[{i}].content must be a string or a list of text parts", f"messages[{i}].content")


def _completion_prompt(body: dict, tokenizer) -> list[int]:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, str):
        # A raw prompt starts with BOS where the tokenizer itself adds one (as transformers does).
        return tokenizer.encode(prompt, add_bos=tokenizer.adds_bos)
    if isinstance(prompt, list) and prompt and all(_is_int(t) and 0 <= t < tokenizer.vocab_size for t in prompt):
        return list(prompt)  # token ids, as OpenAI's API also accepts
    if isinstance(prompt, list) and len(prompt) > 1 and all(isinstance(p, str) for p in prompt):
        raise invalid("only one prompt per request is supported; send several requests", "prompt")
    raise invalid("'prompt' must be a string, a list of one string, or a list of token ids", "prompt")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _integer(body: dict, key: str, default: int | None, low: int | None = None, high: int | None = None) -> int | None:
    value = body.get(key)
    if value is None:
        return default
    if not _is_int(value) or (low is not None and value < low) or (high is not None and value > high):
        bounds = f" >= {low}" if high is None and low is not None else f" in [{low}, {high}]" if low is not None else ""
        raise invalid(f"{key!r} must be an integer{bounds}, got {value!r}", key)
    return value


def _number(body: dict, key: str, default: float, low: float, high: float, open_low: bool = False) -> float:
    value = body.get(key)
    if value is None:
        return default
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
          and (value > low if open_low else value >= low) and value <= high)
    if not ok:
        raise invalid(f"{key!r} must be a number in {'(' if open_low else '['}{low}, {high}], got {value!r}", key)
    return float(value)


def _stop(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or len(stops) > MAX_STOP or not all(isinstance(s, str) and s for s in stops):
        raise invalid(f"'stop' must be a non-empty string or a list of at most {MAX_STOP} of them", "stop")
    return tuple(stops)


# --- response bodies ---------------------------------------------------------------------------


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    """The `usage` object (generated EOS / stop-completing tokens count as completion tokens)."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _object(request: ParsedRequest, chunk: bool) -> str:
    if request.kind == CHAT:
        return "chat.completion.chunk" if chunk else "chat.completion"
    return "text_completion"


def response_body(request: ParsedRequest, model: str, generations: list[Generation]) -> dict:
    """The whole (non-streamed) response for `generations`, one per choice in index order."""
    choices = []
    for index, gen in enumerate(generations):
        choice: dict[str, Any] = {"index": index}
        if request.kind == CHAT:
            choice["message"] = {"role": "assistant", "content": gen.text}
        else:
            choice["text"] = gen.text
        choice.update(logprobs=None, finish_reason=gen.finish_reason)
        choices.append(choice)
    return {"id": request.id, "object": _object(request, False), "created": request.created, "model": model,
            "choices": choices,
            "usage": usage(len(request.prompt_ids), sum(len(g.token_ids) for g in generations))}


def chunk_body(request: ParsedRequest, model: str, index: int, text: str | None = None, role: bool = False,
               finish_reason: str | None = None) -> dict:
    """One streamed chunk for choice `index`: the role opener (chat), new text, or the finish reason."""
    if request.kind == CHAT:
        delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
        if text:
            delta["content"] = text
        choice: dict[str, Any] = {"index": index, "delta": delta}
    else:
        choice = {"index": index, "text": text or ""}
    choice.update(logprobs=None, finish_reason=finish_reason)
    body = {"id": request.id, "object": _object(request, True), "created": request.created, "model": model,
            "choices": [choice]}
    if request.include_usage:
        body["usage"] = None  # OpenAI sends null usage on every chunk but the last
    return body


def usage_chunk_body(request: ParsedRequest, model: str, completion_tokens: int) -> dict:
    """The last streamed chunk with `stream_options.include_usage`: no choices, the usage."""
    return {"id": request.id, "object": _object(request, True), "created": request.created, "model": model,
            "choices": [], "usage": usage(len(request.prompt_ids), completion_tokens)}


def models_body(name: str, created: int) -> dict:
    """`GET /v1/models`: the one served model."""
    return {"object": "list", "data": [model_body(name, created)]}


def model_body(name: str, created: int) -> dict:
    """One model object."""
    return {"id": name, "object": "model", "created": created, "owned_by": "jz3_jax"}
