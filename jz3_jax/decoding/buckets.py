"""The engine's fixed shapes: prompt-length buckets and the (rows, width) of every prefill
(see `engine.py`'s docstring): a small, known set, so warm-up compiles all of them."""

from __future__ import annotations

from typing import Any


def bucket_length(n: int, multiple: int = 16) -> int:
    """Round a prompt length up so that similar lengths share one compiled shape."""
    return max(multiple, -(-n // multiple) * multiple)


def doubling_buckets(smallest: int, bound: int) -> tuple[int, ...]:
    """`smallest`, twice that, four times ... while below `bound`, then `bound` itself."""
    sizes = []
    size = max(1, smallest)
    while size < bound:
        sizes.append(size)
        size *= 2
    return (*sizes, bound)


def smallest_at_least(buckets: tuple[int, ...], n: int) -> int:
    """The first bucket of `buckets` (ascending) that holds `n`."""
    return next(b for b in buckets if b >= n)


def group_rows(width: int, max_seq_len: int, max_batch: int) -> int:
    """The rows of a prefill of several prompts of bucket `width`: a prefill computes at most
    `max_seq_len` tokens (or one prompt) and fills at most `max_batch` rows."""
    return max(1, min(max_batch, max_seq_len // width))


def prefill_shapes(prompt_bucket: int, max_seq_len: int, max_batch: int) -> list[tuple[int, int]]:
    """Every (rows, width) a prefill of an engine with these sizes can have (see the module docstring)."""
    return [(rows, width) for width in doubling_buckets(prompt_bucket, max_seq_len)
            for rows in sorted({1, group_rows(width, max_seq_len, max_batch)})]


def row_shards(mesh: Any, rules) -> int:
    """How many ways `mesh` splits rows: the product of the sizes of the mesh axes that the rules
    table (a dict or its sorted items) gives the logical `batch` axis (1 without a mesh)."""
    if mesh is None:
        return 1
    shards = 1
    for axis in dict(rules).get("batch", ()):
        shards *= int(mesh.shape.get(axis, 1))
    return shards


def row_buckets(max_rows: int, shards: int = 1, smallest: int = 4, steps: int = 8) -> tuple[int, ...]:
    """The row counts a paged decode step is compiled for: doubling from `smallest` up to
    `max_rows / steps`, then in `steps` equal strides up to `max_rows`, all multiples of `shards`
    (the mesh's row shards). So a step computes at most 1/`steps` more rows than run once past the
    doubling, in about log2(max_rows / steps) + steps programs."""
    def up(n: int) -> int:
        return min(max_rows, shards * -(-n // shards))

    stride = up(max(smallest, -(-max_rows // steps)))
    sizes = {up(n) for n in doubling_buckets(smallest, stride)}
    sizes.update(up(n) for n in range(stride, max_rows + stride, stride))
    return tuple(sorted(sizes))


def dispatch_slots(running: list[int], buckets: tuple[int, ...], slots: int) -> list[int]:
    """The slots a paged decode dispatch computes: the `running` ones, then free ones up to the
    smallest of `buckets` that holds them all (distinct, all below `slots`)."""
    n = smallest_at_least(buckets, len(running))
    taken = set(running)
    return running + [row for row in range(slots) if row not in taken][: n - len(running)]
