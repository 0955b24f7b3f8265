"""Log-probabilities in the OpenAI wire format: the legacy completions `logprobs` object and the
chat `logprobs.content` list, from the engine's `TokenLogprob`s (`token_text` names a token as
`ModelInfo.token_text` does)."""

from __future__ import annotations

from typing import Callable

from jz3_jax.decoding.requests import TokenLogprob
from jz3_jax.serve import models

LOGPROB_FLOOR = -9999.0  # a log-probability of -inf is sent as this (JSON has no infinity)


def token_bytes(tokenizer, token: int) -> bytes | None:
    """A byte-level BPE token's raw bytes (GPT-2's byte alphabet), or None when not known."""
    backend = getattr(tokenizer, "backend", None)
    piece = backend.id_to_token(token) if backend is not None else None
    if piece is None:
        return None
    from jz3_jax.tokenizer.byte_tokenizer import _CHAR_TO_BYTE

    if all(c in _CHAR_TO_BYTE for c in piece):
        return bytes(_CHAR_TO_BYTE[c] for c in piece)
    if piece.startswith("<0x") and piece.endswith(">") and len(piece) == 6:  # SentencePiece byte fallback
        return bytes([int(piece[3:5], 16)])
    return None


# One token's entry: (token id, its log-probability or None (echo's first token), [(id, logprob)] or None)
Entry = tuple[int, "float | None", "list[tuple[int, float]] | None"]


def _floor(logprob: float) -> float:
    return logprob if logprob >= LOGPROB_FLOOR else LOGPROB_FLOOR  # -inf (and nan) -> the floor


def prompt_entries(prompt: list[int], scored: list[TokenLogprob]) -> list[Entry]:
    """An echoed prompt's entries: its first token has no log-probability (nothing comes before it)."""
    return [(prompt[0], None, None)] + [(t.token, t.logprob, t.top) for t in scored]


def token_entries(logprobs: list[TokenLogprob] | None) -> list[Entry]:
    """Generated tokens' entries."""
    return [(t.token, t.logprob, t.top) for t in logprobs or []]


def completion_logprobs(token_text: Callable[[int], str], entries: list[Entry], offset: int = 0
                        ) -> models.CompletionLogprobs:
    """The legacy `logprobs` object: `tokens`, `token_logprobs`, `top_logprobs` (a dict per token
    of the top N tokens' text -> log-probability, and the chosen token's, as vLLM and OpenAI send
    it; null for echo's first token) and `text_offset` (each token's start in the choice's text,
    counting the token texts from `offset`)."""
    tokens, values, tops, offsets = [], [], [], []
    for token, logprob, top in entries:
        text = token_text(token)
        tokens.append(text)
        offsets.append(offset)
        offset += len(text)
        values.append(None if logprob is None else _floor(logprob))
        if top is None:
            tops.append(None)
            continue
        mapping: dict[str, float] = {}
        for other, value in top:
            mapping.setdefault(token_text(other), _floor(value))
        if logprob is not None:
            mapping.setdefault(text, _floor(logprob))
        tops.append(mapping)
    return models.CompletionLogprobs(tokens=tokens, token_logprobs=values, top_logprobs=tops, text_offset=offsets)


def _utf8(text: str) -> list[int]:
    if text.startswith("bytes:\\x"):  # a partial UTF-8 character: its raw bytes
        return list(bytes.fromhex(text[len("bytes:"):].replace("\\x", "")))
    return list(text.encode("utf-8", "replace"))


def chat_logprobs(token_text: Callable[[int], str], entries: list[Entry]) -> models.ChatLogprobs:
    """The chat `logprobs` object: `content`, one `{token, logprob, bytes, top_logprobs}` per token."""
    content = []
    for token, logprob, top in entries:
        text = token_text(token)
        alternatives = [models.TopLogprob(token=(alt := token_text(other)), logprob=_floor(value),
                                          bytes=_utf8(alt)) for other, value in top or []]
        content.append(models.ChatTokenLogprob(token=text, logprob=_floor(logprob), bytes=_utf8(text),
                                               top_logprobs=alternatives))
    return models.ChatLogprobs(content=content)
