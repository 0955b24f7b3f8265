"""Incremental detokenization: the text of a growing token sequence without re-decoding all of it.

Re-decoding a request's whole completion at every dispatch costs time linear in its length, for
every row, on the host thread that also feeds the device: at 2,500-token completions and 64 rows
that is milliseconds per dispatch. `IncrementalText` decodes only a short window each update, in
the manner of vLLM's incremental detokenizer: `_prefix` marks where the last committed stretch of
text began, and the new text is decode(ids[_prefix:]) minus decode(ids[_prefix:_read]). Both
decodes start at the same token, so whatever a tokenizer does at the start of a decode (e.g.
SentencePiece dropping the first token's leading space) cancels out; text that ends in an
incomplete UTF-8 character ("\ufffd") waits for the tokens that complete it. This needs a
decode that is stable at a complete-character boundary (decode(a + b) starts with decode(a)),
which byte-level BPE, SentencePiece and the byte tokenizer are (tests/test_detokenize.py); the
text only ever grows, so streamed deltas are never taken back.
"""

from __future__ import annotations

from collections.abc import Sequence

INCOMPLETE = "\ufffd"


class IncrementalText:
    """`text` equals `tokenizer.decode(ids, skip_special_tokens)` once `add(..., final=True)` has run;
    before that it holds every complete character decoded so far."""

    def __init__(self, tokenizer, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []
        self.text = ""
        self._prefix = 0  # first id of the stretch whose text ends `self.text`
        self._read = 0  # ids whose text is in `self.text`

    def add(self, new_ids: Sequence[int], final: bool = False) -> str:
        """Append `new_ids` and return the text so far. With `final`, an incomplete last character
        is kept as "\ufffd" (as a full decode gives it) instead of waiting for more ids."""
        self.ids.extend(int(i) for i in new_ids)
        if len(self.ids) == self._read:
            return self.text
        decode = self.tokenizer.decode
        before = decode(self.ids[self._prefix:self._read], self.skip_special_tokens)
        after = decode(self.ids[self._prefix:], self.skip_special_tokens)
        if after.endswith(INCOMPLETE) and not final:
            return self.text
        self.text += after[len(before):]
        self._prefix, self._read = self._read, len(self.ids)
        return self.text
