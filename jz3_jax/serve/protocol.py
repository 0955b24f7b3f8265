"""The OpenAI wire format: request bodies in (checked, tokenized), response, chunk and error bodies out.

Nothing here touches the engine or the network: `parse_request` checks a decoded JSON body against
the pydantic models (`models`) and the served model, tokenizes the prompt and returns the prompt ids
and one `SamplingParams` per choice, or raises `ApiError` with the HTTP status and the OpenAI-style
error body to send back.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from typing import Any

import pydantic

from jz3_jax.decoding.engine import Generation
from jz3_jax.decoding.sampling import SamplingParams
from jz3_jax.serve import models

CHAT = "chat"
COMPLETION = "completion"
# Fields that would change what a client gets back but are not implemented: refuse, never ignore.
_UNSUPPORTED = {"logprobs": (None, False), "top_logprobs": (None, 0), "echo": (None, False), "suffix": (None, ""),
                "best_of": (None, 1), "tools": (None, []), "functions": (None, []), "frequency_penalty": (None, 0),
                "presence_penalty": (None, 0), "logit_bias": (None, {}), "response_format": (None, {"type": "text"})}


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
    return models.ErrorResponse(error=models.ErrorDetail(message=message, type=type, param=param, code=code)).body()


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
    """Check an OpenAI request body (`kind` CHAT or COMPLETION; decoded JSON) and tokenize its prompt.

    Raises ApiError (400) for anything the engine could not run or that OpenAI would refuse.
    """
    if not isinstance(body, dict):
        raise invalid("the request body must be a JSON object")
    for key, allowed in _UNSUPPORTED.items():
        if key in body and body[key] not in allowed:
            raise invalid(f"{key!r} is not supported by this server", key, "unsupported_parameter")
    try:
        checked = (models.ChatRequest if kind == CHAT else models.CompletionRequest).model_validate(body)
    except pydantic.ValidationError as error:
        raise _validation_error(error) from None
    if checked.model is not None and checked.model != model.name:
        raise invalid(f"the model {checked.model!r} does not exist; this server serves {model.name!r}", "model",
                      "model_not_found")
    if isinstance(checked, models.ChatRequest):
        prompt_ids, prompt_param = _chat_prompt(checked, model.tokenizer), "messages"
        max_tokens = checked.max_completion_tokens or checked.max_tokens
    else:
        prompt_ids, prompt_param = _completion_prompt(checked.prompt, model.tokenizer), "prompt"
        max_tokens = checked.max_tokens
    room = model.max_seq_len - len(prompt_ids)
    if not prompt_ids:
        raise invalid("the prompt is empty", prompt_param)
    if room < 1:
        raise _too_long(len(prompt_ids), 1, model.max_seq_len, prompt_param)
    if max_tokens is None:
        max_tokens = min(model.defaults.max_new_tokens, room)
    elif max_tokens > room:
        raise _too_long(len(prompt_ids), max_tokens, model.max_seq_len, prompt_param)
    if checked.stream_options is not None and not checked.stream:
        raise invalid("'stream_options' needs 'stream': true", "stream_options")

    defaults = model.defaults
    stop = (checked.stop,) if isinstance(checked.stop, str) else tuple(checked.stop or ())
    temperature = defaults.temperature if checked.temperature is None else checked.temperature
    top_p = defaults.top_p if checked.top_p is None else checked.top_p
    top_k = defaults.top_k if checked.top_k is None else max(checked.top_k, 0)
    seed = checked.seed
    try:
        params = [SamplingParams(temperature=temperature, top_p=top_p, top_k=top_k, max_new_tokens=max_tokens,
                                 seed=None if seed is None else seed + i, stop=stop) for i in range(checked.n)]
    except ValueError as error:  # the engine's own checks, in case they are stricter than ours
        raise invalid(str(error)) from error
    include_usage = checked.stream_options is not None and checked.stream_options.include_usage
    prefix = "chatcmpl-" if kind == CHAT else "cmpl-"
    return ParsedRequest(kind, prompt_ids, params, checked.stream, include_usage, prefix + uuid.uuid4().hex[:24],
                         int(time.time()))


def _validation_error(error: pydantic.ValidationError) -> ApiError:
    """The first validation problem as a 400 naming the offending field (`messages.0.role`)."""
    first = error.errors(include_url=False)[0]
    param = ".".join(str(part) for part in first["loc"]) or None
    return invalid(f"{param}: {first['msg']}" if param else first["msg"], param)


def _too_long(prompt: int, new: int, context: int, param: str) -> ApiError:
    return invalid(f"this model's maximum context length is {context} tokens; the request has {prompt} prompt "
                   f"tokens and asks for {new} new tokens ({prompt + new} in all)", param, "context_length_exceeded")


def _chat_prompt(request: models.ChatRequest, tokenizer) -> list[int]:
    if not tokenizer.has_chat_template:
        raise invalid("the served model's tokenizer has no chat template; use /v1/completions", "messages")
    from jz3_jax.tokenizer import TokenizerError

    plain = [{"role": message.role, "content": message.text} for message in request.messages]
    try:
        text = tokenizer.apply_chat_template(plain, add_generation_prompt=True)
    except TokenizerError as error:  # e.g. a template that raises on an unexpected role order
        raise invalid(str(error), "messages") from error
    return tokenizer.encode(text)


def _completion_prompt(prompt: str | list, tokenizer) -> list[int]:
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, str):
        # A raw prompt starts with BOS where the tokenizer itself adds one (as transformers does).
        return tokenizer.encode(prompt, add_bos=tokenizer.adds_bos)
    if prompt and all(isinstance(t, int) for t in prompt):
        if all(0 <= t < tokenizer.vocab_size for t in prompt):
            return list(prompt)  # token ids, as OpenAI's API also accepts
        raise invalid(f"token ids in 'prompt' must be in [0, {tokenizer.vocab_size})", "prompt")
    if len(prompt) > 1:
        raise invalid("only one prompt per request is supported; send several requests", "prompt")
    raise invalid("'prompt' must be a string, a list of one string, or a list of token ids", "prompt")


# --- response bodies (`models` declares their shape) -----------------------------------------------------


def usage(prompt_tokens: int, completion_tokens: int) -> models.Usage:
    """The `usage` object (generated EOS / stop-completing tokens count as completion tokens)."""
    return models.Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                        total_tokens=prompt_tokens + completion_tokens)


def _object(request: ParsedRequest, chunk: bool) -> str:
    if request.kind == CHAT:
        return "chat.completion.chunk" if chunk else "chat.completion"
    return "text_completion"


def _completion(request: ParsedRequest, model: str, chunk: bool, choices: list[models.Choice], **usage_field) -> dict:
    return models.Completion(id=request.id, object=_object(request, chunk), created=request.created, model=model,
                             choices=choices, **usage_field).body()


def response_body(request: ParsedRequest, model: str, generations: list[Generation]) -> dict:
    """The whole (non-streamed) response for `generations`, one per choice in index order."""
    choices = []
    for index, gen in enumerate(generations):
        content = ({"message": models.AssistantMessage(role="assistant", content=gen.text)} if request.kind == CHAT
                   else {"text": gen.text})
        choices.append(models.Choice(index=index, **content, logprobs=None, finish_reason=gen.finish_reason))
    return _completion(request, model, False, choices,
                       usage=usage(len(request.prompt_ids), sum(len(g.token_ids) for g in generations)))


def chunk_body(request: ParsedRequest, model: str, index: int, text: str | None = None, role: bool = False,
               finish_reason: str | None = None) -> dict:
    """One streamed chunk for choice `index`: the role opener (chat), new text, or the finish reason."""
    if request.kind == CHAT:
        delta = models.Delta(role="assistant", content="") if role else models.Delta()
        if text:
            delta.content = text
        content = {"delta": delta}
    else:
        content = {"text": text or ""}
    choice = models.Choice(index=index, **content, logprobs=None, finish_reason=finish_reason)
    # OpenAI sends null usage on every chunk but the last when usage was asked for
    return _completion(request, model, True, [choice], **({"usage": None} if request.include_usage else {}))


def usage_chunk_body(request: ParsedRequest, model: str, completion_tokens: int) -> dict:
    """The last streamed chunk with `stream_options.include_usage`: no choices, the usage."""
    return _completion(request, model, True, [], usage=usage(len(request.prompt_ids), completion_tokens))


def models_body(name: str, created: int) -> dict:
    """`GET /v1/models`: the one served model."""
    return models.ModelList(object="list", data=[_model_card(name, created)]).body()


def model_body(name: str, created: int) -> dict:
    """One model object."""
    return _model_card(name, created).body()


def _model_card(name: str, created: int) -> models.ModelCard:
    return models.ModelCard(id=name, object="model", created=created, owned_by="jz3_jax")
