"""A small model for the `compile` stage's test: ahead-of-time compile for a v5p-16 (8 chips) in seconds.

Shapes are chosen so that every parameter shard is a whole number of TPU tiles (8 x 128 for
float32 in the last two dimensions) on the mesh fsdp=4 x tensor=2: the compiler's argument
bytes then equal the bytes the shardings predict, with no layout padding (the test checks that).
head_dim is set explicitly (128) and is not hidden_size / num_heads.

    JAX_PLATFORMS=cpu python -m jz3_jax.launch compile --config configs/tiny_compile.py
"""

from jz3_jax.config import Config


def get_config() -> Config:
    cfg = Config()
    cfg.run_dir = "runs/tiny_compile"
    m = cfg.model
    m.family = "llama"
    m.vocab_size = 1024  # [vocab/tensor, embed/fsdp] = [512, 128] per device
    m.hidden_size = 512
    m.intermediate_size = 1024  # [embed/fsdp, mlp/tensor] = [128, 512] per device
    m.num_layers = 2
    m.num_heads = 16  # q: [layers, embed/fsdp, heads/tensor, head_dim] = [2, 128, 8, 128]
    m.num_kv_heads = 16
    m.head_dim = 128
    m.max_position_embeddings = 512
    m.param_dtype = "float32"
    m.dtype = "bfloat16"
    m.scan_layers = True
    m.remat = "full"
    cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = 1, 4, 2
    cfg.data.max_length = 256
    cfg.train.grad_accum = 2
    cfg.compile.topology = "v5p-16"  # 8 chips (v5p names count TensorCores, 2 per chip)
    cfg.compile.per_device_batch = 1
    # 1 row per device x 8 devices x 2 micro-steps
    cfg.train.global_batch_size = cfg.compile.per_device_batch * 8 * cfg.train.grad_accum
    return cfg
