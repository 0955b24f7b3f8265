"""The project's tokenizer wrapper: one `Tokenizer` interface over HF, SentencePiece and GGUF tokenizers.

    tok = load_tokenizer("path/to/model.gguf")   # or an HF directory, or a SentencePiece .model
    ids = tok.encode("1 + 1 = 2", add_bos=True)
    prompt = tok.apply_chat_template([{"role": "user", "content": "Hi"}])
"""

from .base import Tokenizer
from .errors import TokenizerError
from .gguf_tokenizer import load_gguf_tokenizer
from .hf_tokenizer import HFTokenizer, load_hf_directory
from .loader import load_tokenizer
from .sentencepiece_tokenizer import SentencePieceTokenizer

__all__ = [
    "HFTokenizer",
    "SentencePieceTokenizer",
    "Tokenizer",
    "TokenizerError",
    "load_gguf_tokenizer",
    "load_hf_directory",
    "load_tokenizer",
]
