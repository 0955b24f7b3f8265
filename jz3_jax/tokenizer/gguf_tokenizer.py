"""Build a tokenizer from the metadata a GGUF file embeds (llama.cpp's `tokenizer.*` keys)."""

from __future__ import annotations

import logging
from typing import Any

from tokenizers import AddedToken, Tokenizer, decoders
from tokenizers.models import BPE

from .errors import TokenizerError
from .gguf_metadata import read_gguf_tokenizer_metadata
from .hf_files import set_bos_eos_post_processor
from .hf_tokenizer import HFTokenizer
from .pretokenizers import PRE_TOKENIZERS, PreTokenizerSpec, byte_level_pre_tokenizer
from .spm_bpe import CONTROL, NORMAL, USER_DEFINED, build_sentencepiece_bpe

logger = logging.getLogger(__name__)

_SPECIAL_ID_KEYS = {
    "bos_token": "tokenizer.ggml.bos_token_id",
    "eos_token": "tokenizer.ggml.eos_token_id",
    "unk_token": "tokenizer.ggml.unknown_token_id",
    "pad_token": "tokenizer.ggml.padding_token_id",
}


def load_gguf_tokenizer(path: str, reader=None) -> HFTokenizer:
    """The tokenizer embedded in the GGUF file at `path` ("gpt2" byte-level BPE or "llama" SentencePiece BPE);
    `reader`: that file's `gguf.GGUFReader` when it is already open (nothing is read from disk again)."""
    meta = read_gguf_tokenizer_metadata(path, reader)
    model = meta.get("tokenizer.ggml.model")
    tokens = meta.get("tokenizer.ggml.tokens")
    if not tokens:
        raise TokenizerError(f"{path} has no tokenizer vocabulary (tokenizer.ggml.tokens)")
    types = meta.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens)

    if model == "gpt2":
        backend = _byte_level_bpe(path, meta, tokens, types)
        add_bos_default = False
    elif model == "llama":
        if meta.get("tokenizer.ggml.remove_extra_whitespaces"):
            raise TokenizerError(f"{path}: SentencePiece vocabularies that remove extra whitespace are not supported")
        scores = meta.get("tokenizer.ggml.scores") or [0.0] * len(tokens)
        backend = build_sentencepiece_bpe(
            tokens,
            scores,
            types,
            add_space_prefix=bool(meta.get("tokenizer.ggml.add_space_prefix", True)),
            merges=meta.get("tokenizer.ggml.merges"),
        )
        add_bos_default = True  # llama.cpp's default for SentencePiece vocabularies
    else:
        raise TokenizerError(f"{path}: unsupported GGUF tokenizer model {model!r} (supported: 'gpt2', 'llama')")

    special_tokens = {
        name: tokens[index] if (index := meta.get(key)) is not None and 0 <= index < len(tokens) else None
        for name, key in _SPECIAL_ID_KEYS.items()
    }
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", add_bos_default))
    add_eos = bool(meta.get("tokenizer.ggml.add_eos_token", False))
    set_bos_eos_post_processor(backend, special_tokens, add_bos=add_bos, add_eos=add_eos)
    return HFTokenizer(
        backend,
        source=path,
        special_tokens=special_tokens,
        chat_template=meta.get("tokenizer.chat_template"),
        vocab_size=len(tokens),
        export_config={"add_bos_token": add_bos, "add_eos_token": add_eos},
    )


def _byte_level_bpe(path: str, meta: dict[str, Any], tokens: list[str], types: list[int]) -> Tokenizer:
    merges = meta.get("tokenizer.ggml.merges")
    if not merges:
        raise TokenizerError(f"{path}: byte-level GGUF vocabulary has no merges (tokenizer.ggml.merges)")
    spec = _pre_tokenizer_spec(path, meta.get("tokenizer.ggml.pre"))
    vocab = {token: index for index, token in enumerate(tokens)}
    pairs = [tuple(merge.split(" ", 1)) for merge in merges]
    backend = Tokenizer(BPE(vocab=vocab, merges=pairs, ignore_merges=spec.ignore_merges, fuse_unk=False))
    backend.pre_tokenizer = byte_level_pre_tokenizer(spec)
    backend.decoder = decoders.ByteLevel()
    # llama.cpp stores control and user-defined tokens as raw text and matches them whole before splitting.
    control = [token for token, kind in zip(tokens, types) if kind == CONTROL]
    user_defined = [token for token, kind in zip(tokens, types) if kind == USER_DEFINED]
    backend.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in control])
    backend.add_tokens([AddedToken(token, special=False, normalized=False) for token in user_defined])
    return backend


def _pre_tokenizer_spec(path: str, name: str | None) -> PreTokenizerSpec:
    if name in (None, "default"):
        logger.warning("%s names no known pre-tokenizer (%r); using the GPT-2 split", path, name)
        return PRE_TOKENIZERS["gpt-2"]
    if name not in PRE_TOKENIZERS:
        raise TokenizerError(
            f"{path}: unsupported GGUF pre-tokenizer {name!r} (supported: {', '.join(sorted(PRE_TOKENIZERS))})"
        )
    return PRE_TOKENIZERS[name]

