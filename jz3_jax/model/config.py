"""Architecture and numerics of the decoder family (Llama, Mistral, Qwen2, DeepSeek-Math, Mixtral).

Every field of `ModelConfig` belongs to one group (its `metadata["group"]`): `architecture` (what
a checkpoint fixes: sizes, rope, vocabulary, special ids), `source` (where weights and tokenizer come
from) or `numerics` (how it computes: dtypes, remat, attention kernel, layer layout, MoE capacity).
Code asks the groups (`architecture_fields`, `with_architecture`, `without_source`) instead of
listing field names. This module has no JAX import so the launcher can build and print configs cheaply.
"""

from __future__ import annotations

import dataclasses

SUPPORTED_FAMILIES = ("llama", "mistral", "qwen2", "mixtral")
GROUPS = ("architecture", "source", "numerics")


def _arch(default):
    return dataclasses.field(default=default, metadata={"group": "architecture"})


def _source(default):
    return dataclasses.field(default=default, metadata={"group": "source"})


def _numerics(default):
    return dataclasses.field(default=default, metadata={"group": "numerics"})


@dataclasses.dataclass(unsafe_hash=True)
class ModelConfig:
    """One decoder config: the architecture, where weights come from and how it computes.

    `head_dim=0` means `hidden_size // num_heads`; `sliding_window=0` means full attention;
    `rope_scaling_type` is "" (none), "linear" or "llama3". `num_experts > 0` makes every MLP a
    Mixtral sparse mixture of experts (`experts_per_token` of them per token); see `jz3_jax.model.moe`.
    """

    family: str = _arch("llama")
    vocab_size: int = _arch(256)
    hidden_size: int = _arch(64)
    intermediate_size: int = _arch(128)
    num_layers: int = _arch(2)
    num_heads: int = _arch(4)
    num_kv_heads: int = _arch(2)
    head_dim: int = _arch(0)
    rms_norm_eps: float = _arch(1e-5)
    rope_theta: float = _arch(10000.0)
    rope_scaling_type: str = _arch("")
    rope_scaling_factor: float = _arch(1.0)
    rope_low_freq_factor: float = _arch(1.0)
    rope_high_freq_factor: float = _arch(4.0)
    rope_original_max_position: int = _arch(8192)
    max_position_embeddings: int = _arch(2048)
    sliding_window: int = _arch(0)
    qkv_bias: bool = _arch(False)
    tie_embeddings: bool = _arch(False)
    bos_token_id: int = _arch(1)
    eos_token_id: int = _arch(2)
    pad_token_id: int = _arch(0)
    # Mixture of experts (Mixtral): 0 experts = dense MLP.
    num_experts: int = _arch(0)
    experts_per_token: int = _arch(2)
    router_aux_loss_coef: float = _arch(0.02)
    # 0 = dropless; > 0: each expert takes at most cf * tokens * k / experts.
    moe_capacity_factor: float = _numerics(0.0)
    # Where weights and tokenizer come from: "" = random init (tiny tests) or a HF dir, an
    # orbax checkpoint dir, or a .gguf file. Tokenizer "" = the checkpoint's own.
    checkpoint: str = _source("")
    tokenizer: str = _source("")
    # Numerics and memory.
    param_dtype: str = _numerics("float32")
    dtype: str = _numerics("float32")
    remat: str = _numerics("none")  # none | full | dots_saveable | nothing_saveable
    # Training attention (no KV cache): auto = splash on TPU, cuDNN on NVIDIA GPUs, dense elsewhere.
    attention: str = _numerics("auto")  # auto | dense | splash | cudnn
    scan_layers: bool = _numerics(False)

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads


def fields_of(group: str) -> tuple[str, ...]:
    """The names of `ModelConfig`'s fields in `group` ("architecture", "source" or "numerics")."""
    if group not in GROUPS:
        raise ValueError(f"unknown ModelConfig field group {group!r}; one of {', '.join(GROUPS)}")
    return tuple(f.name for f in dataclasses.fields(ModelConfig) if f.metadata["group"] == group)


def architecture_fields() -> tuple[str, ...]:
    """The fields a checkpoint fixes (everything but source and numerics)."""
    return fields_of("architecture")


def architecture_of(cfg: ModelConfig) -> dict:
    """{field: value} of `cfg`'s architecture."""
    return {name: getattr(cfg, name) for name in architecture_fields()}


def with_architecture(cfg: ModelConfig, architecture: ModelConfig | dict) -> ModelConfig:
    """`cfg` with the architecture of `architecture` (a ModelConfig or an `architecture_of` dict);
    `cfg`'s source and numerics are kept."""
    if isinstance(architecture, ModelConfig):
        architecture = architecture_of(architecture)
    return dataclasses.replace(cfg, **{name: architecture[name] for name in architecture_fields()})


def without_source(cfg: ModelConfig) -> ModelConfig:
    """`cfg` with its source fields (checkpoint, tokenizer) at their defaults: what a saved checkpoint records."""
    defaults = ModelConfig()
    return dataclasses.replace(cfg, **{name: getattr(defaults, name) for name in fields_of("source")})
