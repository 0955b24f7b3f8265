"""A ~1.2B-parameter Llama-3.2-1B-shaped model in bfloat16, randomly initialised: the accelerator
benchmark config (throughput does not depend on the weights' values, so nothing is loaded).

    python -m jz3_jax.launch bench --config configs/bench_llama_1b.py bench.kind=forward
    python -m jz3_jax.launch bench --config configs/bench_llama_1b.py bench.kind=train bench.batch=8
    python -m jz3_jax.launch bench --config configs/bench_llama_1b.py bench.kind=decode bench.batch=1
    python -m jz3_jax.launch bench --config configs/bench_llama_1b.py bench.kind=decode bench.batch=64

Shapes: hidden 2048, 16 layers, 32 query / 8 kv heads of 64, MLP 8192, vocab 128,256, tied
embeddings, llama3 RoPE scaling. The transformers reference runs only on CPU, where this model
is slow: on a CPU pass `bench.reference=false`.
"""

from jz3_jax.config import Config


def get_config() -> Config:
    cfg = Config()
    cfg.run_dir = "runs/bench_llama_1b"
    m = cfg.model
    m.family = "llama"
    m.vocab_size = 128256
    m.hidden_size = 2048
    m.intermediate_size = 8192
    m.num_layers = 16
    m.num_heads = 32
    m.num_kv_heads = 8
    m.head_dim = 64
    m.rms_norm_eps = 1e-5
    m.rope_theta = 500000.0
    m.rope_scaling_type = "llama3"
    m.rope_scaling_factor = 32.0
    m.rope_low_freq_factor = 1.0
    m.rope_high_freq_factor = 4.0
    m.rope_original_max_position = 8192
    m.max_position_embeddings = 131072
    m.tie_embeddings = True
    m.bos_token_id, m.eos_token_id, m.pad_token_id = 128000, 128001, 128001
    m.param_dtype = "bfloat16"
    m.dtype = "bfloat16"
    m.scan_layers = False  # one weight array per layer: the faster layout for decoding
    cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = 1, -1, 1
    cfg.optimizer.lr = 1e-5
    cfg.optimizer.schedule = "constant"
    cfg.bench.batch = 8
    cfg.bench.seq_len = 2048
    cfg.bench.new_tokens = 256
    cfg.bench.prompt_len = 128
    return cfg
