"""Random projections of per-example gradients that never materialise the P x k matrix.

The leaves of the gradient tree are taken in path order, each flattened and zero-padded to a
multiple of `rows` entries, and cut into blocks of `rows` entries; block j of the leaf at `path`
gets its random bits from `fold_in(fold_in(key(seed), crc32(path)), j)`. `rows` depends only on k
and the largest leaf (`block_rows`), so nothing depends on the device kind, the number of
devices, the batch size or the sharding: the same seed gives the same matrix everywhere.

All blocks of all leaves go through one `lax.scan` (one program to compile, one block of signs
alive at a time; a scan per leaf made XLA compile 240 loops for SmolLM2 and run them side by side,
each holding its own sign block).

- `rademacher`: a dense sign matrix S / sqrt(k). Each random uint32 word gives 32 signs (one per
  bit) and one block of signs is generated once per micro-batch and shared by all its examples
  (per-entry `jax.random.rademacher` was 10-30x slower).
- `sparse`: a count-sketch (sparse JL with one nonzero per row): entry i adds sign(i) * g_i to
  bucket h(i); no matmul, k-independent cost per entry.

Both preserve inner products in expectation: E[<Px, Py>] = <x, y>, with standard deviation about
|x||y| / sqrt(k).
"""

from __future__ import annotations

import zlib

import jax
import jax.numpy as jnp

PROJECTIONS = ("rademacher", "sparse")
_BLOCK_ENTRIES = 2**21  # signs per generated block (8 MiB as float32: faster than 32 MiB on CPU)


def block_rows(k: int, largest_leaf: int | None = None) -> int:
    """Parameter entries per sign block: 2**21 / k, or less when every leaf is smaller than that
    (a power of two at least the largest leaf, so small models do not project padding)."""
    rows = max(32, _BLOCK_ENTRIES // k)
    if largest_leaf is not None:
        rows = min(rows, max(32, 1 << (largest_leaf - 1).bit_length()))
    return rows


def leaf_key(seed: int, path: str) -> jax.Array:
    """The key of one parameter leaf, from the seed and the leaf's path string."""
    return jax.random.fold_in(jax.random.key(seed), zlib.crc32(path.encode()) & 0x7FFFFFFF)


def sign_block(key: jax.Array, rows: int, k: int) -> jax.Array:
    """A [rows, k] float32 block of +-1, 32 signs unpacked from each random uint32 word."""
    words = jax.random.bits(key, (rows, k // 32), jnp.uint32)
    bits = (words[:, :, None] >> jnp.arange(32, dtype=jnp.uint32)) & jnp.uint32(1)
    return 1.0 - 2.0 * bits.reshape(rows, k).astype(jnp.float32)


def _dense_block(block: jax.Array, key: jax.Array, k: int) -> jax.Array:
    return jnp.dot(block, sign_block(key, block.shape[1], k), precision=jax.lax.Precision.HIGHEST)


def _sparse_block(block: jax.Array, key: jax.Array, k: int) -> jax.Array:
    words = jax.random.bits(key, (block.shape[1],), jnp.uint32)
    bucket = (words % jnp.uint32(k)).astype(jnp.int32)
    sign = 1.0 - 2.0 * (words >> jnp.uint32(31)).astype(jnp.float32)
    return jnp.zeros((block.shape[0], k), jnp.float32).at[:, bucket].add(block * sign)


def _flat_blocks(tree, seed: int, rows: int) -> tuple[jax.Array, jax.Array]:
    """([batch, blocks * rows] concatenated, padded leaves; [blocks] keys), leaves in path order."""
    leaves = sorted(jax.tree_util.tree_flatten_with_path(tree)[0], key=lambda item: jax.tree_util.keystr(item[0]))
    batch = leaves[0][1].shape[0]
    flats, keys = [], []
    for path, leaf in leaves:
        flat = leaf.reshape(batch, -1).astype(jnp.float32)
        num = -(-flat.shape[1] // rows)
        flats.append(jnp.pad(flat, ((0, 0), (0, num * rows - flat.shape[1]))))
        base = leaf_key(seed, jax.tree_util.keystr(path))
        keys.append(jax.vmap(lambda j, base=base: jax.random.fold_in(base, j))(jnp.arange(num, dtype=jnp.uint32)))
    return jnp.concatenate(flats, axis=1), jnp.concatenate(keys)


def project(tree, k: int, seed: int, kind: str = "rademacher") -> jax.Array:
    """Project a pytree of per-example arrays (every leaf [batch, ...]) to [batch, k] float32.

    Each leaf's contribution depends only on its own path, its values, the seed and `block_rows`."""
    if kind not in PROJECTIONS:
        raise ValueError(f"projection must be one of {PROJECTIONS}, got {kind!r}")
    if k % 32 or k < 32:
        raise ValueError(f"the projection dimension must be a positive multiple of 32, got {k}")
    leaves = jax.tree.leaves(tree)
    batch = leaves[0].shape[0]
    rows = block_rows(k, max(x.size // batch for x in leaves))
    flat, keys = _flat_blocks(tree, seed, rows)
    block_fn = _dense_block if kind == "rademacher" else _sparse_block

    def body(acc, xs):
        key, index = xs
        block = jax.lax.dynamic_slice_in_dim(flat, index * rows, rows, axis=1)
        return acc + block_fn(block, key, k), None

    acc = jnp.zeros((batch, k), jnp.float32)
    acc, _ = jax.lax.scan(body, acc, (keys, jnp.arange(keys.shape[0])))
    return acc / jnp.sqrt(jnp.float32(k)) if kind == "rademacher" else acc


def num_params(tree) -> int:
    """Entries of a pytree (per example when leaves are unbatched)."""
    return sum(x.size for x in jax.tree.leaves(tree))
