"""A random tiny Llama-style model and small shapes: any stage runs on CPU in seconds (tests use it).

The data keys point at the small sets shipped in the package (`jz3_jax/pipeline/data/`), so every
stage runs with no extra keys (`distill` needs a teacher: `teacher.base_url` of a local `serve`).
"""

from jz3_jax.config import Config
from jz3_jax.pipeline.assets import data_path


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
    m.max_position_embeddings = 4096  # synthesis prompts are ~1,300-2,000 bytes (byte tokenizer)
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
    _shipped_data(cfg)
    return cfg


def _shipped_data(cfg: Config) -> None:
    """Inputs of every stage from the package's small data sets, and small generation budgets."""
    corpus = data_path("corpus.jsonl")
    cfg.data.train_path = data_path("tiny_train.jsonl")
    cfg.distill.snippets = corpus
    cfg.teacher.model = "SmolLM2-135M-Instruct.Q4_1"  # `serve --config configs/smollm2.py` (the tiny model cannot chat)
    cfg.teacher.max_tokens = 64
    cfg.select.candidates = corpus
    cfg.select.targets = data_path("targets.jsonl")
    cfg.select.proj_dim = 256
    cfg.select.warmup_fraction = 0.3
    cfg.select.warmup_epochs = 2
    cfg.select.warmup_batch_size = 4
    cfg.select.warmup_lr = 1e-3
    cfg.select.max_length = 64
    cfg.select.top_k = 4
    cfg.synthesize.snippets = corpus
    cfg.filter.inputs = data_path("tiny_completions.jsonl")
    cfg.filter.eval_dir = data_path("eval_sets")
    cfg.sampling.max_new_tokens = 32
    cfg.engine.max_seq_len = 2560
    cfg.eval.limit = 4
    cfg.eval.max_new_tokens = 32
