"""Build a `tokenizers.Tokenizer` that reproduces a SentencePiece BPE vocabulary.

Used for GGUF files of tokenizer model "llama" and for exporting a SentencePiece `.model` as HF files.
SentencePiece BPE repeatedly merges the adjacent pair whose concatenation is the highest-scoring piece;
ranking merges by the score of the piece they produce makes HF's BPE do the same.
"""

from __future__ import annotations

from collections.abc import Sequence

from tokenizers import AddedToken, Tokenizer, decoders, normalizers
from tokenizers.models import BPE

# Piece types, numbered alike in SentencePiece's ModelProto and GGUF's tokenizer.ggml.token_type.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

SPACE_MARK = "\u2581"


def derive_merges(tokens: Sequence[str], scores: Sequence[float], types: Sequence[int]) -> list[tuple[str, str]]:
    """Merges implied by a scored vocabulary: every split of a normal piece into two known pieces, best score first."""
    mergeable = {token: index for index, token in enumerate(tokens) if types[index] in (NORMAL, USER_DEFINED)}
    ranked = []
    for token, index in mergeable.items():
        if types[index] != NORMAL:
            continue
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in mergeable and right in mergeable:
                # Ties in score go to the earlier piece, the order SentencePiece learned them in.
                ranked.append((-scores[index], index, cut, left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


def build_sentencepiece_bpe(
    tokens: Sequence[str],
    scores: Sequence[float],
    types: Sequence[int],
    *,
    add_space_prefix: bool,
    merges: Sequence[str] | None = None,
) -> Tokenizer:
    """A `tokenizers.Tokenizer` equivalent to SentencePiece BPE over this vocabulary.

    `merges` ("left right" strings) are used when given, else derived from the scores. Control and unknown
    pieces become special added tokens, user-defined pieces plain added tokens (both matched whole in text).
    Text after such a token starts a new stretch with its own dummy prefix: llama.cpp's and HF's behaviour,
    which differs from SentencePiece's for user-defined pieces only.
    """
    vocab = {token: index for index, token in enumerate(tokens)}
    byte_fallback = all(f"<0x{byte:02X}>" in vocab for byte in range(256))
    unk_token = next((token for token, kind in zip(tokens, types) if kind == UNKNOWN), None)
    pairs = [tuple(merge.split(" ", 1)) for merge in merges] if merges else derive_merges(tokens, scores, types)
    backend = Tokenizer(BPE(vocab=vocab, merges=pairs, unk_token=unk_token, fuse_unk=True, byte_fallback=byte_fallback))

    # A normalizer (not Metaspace) so that "  x" keeps all its spaces plus the dummy prefix, as SentencePiece does;
    # it runs on each stretch of text between special tokens, so each stretch gets the prefix (like llama.cpp).
    steps = [normalizers.Prepend(SPACE_MARK)] if add_space_prefix else []
    backend.normalizer = normalizers.Sequence([*steps, normalizers.Replace(" ", SPACE_MARK)])
    backend.pre_tokenizer = None
    decode_steps = [decoders.Replace(SPACE_MARK, " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_space_prefix:
        decode_steps.append(decoders.Strip(content=" ", left=1, right=0))
    backend.decoder = decoders.Sequence(decode_steps)

    kinds = list(zip(tokens, types))
    backend.add_special_tokens(
        [AddedToken(token, special=True, normalized=False) for token, kind in kinds if kind in (CONTROL, UNKNOWN)]
    )
    backend.add_tokens(
        [AddedToken(token, special=False, normalized=False) for token, kind in kinds if kind == USER_DEFINED]
    )
    return backend
