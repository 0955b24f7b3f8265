"""How many decode rows one chip's HBM holds, with a contiguous KV cache and with a paged one.

The chip holds the weights, the decode program's other buffers (the rows' state, the logits, the
compiler's temporaries) and the KV cache. `cache_budget` finds the cache bytes that fit from two
compiles of a program at different cache sizes: the compiler's total is weights + a fixed part + a
part per cache byte (1 when the cache is the only thing that grows; more when per-row buffers grow
with it or the program copies the cache). A contiguous cache gives every row `max_tokens`
positions, so

    contiguous rows = budget // (max_tokens x bytes per token)

whatever the requests' real lengths. A paged cache is a pool of pages of `page_size` tokens that
rows take as they grow, so the rows that fit follow the requests' mean length:

    pool pages = budget // (page_size x bytes per token)          (page 0 is scratch, never handed out)
    pages per row = ceil((mean_tokens + page_size / 2) / page_size)   (a row's last page is half empty on average)
    paged rows = (pool pages - 1) // pages per row

This counts every running row at its final length, which is conservative: in a continuous batch a
row is on average part-way through its generation. The engine preempts (frees and requeues) a row
when the pool runs out, so a run of longer-than-mean requests slows down but never fails.
"""

from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass(frozen=True)
class DecodeRows:
    """The rows a chip's KV-cache budget holds, contiguous vs paged (bytes are per chip)."""

    budget_bytes: int  # the contiguous cache's bytes
    paged_budget_bytes: int  # the paged pool's bytes
    bytes_per_token: int  # K and V of one token, all layers, this chip's share of the kv heads
    max_tokens: int  # prompt + generated tokens of the longest request
    mean_tokens: int  # ... of the mean request
    page_size: int
    contiguous_rows: int
    pool_pages: int  # including the scratch page
    pages_per_row: int  # pages a mean request holds
    paged_rows: int

    @property
    def rows_ratio(self) -> float:
        return self.paged_rows / self.contiguous_rows if self.contiguous_rows else math.inf

    @property
    def page_table_width(self) -> int:
        """Pages a row of `max_tokens` needs: the page table's columns."""
        return -(-self.max_tokens // self.page_size)


def decode_rows(budget_bytes: int, bytes_per_token: int, max_tokens: int, mean_tokens: int, page_size: int,
                paged_budget_bytes: int | None = None) -> DecodeRows:
    """The rows `budget_bytes` of KV cache hold at `max_tokens` per row (contiguous) and the rows
    `paged_budget_bytes` (None: the same) hold at a mean of `mean_tokens` per row in pages of
    `page_size` tokens (see the module docstring)."""
    if bytes_per_token <= 0 or page_size <= 0 or not 0 < mean_tokens <= max_tokens:
        raise ValueError(f"need bytes_per_token > 0, page_size > 0 and 0 < mean_tokens <= max_tokens; got "
                         f"{bytes_per_token}, {page_size}, {mean_tokens}, {max_tokens}")
    budget = max(int(budget_bytes), 0)
    paged_budget = budget if paged_budget_bytes is None else max(int(paged_budget_bytes), 0)
    pool_pages = paged_budget // (page_size * bytes_per_token)
    pages_per_row = math.ceil((mean_tokens + page_size / 2) / page_size)
    return DecodeRows(budget_bytes=budget, paged_budget_bytes=paged_budget, bytes_per_token=bytes_per_token, max_tokens=max_tokens,
                      mean_tokens=mean_tokens, page_size=page_size,
                      contiguous_rows=budget // (max_tokens * bytes_per_token), pool_pages=pool_pages,
                      pages_per_row=pages_per_row, paged_rows=max(pool_pages - 1, 0) // pages_per_row)


def round_rows(rows: int, multiple: int) -> int:
    """`rows` rounded down to a multiple of `multiple` (the mesh axes that shard rows), at least `multiple`."""
    return max(multiple, rows // multiple * multiple)


def cache_budget(small: tuple[int, int], large: tuple[int, int], limit: int) -> tuple[int, float, float]:
    """The cache bytes a program may hold so its compiled total stays within `limit`, from two
    compiles (cache bytes, compiler total) at different cache sizes: (budget, fixed bytes, bytes per
    cache byte), the total taken as fixed + per-byte x cache."""
    (c1, t1), (c2, t2) = small, large
    if c2 <= c1:
        raise ValueError(f"the second compile must hold the larger cache; got {small} and {large}")
    per_byte = max((t2 - t1) / (c2 - c1), 1.0)
    fixed = t1 - per_byte * c1
    return max(int((limit - fixed) / per_byte), 0), fixed, per_byte
