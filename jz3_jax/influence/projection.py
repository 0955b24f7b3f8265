"""Random projections of per-example gradients that never materialise the P x k matrix.

The projection matrix is defined block by block: the rows of parameter leaf `path` are cut into
blocks of min(`block_rows(k)`, leaf size) entries, and block b's random bits come from
`fold_in(fold_in(key(seed), crc32(path)), b)`. Nothing depends on the device kind, the number of
devices, the batch size or the sharding, so the same seed gives the same features everywhere.

- `rademacher`: a dense sign matrix S / sqrt(k). Each random uint32 word gives 32 signs (one per
  bit) and one block of signs is generated once per batch and shared by all its examples (per-entry
  `jax.random.rademacher` was 10-30x slower).
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
_BLOCK_ENTRIES = 2**23  # signs per generated block (32 MiB as float32)


def block_rows(k: int) -> int:
    """Parameter entries per sign block for k output dimensions (a function of k alone)."""
    return max(32, _BLOCK_ENTRIES // k)


def leaf_key(seed: int, path: str) -> jax.Array:
    """The key of one parameter leaf, from the seed and the leaf's path string."""
    return jax.random.fold_in(jax.random.key(seed), zlib.crc32(path.encode()) & 0x7FFFFFFF)


def sign_block(key: jax.Array, rows: int, k: int) -> jax.Array:
    """A [rows, k] float32 block of +-1, 32 signs unpacked from each random uint32 word."""
    words = jax.random.bits(key, (rows, k // 32), jnp.uint32)
    bits = (words[:, :, None] >> jnp.arange(32, dtype=jnp.uint32)) & jnp.uint32(1)
    return 1.0 - 2.0 * bits.reshape(rows, k).astype(jnp.float32)


def _blocks(flat: jax.Array, rows: int) -> jax.Array:
    """[batch, n] -> [num_blocks, batch, rows] (zero-padded at the end)."""
    batch, n = flat.shape
    num = -(-n // rows)
    flat = jnp.pad(flat, ((0, 0), (0, num * rows - n)))
    return flat.reshape(batch, num, rows).transpose(1, 0, 2)


def _leaf_rows(n: int, k: int) -> int:
    """Rows per block of a leaf of n entries: block_rows(k), or the whole leaf if it is smaller."""
    return min(block_rows(k), n)


def _project_leaf_dense(flat: jax.Array, key: jax.Array, k: int) -> jax.Array:
    rows = _leaf_rows(flat.shape[1], k)

    def body(acc, xs):
        block, index = xs
        signs = sign_block(jax.random.fold_in(key, index), rows, k)
        return acc + jnp.dot(block, signs, precision=jax.lax.Precision.HIGHEST), None

    blocks = _blocks(flat, rows)
    acc = jnp.zeros((flat.shape[0], k), jnp.float32)
    acc, _ = jax.lax.scan(body, acc, (blocks, jnp.arange(blocks.shape[0])))
    return acc


def _project_leaf_sparse(flat: jax.Array, key: jax.Array, k: int) -> jax.Array:
    rows = _leaf_rows(flat.shape[1], k)

    def body(acc, xs):
        block, index = xs
        words = jax.random.bits(jax.random.fold_in(key, index), (rows,), jnp.uint32)
        bucket = (words % jnp.uint32(k)).astype(jnp.int32)
        sign = 1.0 - 2.0 * (words >> jnp.uint32(31)).astype(jnp.float32)
        return acc.at[:, bucket].add(block * sign), None

    blocks = _blocks(flat, rows)
    acc = jnp.zeros((flat.shape[0], k), jnp.float32)
    acc, _ = jax.lax.scan(body, acc, (blocks, jnp.arange(blocks.shape[0])))
    return acc


def project(tree, k: int, seed: int, kind: str = "rademacher") -> jax.Array:
    """Project a pytree of per-example arrays (every leaf [batch, ...]) to [batch, k] float32.

    The leaves are visited in path order; each leaf's contribution depends only on its own path,
    its values and the seed."""
    if kind not in PROJECTIONS:
        raise ValueError(f"projection must be one of {PROJECTIONS}, got {kind!r}")
    if k % 32 or k < 32:
        raise ValueError(f"the projection dimension must be a positive multiple of 32, got {k}")
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    batch = leaves[0][1].shape[0]
    out = jnp.zeros((batch, k), jnp.float32)
    fn = _project_leaf_dense if kind == "rademacher" else _project_leaf_sparse
    for path, leaf in sorted(leaves, key=lambda item: jax.tree_util.keystr(item[0])):
        flat = leaf.reshape(batch, -1).astype(jnp.float32)
        out = out + fn(flat, leaf_key(seed, jax.tree_util.keystr(path)), k)
    return out / jnp.sqrt(jnp.float32(k)) if kind == "rademacher" else out


def num_params(tree) -> int:
    """Entries of a pytree (per example when leaves are unbatched)."""
    return sum(x.size for x in jax.tree.leaves(tree))
