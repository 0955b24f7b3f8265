"""The backend-independent `Tokenizer` interface: explicit BOS/EOS, batching, chat templates."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence

import jinja2

from .chat_template import render_chat_template
from .errors import TokenizerError

# The named special tokens a chat template may refer to, as transformers passes them.
NAMED_SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "pad_token")


class Tokenizer(ABC):
    """A text tokenizer whose BOS/EOS are added only when asked for.

    Attributes:
        vocab_size: number of token ids (the model's embedding rows).
        bos_id, eos_id, pad_id: the special ids, or None where the tokenizer has none.
        special_ids: ids that `decode(..., skip_special_tokens=True)` drops.
        chat_template: the jinja chat template, or None.
        source: the path the tokenizer was loaded from.
        adds_bos: whether the tokenizer itself puts BOS before a raw text (its own rule: the GGUF
            `tokenizer.ggml.add_bos_token`, a HF post-processor or `add_bos_token`, SentencePiece
            Llama/Mistral models). Callers encoding a raw prompt pass `add_bos=tokenizer.adds_bos`.
    """

    def __init__(
        self,
        *,
        source: str,
        vocab_size: int,
        special_tokens: dict[str, str | None],
        special_ids: set[int],
        chat_template: str | None,
        adds_bos: bool,
    ) -> None:
        self.source = source
        self.vocab_size = vocab_size
        self.special_tokens = {name: special_tokens.get(name) for name in NAMED_SPECIAL_TOKENS}
        self.chat_template = chat_template
        self.bos_id = self._id_of(self.special_tokens["bos_token"])
        self.eos_id = self._id_of(self.special_tokens["eos_token"])
        self.pad_id = self._id_of(self.special_tokens["pad_token"])
        self.unk_id = self._id_of(self.special_tokens["unk_token"])
        named_ids = {self.bos_id, self.eos_id, self.pad_id, self.unk_id} - {None}
        self.special_ids = set(special_ids) | named_ids
        self.adds_bos = bool(adds_bos) and self.bos_id is not None

    # --- backend hooks -------------------------------------------------------------------------

    @abstractmethod
    def token_to_id(self, token: str) -> int | None:
        """The id of `token` (a vocabulary entry, not text to encode), or None if it is not in the vocabulary."""

    @abstractmethod
    def _encode_plain(self, text: str) -> list[int]:
        """Ids for `text`, with no BOS/EOS added."""

    @abstractmethod
    def _decode_plain(self, ids: list[int], skip_special_tokens: bool) -> str:
        """Text for `ids`."""

    @abstractmethod
    def save(self, directory: str) -> None:
        """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json to `directory`."""

    def _encode_plain_batch(self, texts: list[str]) -> list[list[int]]:
        return [self._encode_plain(text) for text in texts]

    def _decode_plain_batch(self, batch: list[list[int]], skip_special_tokens: bool) -> list[str]:
        return [self._decode_plain(ids, skip_special_tokens) for ids in batch]

    # --- public API ----------------------------------------------------------------------------

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Token ids for `text`; BOS/EOS are added only through `add_bos`/`add_eos`.

        Special-token strings inside `text` (e.g. `<|im_start|>`) become their ids.
        """
        return self._add_bos_eos(self._encode_plain(text), add_bos, add_eos)

    def encode_batch(self, texts: list[str], add_bos: bool = False, add_eos: bool = False) -> list[list[int]]:
        """`encode` for each text."""
        return [self._add_bos_eos(ids, add_bos, add_eos) for ids in self._encode_plain_batch(list(texts))]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text for `ids`; special tokens are dropped when `skip_special_tokens`."""
        return self._decode_plain(_as_int_list(ids), skip_special_tokens)

    def decode_batch(self, batch: Sequence[Sequence[int]], skip_special_tokens: bool = True) -> list[str]:
        """`decode` for each id sequence."""
        return self._decode_plain_batch([_as_int_list(ids) for ids in batch], skip_special_tokens)

    @property
    def has_chat_template(self) -> bool:
        """Whether `apply_chat_template` can be used."""
        return bool(self.chat_template)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """Render `messages` ({"role", "content"} dicts) to a prompt string with the tokenizer's chat template."""
        if not self.chat_template:
            raise TokenizerError(f"tokenizer from {self.source} has no chat template")
        specials = {name: value for name, value in self.special_tokens.items() if value is not None}
        try:
            return render_chat_template(
                self.chat_template, messages, add_generation_prompt=add_generation_prompt, special_tokens=specials
            )
        except jinja2.TemplateError as error:
            raise TokenizerError(f"chat template of {self.source} failed: {error}") from error

    # --- helpers -------------------------------------------------------------------------------

    def _id_of(self, token: str | None) -> int | None:
        return None if token is None else self.token_to_id(token)

    def _add_bos_eos(self, ids: list[int], add_bos: bool, add_eos: bool) -> list[int]:
        if add_bos:
            if self.bos_id is None:
                raise TokenizerError(f"tokenizer from {self.source} has no BOS token")
            ids = [self.bos_id, *ids]
        if add_eos:
            if self.eos_id is None:
                raise TokenizerError(f"tokenizer from {self.source} has no EOS token")
            ids = [*ids, self.eos_id]
        return ids

    def __repr__(self) -> str:
        return f"{type(self).__name__}(source={self.source!r}, vocab_size={self.vocab_size})"


def _as_int_list(ids: Iterable[int]) -> list[int]:
    # Accept numpy/jax arrays and tuples as well as lists.
    return [int(i) for i in ids]
