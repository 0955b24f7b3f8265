"""Architecture and numerics of the decoder family (Llama, Mistral, Qwen2, DeepSeek-Math, Mixtral).

This module has no JAX import so the launcher can build and print configs cheaply.
"""

from __future__ import annotations

import dataclasses

SUPPORTED_FAMILIES = ("llama", "mistral", "qwen2", "mixtral")


@dataclasses.dataclass(unsafe_hash=True)
class ModelConfig:
    """One decoder config: the architecture, where weights come from and how it computes.

    `head_dim=0` means `hidden_size // num_heads`; `sliding_window=0` means full attention;
    `rope_scaling_type` is "" (none), "linear" or "llama3". `num_experts > 0` makes every MLP a
    Mixtral sparse mixture of experts (`experts_per_token` of them per token); see `jz3_jax.model.moe`.
    """

    family: str = "llama"
    vocab_size: int = 256
    hidden_size: int = 64
    intermediate_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 0
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling_type: str = ""
    rope_scaling_factor: float = 1.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_position: int = 8192
    max_position_embeddings: int = 2048
    sliding_window: int = 0
    qkv_bias: bool = False
    tie_embeddings: bool = False
    bos_token_id: int = 1
    eos_token_id: int = 2
    pad_token_id: int = 0
    # Mixture of experts (Mixtral): 0 experts = dense MLP.
    num_experts: int = 0
    experts_per_token: int = 2
    router_aux_loss_coef: float = 0.02
    moe_capacity_factor: float = 0.0  # 0 = dropless; > 0: each expert takes at most cf * tokens * k / experts
    # Where weights and tokenizer come from: "" = random init (tiny tests) or a HF dir, an
    # orbax checkpoint dir, or a .gguf file. Tokenizer "" = the checkpoint's own.
    checkpoint: str = ""
    tokenizer: str = ""
    # Numerics and memory.
    param_dtype: str = "float32"
    dtype: str = "float32"
    remat: str = "none"  # none | full | dots_saveable | nothing_saveable
    # Training attention (no KV cache): auto = splash on TPU, cuDNN on NVIDIA GPUs, dense elsewhere.
    attention: str = "auto"  # auto | dense | splash | cudnn
    scan_layers: bool = False

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads
