"""`Tokenizer` backed by a `tokenizers.Tokenizer`: HF tokenizer directories and GGUF-built vocabularies."""

from __future__ import annotations

import os
from typing import Any

from tokenizers import Tokenizer as Backend

from .base import Tokenizer
from .errors import TokenizerError
from .hf_files import CONFIG_FILE, TOKENIZER_FILE, read_chat_template, read_json, read_special_tokens, write_hf_files

# tokenizer_config.json entries worth carrying over when re-exporting an HF directory.
_KEPT_CONFIG_KEYS = ("add_bos_token", "add_eos_token", "model_max_length")


class HFTokenizer(Tokenizer):
    """A tokenizer whose pipeline is a `tokenizers.Tokenizer` (encoded without its post-processor's specials)."""

    def __init__(
        self,
        backend: Backend,
        *,
        source: str,
        special_tokens: dict[str, str | None],
        chat_template: str | None,
        vocab_size: int | None = None,
        export_config: dict[str, Any] | None = None,
    ) -> None:
        self._backend = backend
        self._export_config = dict(export_config or {})
        if vocab_size is None:
            vocab_size = max(backend.get_vocab(with_added_tokens=True).values(), default=-1) + 1
        special_ids = {index for index, token in backend.get_added_tokens_decoder().items() if token.special}
        super().__init__(
            source=source,
            vocab_size=vocab_size,
            special_tokens=special_tokens,
            special_ids=special_ids,
            chat_template=chat_template,
            adds_bos=_adds_bos(backend, special_tokens, self._export_config),
        )

    @property
    def backend(self) -> Backend:
        """The underlying `tokenizers.Tokenizer`."""
        return self._backend

    def token_to_id(self, token: str) -> int | None:
        """The id of vocabulary entry `token`, or None."""
        return self._backend.token_to_id(token)

    def _encode_plain(self, text: str) -> list[int]:
        return self._backend.encode(text, add_special_tokens=False).ids

    def _encode_plain_batch(self, texts: list[str]) -> list[list[int]]:
        return [encoding.ids for encoding in self._backend.encode_batch(texts, add_special_tokens=False)]

    def _decode_plain(self, ids: list[int], skip_special_tokens: bool) -> str:
        return self._backend.decode(self._keep(ids, skip_special_tokens), skip_special_tokens=skip_special_tokens)

    def _decode_plain_batch(self, batch: list[list[int]], skip_special_tokens: bool) -> list[str]:
        kept = [self._keep(ids, skip_special_tokens) for ids in batch]
        return self._backend.decode_batch(kept, skip_special_tokens=skip_special_tokens)

    def _keep(self, ids: list[int], skip_special_tokens: bool) -> list[int]:
        # The backend only skips added tokens marked special; our special_ids also cover e.g. a plain-vocab BOS.
        return [i for i in ids if i not in self.special_ids] if skip_special_tokens else ids

    def save(self, directory: str) -> None:
        """Write tokenizer.json, tokenizer_config.json (with the chat template) and special_tokens_map.json."""
        write_hf_files(
            directory,
            self._backend,
            special_tokens=self.special_tokens,
            chat_template=self.chat_template,
            extra_config=self._export_config,
        )


def _adds_bos(backend: Backend, special_tokens: dict[str, str | None], config: dict[str, Any]) -> bool:
    """The tokenizer's own BOS rule: `add_bos_token` in tokenizer_config.json when it says (transformers
    rebuilds the post-processor from it), else whether the post-processor puts BOS first."""
    if "add_bos_token" in config:
        return bool(config["add_bos_token"])
    bos = special_tokens.get("bos_token")
    ids = backend.encode("a", add_special_tokens=True).ids
    return bos is not None and bool(ids) and ids[0] == backend.token_to_id(bos)


def load_hf_directory(directory: str) -> HFTokenizer:
    """The tokenizer in an HF tokenizer directory (tokenizer.json plus tokenizer_config.json / chat template)."""
    tokenizer_path = os.path.join(directory, TOKENIZER_FILE)
    try:
        backend = Backend.from_file(tokenizer_path)
    except Exception as error:  # tokenizers raises a bare Exception on malformed files
        raise TokenizerError(f"cannot read {tokenizer_path}: {error}") from error
    config = read_json(os.path.join(directory, CONFIG_FILE))
    return HFTokenizer(
        backend,
        source=directory,
        special_tokens=read_special_tokens(directory, config),
        chat_template=read_chat_template(directory, config),
        export_config={key: config[key] for key in _KEPT_CONFIG_KEYS if key in config},
    )
