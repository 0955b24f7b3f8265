"""Tiny random Hugging Face models for parity tests, built in-process (nothing downloaded)."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM

COMMON = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5)

CASES = {
    "llama": lambda: LlamaForCausalLM(LlamaConfig(**COMMON)),
    "llama_tied": lambda: LlamaForCausalLM(LlamaConfig(**COMMON, tie_word_embeddings=True)),
    "mistral_window": lambda: MistralForCausalLM(MistralConfig(**COMMON, sliding_window=5)),
    "qwen2": lambda: Qwen2ForCausalLM(Qwen2Config(**COMMON)),
    "llama3_rope": lambda: LlamaForCausalLM(LlamaConfig(**COMMON, rope_parameters=dict(
        rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
        original_max_position_embeddings=16))),
    "head_dim": lambda: LlamaForCausalLM(LlamaConfig(**COMMON, head_dim=24)),
}


def make_hf_model(name: str, seed: int = 0) -> torch.nn.Module:
    """A tiny random HF model of case `name`, in eval mode, with qkv biases made non-zero."""
    torch.manual_seed(seed)
    model = CASES[name]().eval()
    with torch.no_grad():  # HF initialises biases to zero, which would hide a bias bug
        for module_name, param in model.named_parameters():
            if module_name.endswith("bias"):
                param.normal_(0, 0.5)
    return model
