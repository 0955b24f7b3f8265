"""Stage 7 (pretrain) of the recipe on Llama-3-8B: continue training on the synthetic corpus.

Same recipe as configs/pretrain_mistral7b.py (one epoch, AdamW lr 1e-5, warmup-stable-decay 3% /
85% / floor 10%, packed 2,049-token sequences = 2,048 model positions, loss on solutions only,
512 rows x 2,048 tokens ~ 1M tokens per step, float32 master weights, bfloat16 compute, full
remat, scanned layers).

TPU: a v5p-64 slice = 32 chips (95 GiB HBM each), FSDP over all 32; 16 rows per chip x 32 chips
= 512 rows, no gradient accumulation. The 128,256-entry vocabulary makes the logits 4x Mistral's
(the float32 logits of 16 x 2,048 tokens are 15.7 GiB per chip); the compile stage measured
52.5 GiB per chip with dense attention and the dense loss (2.8 GiB sharded state, 49.7 GiB
temporaries) and 27.8 GiB with splash attention and `train.loss_chunk=256`. Check with
    JAX_PLATFORMS=cpu python -m jz3_jax.launch compile --config configs/pretrain_llama3_8b.py

The architecture is meta-llama/Meta-Llama-3-8B's config.json written out; for the real run set
`model.checkpoint` to its Hugging Face directory and `data.train_path`.
"""

from pathlib import Path

from jz3_jax.config import Config, load_config


def get_config() -> Config:
    # The recipe (optimizer, schedule, data, batch, mesh, topology) is Mistral-7B's; only the model differs.
    cfg = load_config(Path(__file__).with_name("pretrain_mistral7b.py"))
    cfg.run_dir = "runs/pretrain_llama3_8b"
    m = cfg.model
    m.family = "llama"
    m.vocab_size = 128256
    m.hidden_size = 4096
    m.intermediate_size = 14336
    m.num_layers = 32
    m.num_heads = 32
    m.num_kv_heads = 8
    m.head_dim = 128
    m.rms_norm_eps = 1e-5
    m.rope_theta = 500000.0
    m.max_position_embeddings = 8192
    m.sliding_window = 0
    m.tie_embeddings = False
    m.bos_token_id, m.eos_token_id, m.pad_token_id = 128000, 128001, 128001  # no pad token: reuse eos
    m.checkpoint = ""  # the real run: the HF dir of meta-llama/Meta-Llama-3-8B
    cfg.train.loss_chunk = 256  # 4x Mistral's vocabulary: a quarter of the positions per chunk
    return cfg
