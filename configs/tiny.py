"""A random tiny Llama-style model and small shapes: any stage runs on CPU in seconds (tests use it)."""

from jz3_jax.config import Config


def get_config() -> Config:
    cfg = Config()
    cfg.run_dir = "runs/tiny"
    m = cfg.model
    m.family = "llama"
    m.vocab_size = 260  # the byte tokenizer's 259 ids, rounded up to divide the tensor axis
    m.tokenizer = "bytes"
    m.pad_token_id, m.bos_token_id, m.eos_token_id = 256, 257, 258
    m.hidden_size = 64
    m.intermediate_size = 128
    m.num_layers = 2
    m.num_heads = 4
    m.num_kv_heads = 2
    m.max_position_embeddings = 512
    cfg.optimizer.lr = 1e-3
    cfg.optimizer.schedule = "constant"
    cfg.train.global_batch_size = 8
    cfg.train.steps = 10
    cfg.data.max_length = 64
    cfg.bench.batch = 4
    cfg.bench.seq_len = 32
    cfg.bench.new_tokens = 8
    cfg.bench.repeats = 3
    cfg.bench.warmup = 1
    return cfg
