"""Stage 7 (pretrain) of the recipe on Mistral-7B-v0.1: continue training on the synthetic corpus.

The paper's recipe: one epoch, AdamW at lr 1e-5, warmup-stable-decay (3% warm-up, flat to 85% of
the steps, linear decay to 10% of the peak), packed sequences with per-example attention, loss on
the solution tokens only, about 1M tokens per optimizer step. Numerics: float32 master weights and
optimizer moments, bfloat16 compute, every layer rematerialised, layers scanned.

Sequence length: the paper packs 2,049-token sequences. Shifting by one token for next-token
prediction turns 2,049 tokens into 2,048 inputs and 2,048 targets, so the model sees 2,048
positions: `data.max_length = 2048` (our packer already emits inputs and shifted targets).
Global batch: 512 rows x 2,048 tokens = 1,048,576 tokens per step.

TPU: a v5p-64 slice = 32 chips (v5p names count TensorCores, 2 per chip; 95 GiB HBM per chip),
pure FSDP over all 32 (mesh data=1, fsdp=-1, tensor=1). 16 rows per chip x 32 chips = 512 rows,
no gradient accumulation. Check that it fits before renting the slice:
    JAX_PLATFORMS=cpu python -m jz3_jax.launch compile --config configs/pretrain_mistral7b.py

The architecture is written out (Mistral-7B-v0.1's config.json), so `compile` and `--print-config`
read nothing large. For the real run point `model.checkpoint` at the Hugging Face directory of
Mistral-7B-v0.1 (its config.json then supplies the same architecture) and set `data.train_path`.
"""

from jz3_jax.config import Config


def get_config() -> Config:
    cfg = Config()
    cfg.run_dir = "runs/pretrain_mistral7b"
    m = cfg.model
    m.family = "mistral"
    m.vocab_size = 32000
    m.hidden_size = 4096
    m.intermediate_size = 14336
    m.num_layers = 32
    m.num_heads = 32
    m.num_kv_heads = 8
    m.head_dim = 128
    m.rms_norm_eps = 1e-5
    m.rope_theta = 10000.0  # v0.1 (v0.2/v0.3 use 1e6 and no sliding window)
    m.max_position_embeddings = 32768
    m.sliding_window = 4096  # no effect at 2,048 positions
    m.tie_embeddings = False
    m.bos_token_id, m.eos_token_id, m.pad_token_id = 1, 2, 0
    m.checkpoint = ""  # the real run: the HF dir of mistralai/Mistral-7B-v0.1
    m.param_dtype = "float32"  # master weights (and AdamW moments) in float32
    m.dtype = "bfloat16"  # matmuls and activations in bfloat16
    m.scan_layers = True
    m.remat = "full"

    cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = 1, -1, 1

    o = cfg.optimizer
    o.lr = 1e-5
    o.schedule = "wsd"
    o.warmup_fraction = 0.03
    o.stable_fraction = 0.85
    o.min_lr_fraction = 0.1
    o.weight_decay = 0.1
    o.grad_clip = 1.0

    cfg.data.max_length = 2048  # 2,049-token packed sequences -> 2,048 (input, target) positions
    cfg.data.pack = True
    cfg.data.train_on_input = False  # loss on solution tokens only

    t = cfg.train
    t.epochs = 1.0
    t.grad_accum = 1
    t.global_batch_size = 512  # x 2,048 tokens ~ 1M tokens per step
    t.checkpoint_every = 500
    # The LM head and loss over 512 positions at a time: the [16, 2048, vocab] float32 logits never exist.
    # Attention: model.attention = "auto" (the default) is splash attention on TPU.
    t.loss_chunk = 512

    c = cfg.compile
    c.topology = "v5p-64"  # 32 chips
    # 16 rows x 32 chips = 512 = train.global_batch_size. The compile stage measured 45.7 GiB per chip
    # with dense attention and the dense loss (2.5 GiB sharded state, 43.2 GiB temporaries) and
    # 27.4 GiB with splash attention and train.loss_chunk=512 (24.8 GiB temporaries).
    c.per_device_batch = 16
    c.num_slices = 1
    return cfg
