"""`train.loss_chunk`: the loss over chunks of positions equals the dense loss, value and gradients
(float32, 1e-6 relative), with padding and masked input tokens; its programs (forward and
backward) never hold the full [rows, length, vocab] logits; train and eval steps use it.
"""

from __future__ import annotations

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jz3_jax.errors import ConfigError
from jz3_jax.model.config import ModelConfig
from jz3_jax.model.decoder import Decoder
from jz3_jax.train.step import make_steps, token_losses

ROWS, LENGTH, VOCAB = 4, 64, 1000


def batch() -> dict:
    """Packed rows: two examples each (prompt tokens masked from the loss), then padding."""
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, VOCAB, (ROWS, LENGTH)).astype(np.int32)
    seg, pos, mask = (np.zeros((ROWS, LENGTH), np.int32) for _ in range(3))
    for r, (a, b) in enumerate([(20, 30), (40, 24), (10, 5), (64, 0)]):
        seg[r, :a], pos[r, :a] = 1, np.arange(a)
        seg[r, a:a + b], pos[r, a:a + b] = 2, np.arange(b)
        mask[r, a // 2:a] = 1  # the second half of each example is its output
        mask[r, a + b // 2:a + b] = 1
    targets = np.where(seg > 0, np.roll(tokens, -1, axis=1), 0).astype(np.int32)
    return {"tokens": tokens, "targets": targets, "loss_mask": mask.astype(np.float32), "segment_ids": seg,
            "positions": pos}


def split(tie: bool):
    cfg = ModelConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                      num_kv_heads=2, tie_embeddings=tie)
    return nnx.split(Decoder(cfg, rngs=nnx.Rngs(0)), nnx.Param, ...)


def loss_and_grads(graphdef, params, frozen, data, chunk):
    def f(p):
        total, count = token_losses(graphdef, p, frozen, data, loss_chunk=chunk)
        return total / count
    return jax.jit(jax.value_and_grad(f))(params)


@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("chunk", [16, 24])  # 24 does not divide 64: the last chunk is padded
def test_chunked_loss_and_gradients_equal_dense(tie, chunk):
    graphdef, params, frozen = split(tie)
    data = jax.tree.map(jnp.asarray, batch())
    loss, grads = loss_and_grads(graphdef, params, frozen, data, 0)
    chunked, chunked_grads = loss_and_grads(graphdef, params, frozen, data, chunk)
    assert float(loss) > 0
    np.testing.assert_allclose(chunked, loss, rtol=1e-6)
    flat, want = jax.tree.leaves(chunked_grads), jax.tree.leaves(grads)
    for g, w in zip(flat, want):
        scale = float(jnp.max(jnp.abs(w)))
        assert scale > 0
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6 * scale)


def test_masked_tokens_do_not_count():
    graphdef, params, frozen = split(False)
    data = batch()
    total, count = jax.jit(lambda d: token_losses(graphdef, params, frozen, d, loss_chunk=16))(data)
    assert count == data["loss_mask"].sum()
    changed = dict(data, targets=np.where(data["loss_mask"] > 0, data["targets"], 7).astype(np.int32))
    again, _ = jax.jit(lambda d: token_losses(graphdef, params, frozen, d, loss_chunk=16))(changed)
    assert float(again) == pytest.approx(float(total), rel=1e-6)


def _shapes(jaxpr) -> set[tuple[int, ...]]:
    """Shapes of every value a jaxpr computes, inner jaxprs (scan, checkpoint) included."""
    found = set()
    for eqn in jaxpr.eqns:
        found.update(tuple(v.aval.shape) for v in eqn.outvars if hasattr(v.aval, "shape"))
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            found |= _shapes(sub)
    return found


def test_chunked_programs_never_hold_the_full_logits():
    graphdef, params, frozen = split(False)
    data = batch()

    def grad_fn(chunk):
        return jax.grad(lambda p: token_losses(graphdef, p, frozen, data, loss_chunk=chunk)[0])

    full = {(ROWS, LENGTH, VOCAB), (ROWS * LENGTH, VOCAB)}
    dense = _shapes(jax.make_jaxpr(grad_fn(0))(params).jaxpr)
    chunked = _shapes(jax.make_jaxpr(grad_fn(16))(params).jaxpr)
    assert dense & full  # the check can see the full logits where they exist
    assert not chunked & full
    assert (ROWS, 16, VOCAB) in chunked


def test_train_and_eval_steps_use_the_chunked_loss():
    graphdef, params, frozen = split(False)
    data = batch()
    tx = optax.adamw(1e-3)
    state = {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}
    results = {}
    for chunk in (0, 16):
        steps = make_steps(graphdef, tx, optax.constant_schedule(1e-3), 0, False, loss_chunk=chunk)
        evaluated = jax.jit(steps.eval)(params, frozen, data)
        _, metrics = jax.jit(steps.train)(state, frozen, jax.tree.map(lambda x: x[None], data))
        results[chunk] = (float(evaluated["loss_sum"]), float(metrics["loss"]), float(metrics["grad_norm"]))
    np.testing.assert_allclose(results[16], results[0], rtol=1e-6)


def test_negative_chunk_is_a_config_error():
    graphdef, params, frozen = split(False)
    with pytest.raises(ConfigError, match="train.loss_chunk"):
        token_losses(graphdef, params, frozen, batch(), loss_chunk=-1)
