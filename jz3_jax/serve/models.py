"""The OpenAI request bodies as pydantic models: field types and ranges, declared once.

`protocol.parse_request` validates a decoded JSON body against these and adds the checks that need
the served model (its name, tokenizer and context length). Strict types: `"max_tokens": "10"` or
`"stream": 1` is a 400, as OpenAI answers, not silently coerced. Unknown fields are kept and
ignored (clients send `user`, `metadata`, ...); fields that would change the answer but are not
implemented are refused in `protocol`.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

MAX_N = 16  # choices per request; each one takes an engine row
MAX_STOP = 16
ROLES = ("system", "developer", "user", "assistant", "tool")

StrictInt = Annotated[int, Field(strict=True)]
PositiveInt = Annotated[int, Field(strict=True, ge=1)]
StopString = Annotated[str, Field(min_length=1)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow")


class StreamOptions(_Body):
    """`stream_options`: only `include_usage` has an effect."""

    include_usage: bool = False


class _Sampling(_Body):
    """The fields both endpoints share."""

    model: str | None = None
    max_tokens: PositiveInt | None = None
    n: Annotated[int, Field(strict=True, ge=1, le=MAX_N)] = 1
    seed: StrictInt | None = None
    temperature: Annotated[float, Field(strict=True, ge=0.0, le=2.0, allow_inf_nan=False)] | None = None
    top_p: Annotated[float, Field(strict=True, gt=0.0, le=1.0, allow_inf_nan=False)] | None = None
    top_k: Annotated[int, Field(strict=True, ge=-1)] | None = None  # extension; -1 (vLLM's "off") = 0
    stop: StopString | Annotated[list[StopString], Field(max_length=MAX_STOP)] | None = None
    stream: Annotated[bool, Field(strict=True)] = False
    stream_options: StreamOptions | None = None


class TextPart(_Body):
    """One part of a message's content list (text only)."""

    type: Literal["text"]
    text: str


class Message(_Body):
    """One chat message; `content` is a string or a list of text parts."""

    role: Literal[ROLES]  # type: ignore[valid-type]
    content: str | list[TextPart] | None = None

    @property
    def text(self) -> str:
        """The content as one string."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatRequest(_Sampling):
    """`POST /v1/chat/completions`."""

    messages: Annotated[list[Message], Field(min_length=1)]
    max_completion_tokens: PositiveInt | None = None  # the newer name of max_tokens; wins when set


TokenIds = Annotated[list[StrictInt], Field(min_length=1)]


class CompletionRequest(_Sampling):
    """`POST /v1/completions`: one prompt, as a string, a list of one string, or token ids."""

    prompt: Union[str, TokenIds, list[str]]


# --- responses (built by `protocol`, dumped with `exclude_unset`: a field is sent when it was set) ---


class _Reply(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def body(self) -> dict:
        """The JSON-ready dict: the fields that were set (a field set to None is sent as null)."""
        return self.model_dump(exclude_unset=True)


class ErrorDetail(_Reply):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(_Reply):
    """`{"error": {...}}` as OpenAI sends it."""

    error: ErrorDetail


class Usage(_Reply):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(_Reply):
    role: Literal["assistant"]
    content: str


class Delta(_Reply):
    """A chat chunk's delta: the role opener, new content, or nothing (the finishing chunk)."""

    role: Literal["assistant"] | None = None
    content: str | None = None


class Choice(_Reply):
    """One choice of a response or chunk: `message` (chat), `delta` (chat chunk) or `text` (completion)."""

    index: int
    message: AssistantMessage | None = None
    delta: Delta | None = None
    text: str | None = None
    logprobs: None
    finish_reason: str | None


class Completion(_Reply):
    """A whole response or one streamed chunk (`object` says which); `usage` is null on all chunks
    but the last when the client asked for usage, and absent otherwise."""

    id: str
    object: Literal["chat.completion", "chat.completion.chunk", "text_completion"]
    created: int
    model: str
    choices: list[Choice]
    usage: Usage | None = None


class ModelCard(_Reply):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(_Reply):
    object: Literal["list"]
    data: list[ModelCard]
