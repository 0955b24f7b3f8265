"""Hugging Face tensor names and layouts <-> this project's parameter paths and layouts.

HF linear weights are [out, in]; ours are [in, out] with heads split out:
q [embed, heads, head_dim], k/v [embed, kv_heads, head_dim], o [heads, head_dim, embed].
Mixtral's experts (`block_sparse_moe.experts.N.w1/w3/w2`, one tensor per expert) are stacked into
one parameter per layer, gate/up [experts, embed, mlp] and down [experts, mlp, embed]; a name
locates a `Slot`: our path, the layer and (for an expert tensor) the expert it fills.
"""

from __future__ import annotations

import re
from typing import Callable, Iterator, NamedTuple

import numpy as np

from jz3_jax.model.config import ModelConfig

# HF per-layer suffix -> (our path inside a layer, to_ours(array, cfg), to_hf(array, cfg))
Convert = Callable[[np.ndarray, ModelConfig], np.ndarray]


def _heads_in(kind: str) -> Convert:
    def conv(w, cfg):
        heads = cfg.num_heads if kind == "q" else cfg.num_kv_heads
        return w.T.reshape(cfg.hidden_size, heads, cfg.resolved_head_dim)

    return conv


def _heads_out(w, cfg):
    return w.reshape(cfg.hidden_size, -1).T


def _bias_in(kind: str) -> Convert:
    def conv(b, cfg):
        heads = cfg.num_heads if kind == "q" else cfg.num_kv_heads
        return b.reshape(heads, cfg.resolved_head_dim)

    return conv


def _transpose(w, cfg):
    return w.T


def _same(w, cfg):
    return w


def _o_in(w, cfg):
    return w.T.reshape(cfg.num_heads, cfg.resolved_head_dim, cfg.hidden_size)


def _o_out(w, cfg):
    return w.reshape(-1, cfg.hidden_size).T


def _flatten(b, cfg):
    return b.reshape(-1)


LAYER_TENSORS: dict[str, tuple[tuple[str, ...], Convert, Convert]] = {
    "self_attn.q_proj.weight": (("attn", "q"), _heads_in("q"), _heads_out),
    "self_attn.k_proj.weight": (("attn", "k"), _heads_in("kv"), _heads_out),
    "self_attn.v_proj.weight": (("attn", "v"), _heads_in("kv"), _heads_out),
    "self_attn.o_proj.weight": (("attn", "o"), _o_in, _o_out),
    "self_attn.q_proj.bias": (("attn", "q_bias"), _bias_in("q"), _flatten),
    "self_attn.k_proj.bias": (("attn", "k_bias"), _bias_in("kv"), _flatten),
    "self_attn.v_proj.bias": (("attn", "v_bias"), _bias_in("kv"), _flatten),
    "mlp.gate_proj.weight": (("mlp", "gate"), _transpose, _transpose),
    "mlp.up_proj.weight": (("mlp", "up"), _transpose, _transpose),
    "mlp.down_proj.weight": (("mlp", "down"), _transpose, _transpose),
    "input_layernorm.weight": (("input_norm", "weight"), _same, _same),
    "post_attention_layernorm.weight": (("post_attn_norm", "weight"), _same, _same),
}
GLOBAL_TENSORS: dict[str, tuple[tuple[str, ...], Convert, Convert]] = {
    "model.embed_tokens.weight": (("embed",), _same, _same),
    "model.norm.weight": (("final_norm", "weight"), _same, _same),
    "lm_head.weight": (("lm_head",), _transpose, _transpose),
}
MOE_TENSORS = {"block_sparse_moe.gate.weight": (("moe", "router"), _transpose, _transpose)}
# Mixtral expert weight -> our stacked parameter (all [out, in] in HF, [in, out] here).
EXPERT_WEIGHTS = {"w1": "gate", "w3": "up", "w2": "down"}
_DENSE_MLP = ("mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight")
# Tensors some exports carry that the model recomputes.
IGNORED = re.compile(r".*rotary_emb\.inv_freq$")
_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_EXPERT = re.compile(r"^block_sparse_moe\.experts\.(\d+)\.(w[123])\.weight$")


class Slot(NamedTuple):
    """Where a HF tensor goes: our path, its layer (None = global), its expert (None = not an
    expert tensor) and the converter to our layout."""

    path: tuple[str, ...]
    layer: int | None
    expert: int | None
    to_ours: Convert


def _layer_table(suffix: str):
    return LAYER_TENSORS.get(suffix) or MOE_TENSORS.get(suffix)


def locate(name: str) -> Slot | None:
    """The `Slot` of a HF tensor name; None if unknown."""
    match = _LAYER.match(name)
    if match:
        layer, suffix = int(match.group(1)), match.group(2)
        expert = _EXPERT.match(suffix)
        if expert:
            return Slot(("moe", EXPERT_WEIGHTS[expert.group(2)]), layer, int(expert.group(1)), _transpose)
        if _layer_table(suffix):
            path, to_ours, _ = _layer_table(suffix)
            return Slot(path, layer, None, to_ours)
    if name in GLOBAL_TENSORS:
        path, to_ours, _ = GLOBAL_TENSORS[name]
        return Slot(path, None, None, to_ours)
    return None


def expected_hf_names(cfg: ModelConfig) -> list[str]:
    """Every HF tensor name a checkpoint of this architecture must have."""
    names = ["model.embed_tokens.weight", "model.norm.weight"]
    if not cfg.tie_embeddings:
        names.append("lm_head.weight")
    for i in range(cfg.num_layers):
        for suffix in LAYER_TENSORS:
            if (suffix.endswith(".bias") and not cfg.qkv_bias) or (suffix in _DENSE_MLP and cfg.is_moe):
                continue
            names.append(f"model.layers.{i}.{suffix}")
        if cfg.is_moe:
            names.append(f"model.layers.{i}.block_sparse_moe.gate.weight")
            names += [f"model.layers.{i}.block_sparse_moe.experts.{j}.{w}.weight"
                      for j in range(cfg.num_experts) for w in ("w1", "w2", "w3")]
    return names


def hf_layout(name: str, array: np.ndarray, cfg: ModelConfig) -> np.ndarray:
    """Convert one of our arrays (for HF tensor `name`) back to the HF layout."""
    match = _LAYER.match(name)
    if match and _EXPERT.match(match.group(2)):
        to_hf = _transpose
    else:
        to_hf = _layer_table(match.group(2))[2] if match else GLOBAL_TENSORS[name][2]
    return np.ascontiguousarray(to_hf(array, cfg))


def iter_hf_names(cfg: ModelConfig) -> Iterator[tuple[str, Slot]]:
    """(HF name, its Slot) for every tensor of the architecture."""
    for name in expected_hf_names(cfg):
        yield name, locate(name)


def hf_shape(name: str, cfg: ModelConfig) -> tuple[int, ...]:
    """The shape a HF checkpoint of this architecture has for tensor `name`."""
    e, m, v = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    q, kv = cfg.num_heads * cfg.resolved_head_dim, cfg.num_kv_heads * cfg.resolved_head_dim
    match = _LAYER.match(name)
    suffix = match.group(2) if match else name
    expert = _EXPERT.match(suffix)
    if expert:
        return (e, m) if expert.group(2) == "w2" else (m, e)
    if suffix == "block_sparse_moe.gate.weight":
        return (cfg.num_experts, e)
    return {
        "self_attn.q_proj.weight": (q, e), "self_attn.k_proj.weight": (kv, e), "self_attn.v_proj.weight": (kv, e),
        "self_attn.o_proj.weight": (e, q), "self_attn.q_proj.bias": (q,), "self_attn.k_proj.bias": (kv,),
        "self_attn.v_proj.bias": (kv,), "mlp.gate_proj.weight": (m, e), "mlp.up_proj.weight": (m, e),
        "mlp.down_proj.weight": (e, m), "input_layernorm.weight": (e,), "post_attention_layernorm.weight": (e,),
        "model.embed_tokens.weight": (v, e), "model.norm.weight": (e,), "lm_head.weight": (v, e),
    }[suffix]
