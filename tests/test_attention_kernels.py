"""`model.attention`: splash (Pallas, interpret mode on CPU) and the cuDNN call (run through XLA
here) equal dense attention on packed rows with several segments and padding, causal and with a
sliding window of 8, forward and gradients; `auto` resolves by platform; the decoder with splash
equals the decoder with dense attention, also sharded over a mesh (the `shard_map` path).
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jz3_jax.errors import ConfigError
from jz3_jax.model import attention_kernels as kernels
from jz3_jax.model.attention import attention_mask, dot_product_attention

B, T, HEADS, KV, D = 2, 128, 4, 2, 16


def packed_rows() -> tuple[np.ndarray, np.ndarray]:
    """Segment ids and positions of two packed rows: several segments, then padding (segment 0)."""
    lengths = [[50, 40, 30], [17, 64, 3, 36]]
    seg, pos = np.zeros((B, T), np.int32), np.zeros((B, T), np.int32)
    for r, row in enumerate(lengths):
        start = 0
        for s, n in enumerate(row, 1):
            seg[r, start:start + n], pos[r, start:start + n] = s, np.arange(n)
            start += n
    return seg, pos


def qkv(seed=0):
    ks = jax.random.split(jax.random.key(seed), 4)
    return (jax.random.normal(ks[0], (B, T, HEADS, D)), jax.random.normal(ks[1], (B, T, KV, D)),
            jax.random.normal(ks[2], (B, T, KV, D)), jax.random.normal(ks[3], (B, T, HEADS, D)))


def dense(q, k, v, seg, pos, window):
    out = dot_product_attention(q, k, v, attention_mask(seg, seg, pos, pos, window))
    return out.transpose(0, 3, 1, 2, 4).reshape(B, T, HEADS, D)  # head h = kv * group + g


def as_heads(out):
    return out.transpose(0, 3, 1, 2, 4).reshape(B, T, HEADS, D)


@pytest.mark.parametrize("kind", ["splash", "cudnn"])
@pytest.mark.parametrize("window", [0, 8])
def test_fused_attention_equals_dense_forward_and_gradients(kind, window):
    seg, pos = packed_rows()
    q, k, v, w = qkv()
    real = jnp.asarray(seg != 0)[:, :, None, None]
    if kind == "splash":
        fused = lambda q, k, v: kernels.splash_attention(q, k, v, jnp.asarray(seg), window, interpret=True)
    else:
        fused = lambda q, k, v: kernels.cudnn_attention(q, k, v, jnp.asarray(seg), window, implementation="xla")

    def loss(attend, q, k, v):  # a weighted sum over the real (non-padding) positions, as a token loss is
        return jnp.sum(jnp.where(real, attend(q, k, v) * w, 0.0))

    ref = lambda q, k, v: dense(q, k, v, jnp.asarray(seg), jnp.asarray(pos), window)
    got = lambda q, k, v: as_heads(fused(q, k, v))
    out, want = jax.jit(got)(q, k, v), jax.jit(ref)(q, k, v)
    np.testing.assert_allclose(np.where(real, out, 0), np.where(real, want, 0), atol=1e-5, rtol=1e-5)
    grads = jax.jit(jax.grad(lambda *a: loss(got, *a), argnums=(0, 1, 2)))(q, k, v)
    want_grads = jax.jit(jax.grad(lambda *a: loss(ref, *a), argnums=(0, 1, 2)))(q, k, v)
    for g, wg, name in zip(grads, want_grads, "qkv"):
        np.testing.assert_allclose(g, wg, atol=1e-5, rtol=1e-5, err_msg=f"d loss / d {name}")
    if window:  # the window matters here: segments are longer than 8 tokens
        full = dense(q, k, v, jnp.asarray(seg), jnp.asarray(pos), 0)
        assert float(jnp.max(jnp.abs(jnp.where(real, full - want, 0)))) > 1e-2


def test_auto_resolves_by_platform():
    assert kernels.resolve_attention("auto", "cpu") == "dense"
    assert kernels.resolve_attention("auto", "tpu") == "splash"
    assert kernels.resolve_attention("auto", "gpu") == "cudnn"
    assert kernels.resolve_attention("cudnn", "cpu") == "dense"  # cuDNN off a GPU: dense, logged
    assert kernels.resolve_attention("splash", "cpu") == "splash"  # interpret mode
    assert kernels.current_platform() == "cpu"
    with pytest.raises(ConfigError, match="model.attention must be one of"):
        kernels.check_attention_kind("flash")


def test_splash_block_sizes():
    assert kernels._splash_block(2048, "tpu") == 512
    assert kernels._splash_block(384, "tpu") == 384
    assert kernels._splash_block(640, "tpu") == 128
    assert kernels._splash_block(200, "tpu") is None  # no TPU tile: the layer runs dense attention
    assert kernels._splash_block(64, "cpu") == 64


def test_cudnn_in_float32_falls_back_to_dense():
    q, k, v, _ = qkv()
    seg, _ = packed_rows()
    assert kernels.cudnn_attention(q, k, v, jnp.asarray(seg), 0) is None


def test_auto_on_cpu_traces_dense_attention():
    """On CPU the default `auto` runs the dense path: no Pallas call in the program."""
    from flax import nnx

    from jz3_jax.model.config import ModelConfig
    from jz3_jax.model.decoder import Decoder

    model = Decoder(ModelConfig(num_layers=1), rngs=nnx.Rngs(0))
    tokens = jnp.ones((1, 128), jnp.int32)
    text = str(jax.make_jaxpr(lambda t: model(t)[0])(tokens))
    assert "pallas_call" not in text and "dot_general" in text


# The decoder with splash attention against the decoder with dense attention, same weights: logits
# at real positions and gradients of a masked token loss, on a 4 x 2 mesh of forced CPU devices
# (rows over fsdp, heads over tensor: the shard_map path; one device is the kernel test above).
DECODER = r"""
import json, sys
import jax, jax.numpy as jnp, numpy as np
from flax import nnx
from jax.sharding import AxisType
from jz3_jax.model.config import ModelConfig
from jz3_jax.model.decoder import Decoder
from jz3_jax.runtime.sharding import parse_rules
from jz3_jax.runtime.config import DEFAULT_RULES

devices = jax.device_count()
mesh = jax.make_mesh((1, devices // 2 if devices > 1 else 1, 2 if devices > 1 else 1), ("data", "fsdp", "tensor"),
                     axis_types=(AxisType.Auto,) * 3)
rules = parse_rules(DEFAULT_RULES)
seg = np.zeros((4, 128), np.int32); pos = np.zeros((4, 128), np.int32)
for r, lengths in enumerate([[50, 40, 30], [17, 64, 3, 36], [128], [100]]):
    s0 = 0
    for s, n in enumerate(lengths, 1):
        seg[r, s0:s0 + n], pos[r, s0:s0 + n] = s, np.arange(n); s0 += n
tokens = np.random.default_rng(0).integers(0, 256, (4, 128)).astype(np.int32)
targets = np.roll(tokens, -1, axis=1)
real = seg != 0
result = {}
for kind in ("dense", "splash"):
    cfg = ModelConfig(num_layers=2, hidden_size=64, num_heads=4, num_kv_heads=2, sliding_window=8,
                      attention=kind, scan_layers=True, remat="full")
    with jax.set_mesh(mesh):
        model = Decoder(cfg, rngs=nnx.Rngs(0), rules=rules)
        graphdef, params = nnx.split(model)

        @jax.jit
        def run(params):
            def loss(params):
                logits, _ = nnx.merge(graphdef, params)(tokens, pos, seg)
                logp = jax.nn.log_softmax(logits, -1)
                nll = -jnp.take_along_axis(logp, targets[..., None], -1)[..., 0]
                return jnp.sum(jnp.where(real, nll, 0.0)), logits
            (l, logits), g = jax.value_and_grad(loss, has_aux=True)(params)
            return l, logits, g

        text = str(jax.make_jaxpr(run)(params))
        l, logits, g = run(params)
    result[kind] = (l, np.where(real[..., None], np.asarray(logits), 0), jax.tree.leaves(g), text)
(l0, x0, g0, t0), (l1, x1, g1, t1) = result["dense"], result["splash"]
np.testing.assert_allclose(x1, x0, atol=1e-5, rtol=1e-5)
np.testing.assert_allclose(l1, l0, rtol=1e-6)
for a, b in zip(g1, g0):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
print(json.dumps({"devices": devices, "splash_pallas": "pallas_call" in t1, "dense_pallas": "pallas_call" in t0,
                  "shard_map": "shard_map" in t1}))
"""


def test_decoder_with_splash_equals_dense(run_in_subprocess, devices=8):
    out = json.loads(run_in_subprocess(DECODER, devices=devices, timeout=300).strip().splitlines()[-1])
    assert out["devices"] == devices and out["splash_pallas"] and not out["dense_pallas"]
    assert out["shard_map"] == (devices > 1)  # rows over fsdp, heads over tensor
