"""Stage 2 (sft) of the recipe: fine-tune the synthesizer, DeepSeekMath-7B-RL, on the teacher's outputs.

The paper's recipe: full fine-tuning, lr 1e-5, 5 epochs, cosine schedule, weight decay 0.1, global
batch 32, max length 2,048; the loss is on the teacher's output only. Numerics: float32 master
weights and AdamW moments, bfloat16 compute, full remat, scanned layers.

DeepSeekMath-7B has the Llama layout (multi-head attention: 32 kv heads), 30 layers and a
102,400-entry vocabulary.

TPU: a v5p-16 slice = 8 chips (95 GiB HBM each), FSDP over all 8; 4 rows per chip x 8 chips =
32 rows = the global batch, no accumulation. The compile stage measured 23.4 GiB per chip (9.7 GiB
sharded state, 13.7 GiB temporaries), so a v5p-8 (4 chips, compile.per_device_batch=8) would
also do. Check it with
    JAX_PLATFORMS=cpu python -m jz3_jax.launch compile --config configs/sft_synthesizer_deepseekmath7b.py

The architecture is deepseek-ai/deepseek-math-7b-rl's config.json written out; for the real run
set `model.checkpoint` to its Hugging Face directory and `data.train_path` to the distilled data.
"""

from jz3_jax.config import Config


def get_config() -> Config:
    cfg = Config()
    cfg.run_dir = "runs/sft_synthesizer_deepseekmath7b"
    m = cfg.model
    m.family = "llama"
    m.vocab_size = 102400
    m.hidden_size = 4096
    m.intermediate_size = 11008
    m.num_layers = 30
    m.num_heads = 32
    m.num_kv_heads = 32
    m.head_dim = 128
    m.rms_norm_eps = 1e-6
    m.rope_theta = 10000.0
    m.max_position_embeddings = 4096
    m.tie_embeddings = False
    m.bos_token_id, m.eos_token_id, m.pad_token_id = 100000, 100001, 100001  # no pad token: reuse eos
    m.checkpoint = ""  # the real run: the HF dir of deepseek-ai/deepseek-math-7b-rl
    m.param_dtype = "float32"
    m.dtype = "bfloat16"
    m.scan_layers = True
    m.remat = "full"

    cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = 1, -1, 1

    o = cfg.optimizer
    o.lr = 1e-5
    o.schedule = "cosine"
    o.warmup_fraction = 0.03  # the paper names no warm-up; a short one is the usual default
    o.min_lr_fraction = 0.0  # cosine to zero
    o.weight_decay = 0.1
    o.grad_clip = 1.0

    cfg.data.max_length = 2048
    cfg.data.pack = False  # one example per row: a global batch of 32 examples, as in the paper
    cfg.data.train_on_input = False  # loss on the teacher's output only

    t = cfg.train
    t.epochs = 5.0
    t.grad_accum = 1
    t.global_batch_size = 32
    t.checkpoint_every = 100

    # Synthesis with the fine-tuned model (`synthesize`): 64 rows decoded together, each up to 4,096
    # positions (prompt + the recipe's 2,500 new tokens). Check one host's decode step with
    #   compile.program=decode compile.topology=v5p-8
    cfg.engine.max_batch = 64
    cfg.engine.max_seq_len = 4096

    c = cfg.compile
    c.topology = "v5p-16"  # 8 chips
    c.per_device_batch = 4  # 4 x 8 = 32 = train.global_batch_size
    c.num_slices = 1
    return cfg
