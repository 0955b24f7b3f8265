"""A byte-level tokenizer with no merges (ids 0-255 are bytes, then <pad>, <s>, </s>).

Used by the tiny test configs (`model.tokenizer=bytes`): any text round-trips and the vocab fits
a tiny model. Built as a real `tokenizers` pipeline, so it saves and reloads like any HF tokenizer.
"""

from __future__ import annotations

from tokenizers import AddedToken, Tokenizer as Backend, decoders, models, pre_tokenizers

from .hf_tokenizer import HFTokenizer

BYTE_TOKENIZER_NAME = "bytes"
SPECIALS = ("<pad>", "<s>", "</s>")


def byte_tokenizer() -> HFTokenizer:
    """The byte tokenizer: vocab 259 (256 bytes + pad 256, bos 257, eos 258)."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    byte_to_char = {b: c for b, c in enumerate(sorted(alphabet, key=_byte_of))}
    vocab = {char: b for b, char in byte_to_char.items()}
    backend = Backend(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(token, special=True) for token in SPECIALS])
    special = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": None}
    # The project's own tokenizer, so its BOS rule is ours: BOS first, as for Llama/Mistral.
    return HFTokenizer(backend, source=BYTE_TOKENIZER_NAME, special_tokens=special, chat_template=None,
                       export_config={"add_bos_token": True})


def _byte_of(char: str) -> int:
    """GPT-2's byte -> printable-char map, inverted (its alphabet is a permutation of 256 chars)."""
    return _CHAR_TO_BYTE[char]


def _gpt2_char_to_byte() -> dict[str, int]:
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, n = printable[:], 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(printable, chars)}


_CHAR_TO_BYTE = _gpt2_char_to_byte()
