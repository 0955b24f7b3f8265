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

from jz3_jax.decoding.requests import Generation, TokenLogprob
from jz3_jax.decoding.sampling import SamplingParams
from jz3_jax.serve import models
from jz3_jax.serve.logprobs import (Entry, chat_logprobs, completion_logprobs, prompt_entries, token_bytes,
                                    token_entries)

CHAT = "chat"
COMPLETION = "completion"
# Fields that would change what a client gets back but are not implemented: only these no-op
# values pass (compared by type too: `false` is not 0); anything else is a 400 naming the field.
_UNSUPPORTED = {"suffix": ("",), "frequency_penalty": (0,), "presence_penalty": (0,), "logit_bias": ({},),
                "tools": ([],), "functions": ([],), "tool_choice": ("none", "auto"),
                "parallel_tool_calls": (True, False), "response_format": ({"type": "text"},)}


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
    max_logprobs: int = 20  # engine.max_logprobs: the largest `logprobs` / `top_logprobs`
    _token_text: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)

    def token_text(self, token: int) -> str:
        """One token's text as a logprobs entry names it: its decoded text (special tokens spelled
        out), or, for a byte-level token that is only part of a UTF-8 character, `bytes:\\xNN...`
        as OpenAI writes it."""
        text = self._token_text.get(token)
        if text is None:
            text = self.tokenizer.decode([token], skip_special_tokens=False)
            if "\ufffd" in text:
                raw = token_bytes(self.tokenizer, token)
                if raw is not None and b"\xef\xbf\xbd" not in raw:
                    text = "bytes:" + "".join(f"\\x{b:02x}" for b in raw)
            self._token_text[token] = text
        return text


@dataclasses.dataclass
class ParsedRequest:
    """A checked request: its prompts' tokens, one `SamplingParams` per choice, and how to answer.

    Choice i continues prompt i // n (OpenAI's indexing of batched prompts)."""

    kind: str  # CHAT | COMPLETION
    prompts: list[list[int]]
    params: list[SamplingParams]
    stream: bool = False
    include_usage: bool = False
    id: str = ""
    created: int = 0
    n: int = 1
    logprobs: int | None = None  # top-N log-probabilities per token; None: none
    echo: bool = False  # completions: the prompt (and, with logprobs, its tokens' log-probabilities) first
    echo_texts: list[str] = dataclasses.field(default_factory=list)  # per prompt, with echo
    generate: bool = True  # False: max_tokens=0 with echo (score the prompt only)

    @property
    def prompt_ids(self) -> list[int]:
        """The first prompt (the only one of a chat request)."""
        return self.prompts[0]

    @property
    def choice_prompts(self) -> list[list[int]]:
        """Each choice's prompt."""
        return [self.prompts[i // self.n] for i in range(len(self.params))]

    @property
    def prompt_tokens(self) -> int:
        """`usage.prompt_tokens`: every prompt counted once."""
        return sum(len(p) for p in self.prompts)


# --- request parsing ---------------------------------------------------------------------------


def parse_request(kind: str, body: Any, model: ModelInfo) -> ParsedRequest:
    """Check an OpenAI request body (`kind` CHAT or COMPLETION; decoded JSON) and tokenize its prompt(s).

    Raises ApiError: 404 for an unknown model, 400 for anything else the engine could not run or
    that OpenAI would refuse.
    """
    if not isinstance(body, dict):
        raise invalid("the request body must be a JSON object")
    try:
        checked = (models.ChatRequest if kind == CHAT else models.CompletionRequest).model_validate(body)
    except pydantic.ValidationError as error:
        raise _validation_error(error) from None
    for key, allowed in _UNSUPPORTED.items():
        value = getattr(checked, key, None)
        if value is not None and not any(type(value) is type(a) and value == a for a in allowed):
            if not (isinstance(value, float) and value == 0 and 0 in allowed):
                raise invalid(f"{key!r} is not supported by this server (only {' or '.join(map(repr, allowed))})",
                              key, "unsupported_parameter")
    if checked.model is not None and checked.model != model.name:
        raise ApiError(404, f"the model {checked.model!r} does not exist; this server serves {model.name!r}",
                       param="model", code="model_not_found")
    max_tokens = checked.max_completion_tokens if checked.max_completion_tokens is not None else checked.max_tokens
    max_param = "max_completion_tokens" if checked.max_completion_tokens is not None else "max_tokens"
    echo, echo_texts = False, []
    if isinstance(checked, models.ChatRequest):
        if checked.top_logprobs is not None and not checked.logprobs:
            raise invalid("'top_logprobs' needs 'logprobs': true", "top_logprobs")
        logprobs = (checked.top_logprobs or 0) if checked.logprobs else None
        logprobs_param = "top_logprobs"
    else:
        logprobs, logprobs_param, echo = checked.logprobs, "logprobs", checked.echo
        if checked.best_of is not None and checked.best_of != checked.n:
            raise invalid("'best_of' is supported only equal to 'n'", "best_of", "unsupported_parameter")
    if logprobs is not None and logprobs > model.max_logprobs:
        raise invalid(f"{logprobs_param}={logprobs} exceeds this server's limit of {model.max_logprobs} "
                      "(engine.max_logprobs)" if model.max_logprobs else
                      "log-probabilities are off on this server (engine.max_logprobs=0)", logprobs_param)
    if isinstance(checked, models.ChatRequest):
        prompts, prompt_param = [_chat_prompt(checked, model.tokenizer)], "messages"
    else:
        texts, prompts = _completion_prompts(checked.prompt, model.tokenizer)
        prompt_param = "prompt"
        if echo:
            echo_texts = [t if t is not None else model.tokenizer.decode(p) for t, p in zip(texts, prompts)]
    if len(prompts) * checked.n > models.MAX_CHOICES:
        raise invalid(f"{len(prompts)} prompts x n={checked.n} exceeds {models.MAX_CHOICES} choices per request", "n")
    generate = max_tokens != 0
    if not generate and not echo:
        raise invalid(f"'{max_param}' must be at least 1 (0 only with 'echo': true, to score the prompt)", max_param)
    if checked.stream_options is not None and not checked.stream:
        raise invalid("'stream_options' needs 'stream': true", "stream_options")

    limits = []
    for ids in prompts:
        room = model.max_seq_len - len(ids)
        if not ids:
            raise invalid("the prompt is empty", prompt_param)
        if not generate:
            if room < 0:
                raise _too_long(len(ids), 0, model.max_seq_len, prompt_param)
            limits.append(1)  # a placeholder: nothing is generated
        elif room < 1:
            raise _too_long(len(ids), 1, model.max_seq_len, prompt_param)
        elif max_tokens is None:
            limits.append(min(model.defaults.max_new_tokens, room))
        elif max_tokens > room:
            raise _too_long(len(ids), max_tokens, model.max_seq_len, prompt_param)
        else:
            limits.append(max_tokens)

    defaults = model.defaults
    stop = (checked.stop,) if isinstance(checked.stop, str) else tuple(checked.stop or ())
    temperature = defaults.temperature if checked.temperature is None else checked.temperature
    top_p = defaults.top_p if checked.top_p is None else checked.top_p
    top_k = defaults.top_k if checked.top_k is None else max(checked.top_k, 0)
    seed = checked.seed
    n = checked.n
    try:
        params = [SamplingParams(temperature=temperature, top_p=top_p, top_k=top_k, max_new_tokens=limits[i // n],
                                 seed=None if seed is None else seed + i, stop=stop, logprobs=logprobs)
                  for i in range(len(prompts) * n)]
    except ValueError as error:  # the engine's own checks, in case they are stricter than ours
        raise invalid(str(error)) from error
    include_usage = checked.stream_options is not None and checked.stream_options.include_usage
    prefix = "chatcmpl-" if kind == CHAT else "cmpl-"
    return ParsedRequest(kind, prompts, params, checked.stream, include_usage, prefix + uuid.uuid4().hex[:24],
                         int(time.time()), n=n, logprobs=logprobs, echo=echo, echo_texts=echo_texts,
                         generate=generate)


def _validation_error(error: pydantic.ValidationError) -> ApiError:
    """The first validation problem as a 400 naming the offending field (`messages.0.role`)."""
    problems = error.errors(include_url=False)
    extra = next((p for p in problems if p["type"] == "extra_forbidden"), None)
    if extra is not None:
        name = ".".join(str(part) for part in extra["loc"])
        return invalid(f"{name!r} is not a field this server accepts (see the README for the supported and "
                       "ignored fields)", name, "unsupported_parameter")
    first = problems[0]
    # a union's member names ("str", "list[int]") are part of the location: keep the field path only
    parts = [str(part) for part in first["loc"] if isinstance(part, int) or not any(c in str(part) for c in "[]-")]
    parts = [p for p in parts if p not in ("str", "int", "float", "bool", "dict", "list")]
    param = ".".join(parts) or None
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


def _completion_prompts(prompt, tokenizer) -> tuple[list[str | None], list[list[int]]]:
    """The prompt(s) as (their texts, None for token ids; their token ids)."""
    if isinstance(prompt, str):
        prompt = [prompt]
    elif prompt and isinstance(prompt[0], int):
        prompt = [prompt]
    texts, ids = [], []
    for one in prompt:
        if isinstance(one, str):
            # A raw prompt starts with BOS where the tokenizer itself adds one (as transformers does).
            texts.append(one)
            ids.append(tokenizer.encode(one, add_bos=tokenizer.adds_bos))
        else:
            if not all(0 <= t < tokenizer.vocab_size for t in one):
                raise invalid(f"token ids in 'prompt' must be in [0, {tokenizer.vocab_size})", "prompt")
            texts.append(None)
            ids.append(list(one))  # token ids, as OpenAI's API also accepts
    return texts, ids


# --- response bodies (`models` declares their shape) -----------------------------------------------------


def usage(prompt_tokens: int, completion_tokens: int) -> models.Usage:
    """The `usage` object (generated EOS / stop-completing tokens count as completion tokens)."""
    return models.Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                        total_tokens=prompt_tokens + completion_tokens)


def _object(request: ParsedRequest, chunk: bool) -> str:
    if request.kind == CHAT:
        return "chat.completion.chunk" if chunk else "chat.completion"
    return "text_completion"


def _completion(request: ParsedRequest, model: ModelInfo, chunk: bool, choices: list[models.Choice],
                **usage_field) -> dict:
    return models.Completion(id=request.id, object=_object(request, chunk), created=request.created,
                             model=model.name, choices=choices, **usage_field).body()


def _logprobs(request: ParsedRequest, model: ModelInfo, entries: list[Entry], offset: int = 0):
    if request.logprobs is None:
        return None
    if request.kind == CHAT:
        return chat_logprobs(model.token_text, entries)
    return completion_logprobs(model.token_text, entries, offset)


# --- response bodies ----------------------------------------------------------------------------------


def response_body(request: ParsedRequest, model: ModelInfo, generations: list[Generation],
                  prompt_logprobs: list[list[TokenLogprob]] | None = None) -> dict:
    """The whole (non-streamed) response for `generations`, one per choice in index order;
    `prompt_logprobs` (echo with logprobs) has each choice's scored prompt."""
    choices = []
    for index, gen in enumerate(generations):
        entries = token_entries(gen.logprobs)
        if request.kind == CHAT:
            content = {"message": models.AssistantMessage(role="assistant", content=gen.text)}
        else:
            text = gen.text
            if request.echo:
                text = request.echo_texts[index // request.n] + text
                if prompt_logprobs is not None:
                    entries = prompt_entries(request.prompts[index // request.n], prompt_logprobs[index]) + entries
            content = {"text": text}
        choices.append(models.Choice(index=index, **content, logprobs=_logprobs(request, model, entries),
                                     finish_reason=gen.finish_reason))
    return _completion(request, model, False, choices,
                       usage=usage(request.prompt_tokens, sum(len(g.token_ids) for g in generations)))


def chunk_body(request: ParsedRequest, model: ModelInfo, index: int, text: str | None = None, role: bool = False,
               finish_reason: str | None = None, entries: list[Entry] | None = None, offset: int = 0) -> dict:
    """One streamed chunk for choice `index`: the role opener (chat), new text (and, when the
    request asked, the log-probabilities of `entries`, offsets counted from `offset`), or the finish reason."""
    if request.kind == CHAT:
        delta = models.Delta(role="assistant", content="") if role else models.Delta()
        if text:
            delta.content = text
        content = {"delta": delta}
    else:
        content = {"text": text or ""}
    logprobs = _logprobs(request, model, entries, offset) if entries is not None else None
    choice = models.Choice(index=index, **content, logprobs=logprobs, finish_reason=finish_reason)
    # OpenAI sends null usage on every chunk but the last when usage was asked for
    return _completion(request, model, True, [choice], **({"usage": None} if request.include_usage else {}))


def usage_chunk_body(request: ParsedRequest, model: ModelInfo, completion_tokens: int) -> dict:
    """The last streamed chunk with `stream_options.include_usage`: no choices, the usage."""
    return _completion(request, model, True, [], usage=usage(request.prompt_tokens, completion_tokens))


def models_body(name: str, created: int) -> dict:
    """`GET /v1/models`: the one served model."""
    return models.ModelList(object="list", data=[_model_card(name, created)]).body()


def model_body(name: str, created: int) -> dict:
    """One model object."""
    return _model_card(name, created).body()


def _model_card(name: str, created: int) -> models.ModelCard:
    return models.ModelCard(id=name, object="model", created=created, owned_by="jz3_jax")
