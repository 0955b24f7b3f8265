"""Rows of fixed length: several examples packed per row (grain's first-fit packer), or one example padded.

A row is a dict of [max_length] arrays: tokens/targets (int32), loss_mask (float32), segment_ids (int32,
1..n per example, 0 = padding) and positions (int32, 0.. per example); plus "_truncated", the number of
truncated examples in the row (bookkeeping the iterator strips off).
"""

from __future__ import annotations

import grain
import numpy as np

from .examples import Example

SEQUENCE_KEYS = ("tokens", "targets", "loss_mask")
ROW_KEYS = (*SEQUENCE_KEYS, "segment_ids", "positions")
TRUNCATED = "_truncated"


def example_features(example: Example) -> dict:
    """The packer's input element for `example`."""
    return {"tokens": example.tokens, "targets": example.targets, "loss_mask": example.loss_mask,
            TRUNCATED: np.int32(example.truncated)}


def pad_example(features: dict, max_length: int) -> dict:
    """A row holding one example (`example_features`) alone, right-padded to `max_length`."""
    n = len(features["tokens"])
    row = {}
    for key in SEQUENCE_KEYS:
        row[key] = np.zeros(max_length, dtype=features[key].dtype)
        row[key][:n] = features[key]
    inside = np.arange(max_length) < n
    row["segment_ids"] = inside.astype(np.int32)
    row["positions"] = np.where(inside, np.arange(max_length), 0).astype(np.int32)
    row[TRUNCATED] = np.int32(features[TRUNCATED])
    return row


def pack_examples(examples: grain.IterDataset, *, max_length: int, num_bins: int) -> grain.IterDataset:
    """Rows packed first-fit from `examples` (elements of `example_features`, each at most `max_length` long).

    grain's FirstFitPackIterDataset fills `num_bins` rows at once, places each example whole in the first row
    with room, and emits all rows when one does not fit; its iterator state is resumable. Bins are not
    shuffled, so the output depends only on the input order.
    """
    lengths = {key: max_length for key in SEQUENCE_KEYS}
    packed = grain.experimental.FirstFitPackIterDataset(
        examples, length_struct=lengths, num_packing_bins=num_bins, shuffle_bins=False, meta_features=(TRUNCATED,))
    return packed.map(_packed_row)


def packed_row_count(lengths: np.ndarray, *, max_length: int, num_bins: int) -> int:
    """How many rows `pack_examples` makes of examples with these token counts (each 1..max_length), in order.

    The packer's rule, on lengths alone: `num_bins` open rows; an example goes into the first open row
    with room for it; when no row has room, the open rows are emitted and the example opens the next
    ones; at the end the open rows that hold anything are emitted.
    """
    rows, used = 0, []
    for n in np.asarray(lengths).tolist():
        for i, filled in enumerate(used):
            if filled + n <= max_length:
                used[i] = filled + n
                break
        else:
            if len(used) == num_bins:
                rows += num_bins
                used = [n]
            else:
                used.append(n)
    return rows + len(used)


def _packed_row(packed: dict) -> dict:
    row = {key: packed[key] for key in SEQUENCE_KEYS}
    # The packer gives every packed feature its own (identical) segment ids and positions.
    row["segment_ids"] = packed["tokens_segment_ids"].astype(np.int32)
    row["positions"] = packed["tokens_positions"].astype(np.int32)
    row[TRUNCATED] = np.int32(sum(int(flag) for flag in packed[TRUNCATED]))
    return row


def pad_batch(batch: dict, rows: int) -> dict:
    """`batch` with all-padding rows appended up to `rows` (only the last batch of a finite stream is short)."""
    have = len(batch["tokens"])
    if have == rows:
        return batch
    return {key: np.concatenate([value, np.zeros((rows - have, *value.shape[1:]), value.dtype)])
            for key, value in batch.items()}
