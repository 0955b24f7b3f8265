"""Stage 7 (pretrain) of the recipe on Mixtral-8x7B-v0.1, the paper's JiuZhang3.0-8x7B.

The same pre-training recipe as `configs/pretrain_mistral7b.py`: one epoch, AdamW at lr 1e-5,
warmup-stable-decay (3% warm-up, flat to 85% of the steps, linear decay to 10% of the peak),
packed 2,049-token sequences (2,048 input/target positions) with per-example attention, loss on
the solution tokens only, 512 rows x 2,048 tokens ~ 1M tokens per optimizer step; float32 master
weights and moments, bfloat16 compute, every layer rematerialised, layers scanned.

Mixture of experts: 8 SwiGLU experts per layer, top-2 routing, the router's load-balancing loss
added with Mixtral's router_aux_loss_coef = 0.02 (logged as `router_aux_loss`), dropless
(`model.moe_capacity_factor=0`: tokens sorted by expert, grouped matmuls, none dropped; set e.g.
1.25 for the capacity-factor ablation, whose `tokens_dropped` is logged).

TPU: 46.7B parameters (12.9B active per token). A v5p-128 slice = 64 chips (v5p names count
TensorCores; 95 GiB HBM per chip): FSDP over 16 chips x a 4-way expert axis (mesh.fsdp=-1,
mesh.expert=4; 4 and 16 map onto whole axes of the 4x4x4 torus, 8 would have to split one):
every parameter and its moments are split over all 64 chips (experts over the expert axis,
embed over fsdp x expert), the batch too;
8 rows per chip x 64 chips = 512 rows, no gradient accumulation. Check before renting it:
    JAX_PLATFORMS=cpu python -m jz3_jax.launch compile --config configs/pretrain_mixtral8x7b.py

The architecture is written out (Mixtral-8x7B-v0.1's config.json), so `compile` and
`--print-config` read nothing large. For the real run point `model.checkpoint` at the Hugging
Face directory of mistralai/Mixtral-8x7B-v0.1 and set `data.train_path`.
"""

from jz3_jax.config import Config


def get_config() -> Config:
    cfg = Config()
    cfg.run_dir = "runs/pretrain_mixtral8x7b"
    m = cfg.model
    m.family = "mixtral"
    m.vocab_size = 32000
    m.hidden_size = 4096
    m.intermediate_size = 14336
    m.num_layers = 32
    m.num_heads = 32
    m.num_kv_heads = 8
    m.head_dim = 128
    m.rms_norm_eps = 1e-5
    m.rope_theta = 1e6
    m.max_position_embeddings = 32768
    m.sliding_window = 0  # Mixtral-8x7B-v0.1: full attention
    m.tie_embeddings = False
    m.num_experts = 8
    m.experts_per_token = 2
    m.router_aux_loss_coef = 0.02
    m.moe_capacity_factor = 0.0  # dropless
    m.bos_token_id, m.eos_token_id, m.pad_token_id = 1, 2, 0
    m.checkpoint = ""  # the real run: the HF dir of mistralai/Mixtral-8x7B-v0.1
    m.param_dtype = "float32"  # master weights (and AdamW moments) in float32
    m.dtype = "bfloat16"  # matmuls and activations in bfloat16
    m.scan_layers = True
    m.remat = "full"

    cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.expert, cfg.mesh.tensor = 1, -1, 4, 1

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

    c = cfg.compile
    c.topology = "v5p-128"  # 64 chips
    c.per_device_batch = 8  # 8 rows x 64 chips = 512 = train.global_batch_size
    c.num_slices = 1
    return cfg
