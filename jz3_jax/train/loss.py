"""Next-token cross-entropy from final hidden states, dense or in chunks of positions.

The dense loss builds the [rows, length, vocab] float32 logits and their log-softmax at once: at
Llama-3's 128k vocabulary and 16 x 2,048 tokens per chip that is ~17 GB each. With `chunk > 0`
(`train.loss_chunk`) the LM head and the log-softmax run inside a `lax.scan` over chunks of
`chunk` positions, each chunk under `jax.checkpoint`, so neither the forward nor the backward
ever holds more than one chunk's logits: the backward recomputes them chunk by chunk. Both paths
compute the same per-token expression; only the order of the final sum differs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jz3_jax.errors import ConfigError


def _nll_sum(model, hidden: jax.Array, targets: jax.Array, mask: jax.Array) -> jax.Array:
    """Sum over positions of mask x (-log p(target)) for hidden [rows, n, embed]."""
    logits = model.logits(hidden)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    return jnp.sum(nll * mask)


def token_nll(model, hidden: jax.Array, targets: jax.Array, loss_mask: jax.Array,
              chunk: int = 0) -> tuple[jax.Array, jax.Array]:
    """(sum of masked next-token NLL, number of target tokens) for hidden [rows, length, embed].

    `chunk` = 0 (or >= length): dense. Otherwise positions are processed `chunk` at a time; a
    length that `chunk` does not divide is padded with masked positions."""
    if chunk < 0:
        raise ConfigError(f"train.loss_chunk must be >= 0 (0 = dense), got {chunk}")
    mask = loss_mask.astype(jnp.float32)
    rows, length, embed = hidden.shape
    if chunk == 0 or chunk >= length:
        return _nll_sum(model, hidden, targets, mask), jnp.sum(mask)
    pad = -length % chunk
    if pad:
        widths = ((0, 0), (0, pad))
        hidden = jnp.pad(hidden, widths + ((0, 0),))
        targets, padded_mask = jnp.pad(targets, widths), jnp.pad(mask, widths)
    else:
        padded_mask = mask
    n = (length + pad) // chunk

    def split(x):  # [rows, n * chunk, ...] -> [n, rows, chunk, ...]: rows keep their sharding
        return jnp.swapaxes(x.reshape(rows, n, chunk, *x.shape[2:]), 0, 1)

    @jax.checkpoint
    def one_chunk(h, t, m):
        return _nll_sum(model, h, t, m)

    def body(total, xs):
        return total + one_chunk(*xs), None

    total, _ = jax.lax.scan(body, jnp.zeros((), jnp.float32), (split(hidden), split(targets), split(padded_mask)))
    return total, jnp.sum(mask)
