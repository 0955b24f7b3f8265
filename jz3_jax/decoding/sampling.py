"""Per-request sampling settings and the batched, jitted token sampler.

Every row of a batch carries its own temperature, top-k, top-p and PRNG key, so requests with
different settings share one decode step. A row's randomness depends only on its own seed and on
how many tokens it has generated (the key is `fold_in(key(seed), n)`), never on which slot or
batch size it runs in: a fixed seed reproduces the same text alone or inside a large batch.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How one request is decoded.

    temperature 0 is greedy (argmax); top_k 0 and top_p 1.0 turn those filters off. Generation
    ends at an EOS token, at the first occurrence of any `stop` string (the text is cut before
    it), or after `max_new_tokens` tokens. `seed` None draws a fresh random seed. `logprobs` N (not
    None) also returns each sampled token's log-probability and the N most likely tokens' (0: the
    sampled token's only), from `token_logprobs` (after temperature, before top-k/top-p).
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 256
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: int | None = None

    def __post_init__(self) -> None:
        if not (self.temperature >= 0 and np.isfinite(self.temperature)):
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError(f"stop strings must be non-empty strings, got {self.stop!r}")
        if self.logprobs is not None and (isinstance(self.logprobs, bool) or self.logprobs < 0):
            raise ValueError(f"logprobs must be None or an int >= 0, got {self.logprobs!r}")


def seed_words(seed: int) -> tuple[int, int]:
    """A non-negative seed of any size as two uint32 words (low, high) for `row_keys`."""
    seed = int(seed) % (1 << 64)
    return seed & 0xFFFFFFFF, seed >> 32


def row_keys(seed_lo: jax.Array, seed_hi: jax.Array) -> jax.Array:
    """Raw uint32 PRNG keys [batch, 2] from per-row seed words."""
    return jax.vmap(lambda lo, hi: jax.random.fold_in(jax.random.PRNGKey(lo), hi))(seed_lo, seed_hi)


def _filter_top_k_top_p(logits: jax.Array, top_k: jax.Array, top_p: jax.Array) -> jax.Array:
    """Set logits outside each row's top-k and nucleus (top-p) to -inf (ties at the cut are kept).

    The reference: it sorts the whole vocabulary. `filter_top_k_top_p` gives the same result from
    the top `max_top_k` candidates and falls back to this only when a nucleus is larger."""
    vocab = logits.shape[-1]
    ordered = -jnp.sort(-logits, axis=-1)  # descending
    k = jnp.where(top_k > 0, jnp.minimum(top_k, vocab), vocab)
    kth = jnp.take_along_axis(ordered, (k - 1)[:, None], axis=-1)
    ordered = jnp.where(ordered >= kth, ordered, -jnp.inf)
    probs = jax.nn.softmax(ordered, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    # The smallest prefix whose mass reaches top_p; top_p >= 1 keeps all (float32 cumsums reach
    # 1.0 before the tail, which would otherwise drop tokens of rows that asked for no filter).
    keep = (mass_before < top_p[:, None]) | (top_p[:, None] >= 1.0)
    cut = jnp.min(jnp.where(keep, ordered, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(logits >= jnp.maximum(kth, cut), logits, -jnp.inf)


def _filter_from_candidates(logits: jax.Array, top_k: jax.Array, top_p: jax.Array, max_top_k: int
                            ) -> tuple[jax.Array, jax.Array]:
    """The filter from the top `max_top_k` logits, and per row whether that was enough (its
    nucleus ends among them); rows where it was not are wrong and need the sort."""
    vocab = logits.shape[-1]
    cap = min(max_top_k, vocab)
    candidates = jax.lax.top_k(logits, cap)[0]  # [batch, cap], descending
    k = jnp.where((top_k > 0) & (top_k < vocab), jnp.minimum(top_k, cap), 0)
    kth = jnp.where((k > 0)[:, None], jnp.take_along_axis(candidates, jnp.maximum(k - 1, 0)[:, None], axis=-1),
                    -jnp.inf)
    # log of the top-k filtered distribution's normaliser, over the whole vocabulary (ties included)
    log_norm = jax.nn.logsumexp(jnp.where(logits >= kth, logits, -jnp.inf), axis=-1, keepdims=True)
    probs = jnp.where(candidates >= kth, jnp.exp(candidates - log_norm), 0.0)
    mass = jnp.cumsum(probs, axis=-1)
    keep = ((mass - probs) < top_p[:, None]) | (top_p[:, None] >= 1.0)
    cut = jnp.min(jnp.where(keep & (candidates >= kth), candidates, jnp.inf), axis=-1, keepdims=True)
    cut = jnp.where(top_p[:, None] >= 1.0, -jnp.inf, cut)  # no nucleus: the row keeps its whole top-k set
    # The nucleus ends among the candidates when their mass reaches top_p (or top-k bounds the row).
    fits = (top_p >= 1.0) | (k > 0) | (mass[:, -1] >= top_p) | (cap == vocab)
    return jnp.where(logits >= jnp.maximum(kth, cut), logits, -jnp.inf), fits


def filter_top_k_top_p(logits: jax.Array, top_k: jax.Array, top_p: jax.Array, max_top_k: int) -> jax.Array:
    """`_filter_top_k_top_p` from `jax.lax.top_k` candidates instead of a sort of the vocabulary.

    Every row's top_k must be 0 (off), at most `max_top_k`, or at least the vocabulary size (off
    too); the engine refuses other requests. The nucleus is exact: it is found among the top
    `max_top_k` logits with probabilities normalised over the row's whole (top-k filtered)
    vocabulary, and when some row's nucleus holds more tokens than that (a flat distribution with
    top_p near 1) this step sorts the vocabulary instead, so the result never depends on the cap.
    """
    filtered, fits = _filter_from_candidates(logits, top_k, top_p, max_top_k)
    return jax.lax.cond(jnp.all(fits), lambda *_: filtered, _filter_top_k_top_p, logits, top_k, top_p)


def sample_tokens(logits: jax.Array, temperature: jax.Array, top_k: jax.Array, top_p: jax.Array,
                  keys: jax.Array, counts: jax.Array, max_top_k: int = 64) -> jax.Array:
    """One token per row: logits [batch, vocab] float32, per-row settings [batch], raw keys
    [batch, 2] and the number of tokens each row generated so far -> int32 [batch].

    `max_top_k` (static) bounds every row's top_k (see `filter_top_k_top_p`)."""
    greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)

    def sampled() -> jax.Array:
        scaled = logits / jnp.where(temperature > 0, temperature, 1.0)[:, None]
        needs_filter = jnp.any((top_k > 0) | (top_p < 1.0))
        scaled = jax.lax.cond(needs_filter, lambda x, k, p: filter_top_k_top_p(x, k, p, max_top_k),
                              lambda x, *_: x, scaled, top_k, top_p)
        step_keys = jax.vmap(jax.random.fold_in)(keys, counts)
        drawn = jax.vmap(jax.random.categorical)(step_keys, scaled).astype(jnp.int32)
        return jnp.where(temperature > 0, drawn, greedy)

    # All-greedy batches (evaluation, parity runs) skip the filter and the random draws entirely.
    return jax.lax.cond(jnp.any(temperature > 0), sampled, lambda: greedy)


def token_logprobs(logits: jax.Array, temperature: jax.Array, tokens: jax.Array, top_n: int
                   ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Log-probabilities as the sampler sees them: `log_softmax(logits / temperature)` (temperature
    0, greedy, counts as 1), before any top-k/top-p filter.

    logits [..., vocab] float32, temperature broadcastable to logits[..., 0], tokens [...] int ->
    (the tokens' log-probabilities [...], the `top_n` most likely ids [..., top_n] int32 and their
    log-probabilities [..., top_n], most likely first). Only the programs that ask (a static
    `logprobs` of the decode steps) compute this: plain decoding never does.
    """
    scale = jnp.where(temperature > 0, temperature, 1.0)
    scaled = logits / jnp.expand_dims(scale, -1)
    logp = jax.nn.log_softmax(scaled, axis=-1)
    chosen = jnp.take_along_axis(logp, tokens[..., None].astype(jnp.int32), axis=-1)[..., 0]
    top_lp, top_ids = jax.lax.top_k(logp, top_n)
    return chosen, top_ids.astype(jnp.int32), top_lp
