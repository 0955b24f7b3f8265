"""A running request's host-side progress: its tokens, incremental text, stop strings, ending
(pure Python: the engine feeds it the tokens each dispatch returns)."""

from __future__ import annotations

import dataclasses

from jz3_jax.decoding.detokenize import IncrementalText
from jz3_jax.decoding.requests import Generation, Request, TokenLogprob


@dataclasses.dataclass
class Live:
    request: Request
    seed: int
    tokens: list[int] = dataclasses.field(default_factory=list)
    detok: IncrementalText | None = None  # None without a tokenizer
    text: str = ""
    sent_chars: int = 0
    finish_reason: str | None = None
    logprobs: list[TokenLogprob] | None = None

    @property
    def cached_tokens(self) -> list[int]:
        """The tokens whose keys/values a running row holds: the prompt and every generated token
        but the last (sampled, pending: the next decode step writes it)."""
        return list(self.request.prompt_ids) + self.tokens[:-1]

    def tokens_after(self, steps: int) -> int:
        """Cache tokens the row holds after `steps` more decode steps (at most the prompt plus
        max_new_tokens - 1: the final token is sampled, never written)."""
        prompt, most = len(self.request.prompt_ids), self.request.params.max_new_tokens
        return min(prompt + max(len(self.tokens) - 1, 0) + steps, prompt + most - 1)

    def add(self, new_tokens: list[int], eos_ids: tuple[int, ...],
            logprobs: list[TokenLogprob] | None = None) -> tuple[list[int], str, list[TokenLogprob] | None]:
        """Take a dispatch's new tokens (and their log-probabilities, when asked) up to the request's
        end (EOS, max_new_tokens, a stop string); returns (tokens kept, text delta, their log-probabilities)."""
        params = self.request.params
        # With stop strings the text grows token by token, so the token that completes a stop
        # is the last one kept (tokens sampled after it in the same dispatch are dropped).
        by_token = self.detok is not None and bool(params.stop)
        kept = []
        for token in new_tokens:
            kept.append(token)
            self.tokens.append(token)
            if token in eos_ids:
                self.finish_reason = "stop"
            elif len(self.tokens) >= params.max_new_tokens:
                self.finish_reason = "length"
            if by_token:
                self._extend_text([token])
            if self.finish_reason is not None:
                break
        if logprobs is not None:
            logprobs = [dataclasses.replace(lp, token=token) for lp, token in zip(logprobs, kept)]
            self.logprobs = (self.logprobs or []) + logprobs
        delta = ""
        if self.detok is not None:
            if not by_token:
                self._extend_text(kept)
            # Hold back text that may still grow into a stop string.
            hold = 0 if self.finish_reason else max([len(s) - 1 for s in params.stop] + [0])
            upto = max(self.sent_chars, len(self.text) - hold)
            delta = self.text[self.sent_chars: upto]
            self.sent_chars = upto
        return kept, delta, logprobs

    def generation(self) -> Generation:
        """The finished request's result."""
        return Generation(id=self.request.id, prompt_ids=list(self.request.prompt_ids), token_ids=self.tokens,
                          text=self.text if self.detok is not None else None, finish_reason=self.finish_reason,
                          seed=self.seed, logprobs=self.logprobs)

    def _extend_text(self, tokens: list[int]) -> None:
        """Add `tokens` to the request's text; cut it before a stop string and finish if one appears."""
        params = self.request.params
        searched = len(self.text)
        self.text = self.detok.add(tokens, final=self.finish_reason is not None)
        if params.stop:
            # Text before this update held no stop string: a new one ends in the new text.
            start = max(0, searched - max(len(s) for s in params.stop) + 1)
            cut = min((i for i in (self.text.find(s, start) for s in params.stop) if i >= 0), default=-1)
            if cut >= 0:
                self.text = self.text[:cut]
                self.finish_reason = "stop"
