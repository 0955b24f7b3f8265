"""`load_tokenizer`: pick the backend for a path by what it holds."""

from __future__ import annotations

import os

from .base import Tokenizer
from .errors import TokenizerError
from .gguf_tokenizer import load_gguf_tokenizer
from .hf_files import CONFIG_FILE, TOKENIZER_FILE, read_chat_template, read_json
from .hf_tokenizer import load_hf_directory
from .sentencepiece_tokenizer import SentencePieceTokenizer

_GGUF_MAGIC = b"GGUF"
_SENTENCEPIECE_FILE = "tokenizer.model"


from .byte_tokenizer import BYTE_TOKENIZER_NAME, byte_tokenizer


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Load a tokenizer from an HF tokenizer directory, a SentencePiece model file or a GGUF file.

    A directory needs tokenizer.json (or, failing that, a SentencePiece tokenizer.model); a file is read as GGUF
    when it starts with the GGUF magic, as tokenizer.json when so named, and as a SentencePiece model otherwise
    (so `tokenizer.model.v1` and the like work). Raises TokenizerError, naming the path, when nothing loads.
    """
    path = os.fspath(path)
    if path == BYTE_TOKENIZER_NAME:
        return byte_tokenizer()
    if os.path.isdir(path):
        return _load_directory(path)
    if not os.path.isfile(path):
        raise TokenizerError(f"no tokenizer at {path}: no such file or directory")
    if _starts_with(path, _GGUF_MAGIC):
        return load_gguf_tokenizer(path)
    if os.path.basename(path) == TOKENIZER_FILE:
        return load_hf_directory(os.path.dirname(path) or ".")
    return SentencePieceTokenizer(path)


def _load_directory(directory: str) -> Tokenizer:
    if os.path.isfile(os.path.join(directory, TOKENIZER_FILE)):
        return load_hf_directory(directory)
    sentencepiece_path = os.path.join(directory, _SENTENCEPIECE_FILE)
    if os.path.isfile(sentencepiece_path):
        config = read_json(os.path.join(directory, CONFIG_FILE))
        return SentencePieceTokenizer(sentencepiece_path, chat_template=read_chat_template(directory, config))
    raise TokenizerError(f"no tokenizer in directory {directory}: expected {TOKENIZER_FILE} or {_SENTENCEPIECE_FILE}")


def _starts_with(path: str, magic: bytes) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(len(magic)) == magic
    except OSError as error:
        raise TokenizerError(f"cannot read {path}: {error}") from error
