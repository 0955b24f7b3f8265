"""The OpenAI request bodies as pydantic models: field types and ranges, declared once.

`protocol.parse_request` validates a decoded JSON body against these and adds the checks that need
the served model (its name, tokenizer, context length and log-probability limit). Strict types:
`"max_tokens": "10"`, `"stream": 1`, `"echo": 0` or `"logprobs": true` is a 400 (booleans are not
integers and integers are not booleans), as OpenAI answers, never silently coerced. Every field is
declared: an unknown one is a 400 naming it. Fields accepted but ignored (`IGNORED`) are listed in
the README; fields that would change the answer but are not implemented are declared here with
their no-op values and `protocol` refuses any other value (`unsupported_parameter`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

MAX_N = 16  # choices per prompt; each one takes an engine row
MAX_PROMPTS = 64  # prompts per /v1/completions request
MAX_CHOICES = 256  # prompts x n
MAX_STOP = 16
ROLES = ("system", "developer", "user", "assistant", "tool")
# Accepted and ignored (the README lists them): they do not change the answer.
IGNORED = ("user", "metadata", "store", "service_tier")

PositiveInt = Annotated[int, Field(strict=True, ge=1)]
NonNegativeInt = Annotated[int, Field(strict=True, ge=0)]
StrictFloat = Annotated[float, Field(strict=True, allow_inf_nan=False)]
StopString = Annotated[str, Field(min_length=1)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StreamOptions(_Body):
    """`stream_options`: only `include_usage`."""

    include_usage: StrictBool = False


class _Sampling(_Body):
    """The fields both endpoints share."""

    model: str | None = None
    max_tokens: NonNegativeInt | None = None  # 0 only with echo (completions): score the prompt
    max_completion_tokens: NonNegativeInt | None = None  # the newer name of max_tokens; wins when set
    n: Annotated[int, Field(strict=True, ge=1, le=MAX_N)] = 1
    seed: StrictInt | None = None
    temperature: Annotated[float, Field(strict=True, ge=0.0, le=2.0, allow_inf_nan=False)] | None = None
    top_p: Annotated[float, Field(strict=True, gt=0.0, le=1.0, allow_inf_nan=False)] | None = None
    top_k: Annotated[int, Field(strict=True, ge=-1)] | None = None  # extension; -1 (vLLM's "off") = 0
    stop: StopString | Annotated[list[StopString], Field(max_length=MAX_STOP)] | None = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    # not implemented: only their no-op values pass (`protocol._UNSUPPORTED`)
    frequency_penalty: StrictFloat | None = None
    presence_penalty: StrictFloat | None = None
    logit_bias: dict[str, Any] | None = None
    # ignored
    user: str | None = None
    metadata: dict[str, Any] | None = None
    store: StrictBool | None = None
    service_tier: str | None = None


class TextPart(_Body):
    """One part of a message's content list (text only)."""

    type: Literal["text"]
    text: str


class Message(_Body):
    """One chat message; `content` is a string or a list of text parts (`name` is ignored)."""

    role: Literal[ROLES]  # type: ignore[valid-type]
    content: str | list[TextPart] | None = None
    name: str | None = None

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
    logprobs: StrictBool = False
    top_logprobs: NonNegativeInt | None = None  # needs logprobs: true
    # not implemented: only their no-op values pass
    tools: list[Any] | None = None
    functions: list[Any] | None = None
    tool_choice: Any = None
    parallel_tool_calls: StrictBool | None = None
    response_format: dict[str, Any] | None = None


TokenIds = Annotated[list[StrictInt], Field(min_length=1)]
Prompt = Union[str, Annotated[list[str], Field(min_length=1, max_length=MAX_PROMPTS)], TokenIds,
               Annotated[list[TokenIds], Field(min_length=1, max_length=MAX_PROMPTS)]]


class CompletionRequest(_Sampling):
    """`POST /v1/completions`: a prompt (a string or token ids) or a list of prompts."""

    prompt: Prompt
    echo: StrictBool = False
    logprobs: NonNegativeInt | None = None  # top-N per token (0: the chosen token's only)
    best_of: PositiveInt | None = None  # only equal to n
    suffix: str | None = None  # only empty


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


class CompletionLogprobs(_Reply):
    """A completion choice's `logprobs` (legacy format): one entry per token; with echo the
    prompt's first token has null `token_logprobs` and `top_logprobs`."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class TopLogprob(_Reply):
    token: str
    logprob: float
    bytes: list[int] | None


class ChatTokenLogprob(_Reply):
    token: str
    logprob: float
    bytes: list[int] | None
    top_logprobs: list[TopLogprob]


class ChatLogprobs(_Reply):
    """A chat choice's `logprobs`: `content`, one entry per token."""

    content: list[ChatTokenLogprob] | None


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
    logprobs: CompletionLogprobs | ChatLogprobs | None
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
