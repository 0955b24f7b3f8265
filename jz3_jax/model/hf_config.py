"""Map a Hugging Face `config.json` to `ModelConfig` and back."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from jz3_jax.errors import UserError
from jz3_jax.model.config import ModelConfig

# architectures / model_type -> our family. DeepSeek-Math ships as LlamaForCausalLM.
ARCHITECTURES = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral", "Qwen2ForCausalLM": "qwen2",
                 "MixtralForCausalLM": "mixtral"}
MODEL_TYPES = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2", "mixtral": "mixtral"}
HF_NAMES = {"llama": ("LlamaForCausalLM", "llama"), "mistral": ("MistralForCausalLM", "mistral"),
            "qwen2": ("Qwen2ForCausalLM", "qwen2"), "mixtral": ("MixtralForCausalLM", "mixtral")}


class UnsupportedModelError(UserError):
    """The checkpoint's architecture or one of its options is not supported."""


def _family(hf: dict) -> str:
    for arch in hf.get("architectures") or []:
        if arch in ARCHITECTURES:
            return ARCHITECTURES[arch]
    if hf.get("model_type") in MODEL_TYPES:
        return MODEL_TYPES[hf["model_type"]]
    raise UnsupportedModelError(
        f"unsupported architecture {hf.get('architectures') or hf.get('model_type')!r}; supported: "
        f"{', '.join(ARCHITECTURES)} (model_type {', '.join(MODEL_TYPES)}; DeepSeek-Math uses the Llama layout)"
    )


def _rope(hf: dict) -> tuple[float, dict]:
    """(theta, scaling dict) from the v5 `rope_parameters` form or the older top-level keys."""
    params = hf.get("rope_parameters")
    if isinstance(params, dict) and params:
        theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
        scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    else:
        theta = hf.get("rope_theta", 10000.0)
        scaling = dict(hf.get("rope_scaling") or {})
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return float(theta), {}
    if kind not in ("linear", "llama3"):
        raise UnsupportedModelError(f"unsupported rope scaling {kind!r}; supported: default, linear, llama3")
    return float(theta), {"type": kind, **scaling}


def _first_id(value, default: int) -> int:
    if isinstance(value, list):
        return int(value[0]) if value else default
    return default if value is None else int(value)


def model_config_from_hf(hf: dict, **runtime) -> ModelConfig:
    """`ModelConfig` from a HF config dict; `runtime` sets non-architecture fields (dtype, remat, ...)."""
    family = _family(hf)
    if hf.get("attention_bias") or hf.get("mlp_bias"):
        raise UnsupportedModelError("attention_bias / mlp_bias Llama variants are not supported")
    if family == "qwen2" and hf.get("use_sliding_window"):
        raise UnsupportedModelError("Qwen2 with use_sliding_window=true is not supported")
    theta, scaling = _rope(hf)
    heads = hf["num_attention_heads"]
    cfg = ModelConfig(
        family=family,
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        intermediate_size=hf["intermediate_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=hf.get("num_key_value_heads") or heads,
        head_dim=hf.get("head_dim") or 0,
        rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
        rope_theta=theta,
        max_position_embeddings=hf.get("max_position_embeddings", 2048),
        sliding_window=(hf.get("sliding_window") or 0) if family in ("mistral", "mixtral") else 0,
        qkv_bias=family == "qwen2",
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        bos_token_id=_first_id(hf.get("bos_token_id"), 1),
        eos_token_id=_first_id(hf.get("eos_token_id"), 2),
        pad_token_id=_first_id(hf.get("pad_token_id"), 0),
    )
    if family == "mixtral":
        cfg.num_experts = int(hf["num_local_experts"])
        cfg.experts_per_token = int(hf.get("num_experts_per_tok", 2))
        cfg.router_aux_loss_coef = float(hf.get("router_aux_loss_coef", 0.02))
    if scaling:
        cfg.rope_scaling_type = scaling["type"]
        cfg.rope_scaling_factor = float(scaling.get("factor", 1.0))
        cfg.rope_low_freq_factor = float(scaling.get("low_freq_factor", 1.0))
        cfg.rope_high_freq_factor = float(scaling.get("high_freq_factor", 4.0))
        cfg.rope_original_max_position = int(scaling.get("original_max_position_embeddings", 8192))
    return dataclasses.replace(cfg, **runtime)


def read_hf_config(directory: str | Path) -> dict:
    """The parsed `config.json` of a HF checkpoint directory."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise UserError(f"{directory}: no config.json (not a Hugging Face checkpoint directory)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: invalid JSON ({e})") from None


def hf_config_from_model(cfg: ModelConfig) -> dict:
    """A HF `config.json` dict that `transformers` loads into the equivalent model."""
    arch, model_type = HF_NAMES[cfg.family]
    hf = {
        "architectures": [arch],
        "model_type": model_type,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.resolved_head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": cfg.rms_norm_eps,
        "max_position_embeddings": cfg.max_position_embeddings,
        "tie_word_embeddings": cfg.tie_embeddings,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id,
        "pad_token_id": cfg.pad_token_id,
        "torch_dtype": cfg.param_dtype,
        "rope_theta": cfg.rope_theta,
    }
    rope = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    if cfg.rope_scaling_type == "linear":
        rope.update(rope_type="linear", factor=cfg.rope_scaling_factor)
    elif cfg.rope_scaling_type == "llama3":
        rope.update(rope_type="llama3", factor=cfg.rope_scaling_factor, low_freq_factor=cfg.rope_low_freq_factor,
                    high_freq_factor=cfg.rope_high_freq_factor,
                    original_max_position_embeddings=cfg.rope_original_max_position)
    hf["rope_parameters"] = rope
    if cfg.family == "llama":
        hf.update(attention_bias=False, mlp_bias=False)
    if cfg.family in ("mistral", "mixtral"):
        hf["sliding_window"] = cfg.sliding_window or None
    if cfg.family == "mixtral":
        hf.update(num_local_experts=cfg.num_experts, num_experts_per_tok=cfg.experts_per_token,
                  router_aux_loss_coef=cfg.router_aux_loss_coef, router_jitter_noise=0.0,
                  output_router_logits=False)
    if cfg.family == "qwen2":
        hf.update(use_sliding_window=False, sliding_window=None)
    return hf
