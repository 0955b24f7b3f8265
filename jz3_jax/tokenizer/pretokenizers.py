"""Byte-level pre-tokenizers for the `tokenizer.ggml.pre` names llama.cpp writes into GGUF files.

llama.cpp splits text with a list of regexes applied one after another (each one splits the pieces the previous
left, keeping unmatched text as pieces of its own); `Split(..., "isolated")` steps do exactly that.
"""

from __future__ import annotations

from dataclasses import dataclass

from tokenizers import Regex, pre_tokenizers

_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_CONTRACTIONS = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
_LLAMA3 = (
    _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2 = (
    _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


@dataclass(frozen=True)
class PreTokenizerSpec:
    """The regex splits of one llama.cpp pre-tokenizer type, and whether whole-word vocabulary hits skip BPE."""

    regexes: tuple[str, ...]
    ignore_merges: bool = False


_GPT2_SPEC = PreTokenizerSpec((_GPT2,))
# StarCoder-family vocabularies (SmolLM's included) put every digit in a piece of its own before the GPT-2 split.
_STARCODER_SPEC = PreTokenizerSpec((r"\p{N}", _GPT2))
_LLAMA3_SPEC = PreTokenizerSpec((_LLAMA3,), ignore_merges=True)
_LLAMA3_MERGING_SPEC = PreTokenizerSpec((_LLAMA3,))
_QWEN2_SPEC = PreTokenizerSpec((_QWEN2,))

PRE_TOKENIZERS: dict[str, PreTokenizerSpec] = {
    **dict.fromkeys(["gpt-2", "phi-2", "mpt", "olmo", "jais", "exaone4"], _GPT2_SPEC),
    **dict.fromkeys(
        ["starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b"], _STARCODER_SPEC
    ),
    **dict.fromkeys(
        ["llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2"], _LLAMA3_SPEC
    ),
    **dict.fromkeys(["dbrx", "smaug-bpe"], _LLAMA3_MERGING_SPEC),
    **dict.fromkeys(["qwen2", "deepseek-r1-qwen", "stablelm2", "megrez"], _QWEN2_SPEC),
}


def byte_level_pre_tokenizer(spec: PreTokenizerSpec) -> pre_tokenizers.PreTokenizer:
    """The regex splits of `spec` followed by the GPT-2 byte-to-unicode mapping."""
    splits = [pre_tokenizers.Split(Regex(pattern), behavior="isolated") for pattern in spec.regexes]
    return pre_tokenizers.Sequence([*splits, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
