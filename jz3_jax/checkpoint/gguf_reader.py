"""Read GGUF (llama.cpp) model files as Hugging Face-named float32 numpy tensors.

Parsing and dequantization are delegated to the ``gguf`` package; this module only
maps names and metadata to their Hugging Face equivalents and undoes the llama.cpp
converter's rotary row permutation of ``q_proj``/``k_proj`` for the ``llama`` architecture.

Shape conventions: GGUF lists dimensions fastest-varying first (``ne0`` = in_features),
i.e. reversed relative to numpy. ``ReaderTensor.shape`` is in GGUF order, while
``ReaderTensor.data`` is numpy-ordered (for quantized types its last axis counts bytes),
so the dequantized array is reshaped to ``reversed(tensor.shape)``, which is already
HF's ``[out_features, in_features]`` layout.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import Any

import numpy as np
from gguf import GGUFReader, GGUFValueType
from gguf.gguf_reader import ReaderTensor
from gguf.quants import dequantize

from jz3_jax.checkpoint.errors import CheckpointError
from jz3_jax.tokenizer.gguf_metadata import PlainArrayReader

__all__ = ["CheckpointError", "SUPPORTED_ARCHITECTURES", "GGUFFile", "open_gguf", "gguf_hf_config",
           "iter_gguf_tensors"]

SUPPORTED_ARCHITECTURES = ("llama", "mistral", "qwen2")

_GGUF_MAGIC = b"GGUF"

_HF_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
}

# GGUF metadata key (after "{arch}.") -> HF config key, for integer/float fields.
_ARCH_KEYS = {
    "vocab_size": "vocab_size",
    "embedding_length": "hidden_size",
    "feed_forward_length": "intermediate_size",
    "block_count": "num_hidden_layers",
    "attention.head_count": "num_attention_heads",
    "attention.head_count_kv": "num_key_value_heads",
    "attention.layer_norm_rms_epsilon": "rms_norm_eps",
    "rope.freq_base": "rope_theta",
    "context_length": "max_position_embeddings",
    "attention.sliding_window": "sliding_window",
}

_TOKEN_KEYS = {
    "tokenizer.ggml.bos_token_id": "bos_token_id",
    "tokenizer.ggml.eos_token_id": "eos_token_id",
    "tokenizer.ggml.padding_token_id": "pad_token_id",
}

_GLOBAL_TENSORS = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}

_BLOCK_TENSORS = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}

# llama.cpp bakes Llama-3 rope scaling into this tensor of per-frequency factors instead of
# metadata; the HF rope_scaling parameters cannot be recovered exactly from it.
_ROPE_FREQS_TENSOR = "rope_freqs.weight"

_BLOCK_NAME = re.compile(r"^blk\.(\d+)\.([a-z_]+)\.(weight|bias)$")
_GLOBAL_NAME = re.compile(r"^([a-z_]+)\.(weight|bias)$")


class GGUFFile:
    """One GGUF file opened once: its parsed header (`reader`), its HF config and its tensors' HF names.

    The header is parsed and the file memory-mapped once; `tensors()` streams from that map and
    `reader` also serves the tokenizer metadata (`jz3_jax.tokenizer.load_gguf_tokenizer`), so
    loading a model and its tokenizer from a GGUF opens the file once.
    """

    def __init__(self, path: str):
        self.path = os.fspath(path)
        self.reader = _open_reader(self.path)
        self.hf_config = _config_from_reader(self.reader, self.path)
        self.hf_names = [_hf_tensor_name(tensor.name, self.path) for tensor in self.reader.tensors]
        self._unpermute = _architecture(self.reader, self.path)[0] == "llama"

    def tensors(self) -> Iterator[tuple[str, np.ndarray]]:
        """Yield ``(hf_name, float32 array in HF layout)`` for each tensor, one at a time (see
        `iter_gguf_tensors`)."""
        return _stream_tensors(self.reader, self.hf_names, self.hf_config if self._unpermute else None, self.path)


def open_gguf(path: str) -> GGUFFile:
    """Open, parse and validate a GGUF file once (CheckpointError naming ``path`` if it is bad)."""
    return GGUFFile(path)


def gguf_hf_config(path: str) -> dict:
    """Return the Hugging Face ``config.json`` dict equivalent to a GGUF file's metadata.

    Keys: architectures, model_type, vocab_size, hidden_size, intermediate_size,
    num_hidden_layers, num_attention_heads, num_key_value_heads, rms_norm_eps,
    rope_theta, max_position_embeddings, tie_word_embeddings (True when the file has
    no ``output.weight``), and when present in the file: head_dim, bos/eos/pad_token_id,
    rope_scaling, sliding_window. Whether q/k/v have biases is implied by the tensors.

    Raises CheckpointError (naming ``path``) for missing, non-GGUF, truncated or
    unsupported-architecture files.
    """
    return open_gguf(path).hf_config


def iter_gguf_tensors(path: str) -> Iterator[tuple[str, np.ndarray]]:
    """Yield ``(hf_name, float32 array in HF layout)`` for each tensor, one at a time.

    Tensors are dequantized lazily from the memory-mapped file, so only one is held
    in memory at a time. Linear weights are ``[out_features, in_features]``; for the
    ``llama`` architecture q/k projections are un-permuted back to HF row order.
    ``lm_head.weight`` is yielded only when the file stores ``output.weight``.

    The file, its metadata and all tensor names are validated before this returns,
    so a bad file raises CheckpointError here rather than part-way through iteration.
    """
    return open_gguf(path).tensors()


def _stream_tensors(
    reader: GGUFReader, hf_names: list[str], rotary_config: dict | None, path: str
) -> Iterator[tuple[str, np.ndarray]]:
    """Dequantize tensors one by one; un-permute q/k when ``rotary_config`` is given."""
    for tensor, hf_name in zip(reader.tensors, hf_names, strict=True):
        array = _dequantize(tensor, path)
        if rotary_config is not None:
            array = _unpermute_if_rotary(array, hf_name, rotary_config)
        yield hf_name, array


# --- opening and validating -------------------------------------------------


def _open_reader(path: str) -> GGUFReader:
    """Open ``path`` once: check its magic, then parse it with GGUFReader (over a plain-array view of
    its memory map, see `PlainArrayReader`) and check that it is complete."""
    if not os.path.isfile(path):
        raise CheckpointError(f"GGUF file not found: {path}")
    with open(path, "rb") as handle:
        magic = handle.read(len(_GGUF_MAGIC))
        if magic != _GGUF_MAGIC:
            raise CheckpointError(f"not a GGUF file (bad magic {magic!r}): {path}")
        handle.seek(0)
        try:
            reader = PlainArrayReader(handle)  # the memory map outlives the file handle
        except Exception as exc:  # gguf raises bare ValueError/IndexError on corrupt files
            raise CheckpointError(f"cannot parse GGUF file {path} (corrupt or truncated?): {exc}") from exc
    _check_tensor_extents(reader, path)
    return reader


def _check_tensor_extents(reader: GGUFReader, path: str) -> None:
    """Raise CheckpointError if any tensor's data runs past the end of the file."""
    file_size = os.path.getsize(path)
    for tensor in reader.tensors:
        end = int(tensor.data_offset) + int(tensor.n_bytes)
        if end > file_size or tensor.data.nbytes != int(tensor.n_bytes):
            raise CheckpointError(
                f"GGUF file {path} is truncated: tensor {tensor.name} needs bytes up to {end}, "
                f"file has {file_size}"
            )


# --- metadata -----------------------------------------------------------------


def _field_value(reader: GGUFReader, key: str) -> Any:
    """Return a metadata value as a Python scalar/str/list, or None when absent."""
    field = reader.fields.get(key)
    if field is None or not field.data:
        return None
    if field.types[0] == GGUFValueType.ARRAY:
        return [_decode_part(field.parts[i], field.types[-1]) for i in field.data]
    return _decode_part(field.parts[field.data[0]], field.types[0])


def _decode_part(part: np.ndarray, value_type: GGUFValueType) -> Any:
    """Decode one raw field part into a str or Python number."""
    if value_type == GGUFValueType.STRING:
        return bytes(part).decode("utf-8")
    return part.tolist()[0]


def _architecture(reader: GGUFReader, path: str) -> tuple[str, str]:
    """Return ``(file_arch, hf_model_type)``; llama-arch files named *mistral* are Mistral."""
    arch = _field_value(reader, "general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise CheckpointError(
            f"unsupported GGUF architecture {arch!r} in {path}; "
            f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    name = str(_field_value(reader, "general.name") or "")
    # llama.cpp converts MistralForCausalLM to the "llama" architecture.
    model_type = "mistral" if arch == "llama" and "mistral" in name.lower() else arch
    return arch, model_type


def _config_from_reader(reader: GGUFReader, path: str) -> dict:
    """Build the HF config dict from an open reader."""
    arch, model_type = _architecture(reader, path)
    config: dict[str, Any] = {"architectures": [_HF_ARCHITECTURES[model_type]], "model_type": model_type}
    for gguf_key, hf_key in {**_prefixed(arch, _ARCH_KEYS), **_TOKEN_KEYS}.items():
        value = _field_value(reader, gguf_key)
        if value is not None:
            config[hf_key] = value
    config.setdefault("vocab_size", _embedding_rows(reader, path))
    head_dim = _head_dim(reader, arch)
    if head_dim is not None:
        config["head_dim"] = head_dim
    rope_scaling = _rope_scaling(reader, arch)
    if rope_scaling is not None:
        config["rope_scaling"] = rope_scaling
    tensor_names = {t.name for t in reader.tensors}
    if _ROPE_FREQS_TENSOR in tensor_names:
        raise CheckpointError(
            f"GGUF file {path} has tensor {_ROPE_FREQS_TENSOR} (llama.cpp's baked Llama-3 rope scaling), "
            "which cannot be mapped back to a Hugging Face rope_scaling; use the HF checkpoint instead"
        )
    config["tie_word_embeddings"] = "output.weight" not in tensor_names
    _check_required(config, path)
    return config


def _prefixed(arch: str, keys: dict[str, str]) -> dict[str, str]:
    """Prefix each GGUF key with ``{arch}.``."""
    return {f"{arch}.{key}": value for key, value in keys.items()}


def _embedding_rows(reader: GGUFReader, path: str) -> int:
    """Vocab size from ``token_embd.weight`` (GGUF shape is [hidden, vocab])."""
    for tensor in reader.tensors:
        if tensor.name == "token_embd.weight":
            return int(tensor.shape[-1])
    raise CheckpointError(f"GGUF file {path} has no vocab_size metadata and no token_embd.weight tensor")


def _head_dim(reader: GGUFReader, arch: str) -> int | None:
    """Explicit head dim: attention.key_length, else (llama only) the full rotary dimension."""
    key_length = _field_value(reader, f"{arch}.attention.key_length")
    if key_length is not None:
        return int(key_length)
    if arch == "llama":
        rope_dims = _field_value(reader, f"{arch}.rope.dimension_count")
        return None if rope_dims is None else int(rope_dims)
    return None


def _rope_scaling(reader: GGUFReader, arch: str) -> dict | None:
    """HF ``rope_scaling`` from ``{arch}.rope.scaling.*`` metadata, or None when unscaled."""
    rope_type = _field_value(reader, f"{arch}.rope.scaling.type")
    if rope_type in (None, "none"):
        return None
    scaling: dict[str, Any] = {"rope_type": rope_type}
    factor = _field_value(reader, f"{arch}.rope.scaling.factor")
    if factor is not None:
        scaling["factor"] = float(factor)
    original = _field_value(reader, f"{arch}.rope.scaling.original_context_length")
    if original is not None:
        scaling["original_max_position_embeddings"] = int(original)
    return scaling


def _check_required(config: dict, path: str) -> None:
    """Raise CheckpointError when a size field the model cannot be built without is missing."""
    required = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    missing = [key for key in required if key not in config]
    if missing:
        raise CheckpointError(f"GGUF file {path} lacks metadata for {', '.join(missing)}")
    # GGUF omits head_count_kv when it equals head_count (plain multi-head attention).
    config.setdefault("num_key_value_heads", config["num_attention_heads"])


# --- tensors ------------------------------------------------------------------


def _hf_tensor_name(gguf_name: str, path: str) -> str:
    """Map a GGUF tensor name (``blk.3.attn_q.weight``) to its HF name."""
    block = _BLOCK_NAME.match(gguf_name)
    if block and block.group(2) in _BLOCK_TENSORS:
        layer, part, suffix = block.groups()
        return f"model.layers.{layer}.{_BLOCK_TENSORS[part]}.{suffix}"
    single = _GLOBAL_NAME.match(gguf_name)
    if single and single.group(1) in _GLOBAL_TENSORS:
        return f"{_GLOBAL_TENSORS[single.group(1)]}.{single.group(2)}"
    raise CheckpointError(f"unexpected tensor {gguf_name!r} in GGUF file {path}")


def _dequantize(tensor: ReaderTensor, path: str) -> np.ndarray:
    """Dequantize one tensor to a float32 array in numpy (HF) dimension order."""
    try:
        values = dequantize(tensor.data, tensor.tensor_type)
    except NotImplementedError as exc:
        raise CheckpointError(
            f"tensor {tensor.name} in {path} has unsupported type {tensor.tensor_type.name}: {exc}"
        ) from exc
    shape = tuple(int(dim) for dim in reversed(tensor.shape))
    # np.array copies, detaching the result from the read-only file memory map.
    return np.array(values, dtype=np.float32).reshape(shape)


def _unpermute_if_rotary(array: np.ndarray, hf_name: str, config: dict) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation (weights and biases); other tensors pass through."""
    if ".self_attn.q_proj." in hf_name:
        n_head = config["num_attention_heads"]
    elif ".self_attn.k_proj." in hf_name:
        n_head = config["num_key_value_heads"]
    else:
        return array
    if array.shape[0] % (2 * n_head):
        raise CheckpointError(f"tensor {hf_name} has {array.shape[0]} rows, not divisible into {n_head} rotary heads")
    return _unpermute_rows(array, n_head)


def _unpermute_rows(array: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of llama.cpp ``LlamaModel.permute``.

    The converter views each head's rows as ``[2, head_dim/2]`` (HF's rotate-half
    layout) and transposes them to ``[head_dim/2, 2]`` (GGML's interleaved pairs):
    ``w.reshape(n_head, 2, d/2, ...).swapaxes(1, 2)``. The inverse reads the rows as
    ``[n_head, d/2, 2, ...]`` and swaps the same two axes back.
    """
    half = array.shape[0] // n_head // 2
    grouped = array.reshape(n_head, half, 2, *array.shape[1:])
    return np.ascontiguousarray(grouped.swapaxes(1, 2)).reshape(array.shape)
