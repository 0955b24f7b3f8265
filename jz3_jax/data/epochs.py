"""Epochs one after another, each a complete pipeline of its own.

Why not grain's own: `MapDataset.shuffle(seed).repeat()` reshuffles each epoch, but a packer downstream
then mixes the tail of one epoch with the head of the next, so an epoch has no row count and no boundary.
grain has no IterDataset concatenation except `InterleaveIterDataset(cycle_length=1)`, which prefetches
iterators in threads and keeps int-keyed dicts in its state (not plain JSON). This is that concatenation.
"""

from __future__ import annotations

from collections.abc import Callable

import grain
import numpy as np

EPOCH = "_epoch"
# make_epoch(epoch, worker_slice) -> the epoch's rows, or None when that (slice of the) epoch is empty.
EpochFactory = Callable[[int, "slice | None"], "grain.IterDataset | None"]


class EpochsIterDataset(grain.IterDataset):
    """Rows of epoch 0, then epoch 1, ... (`num_epochs` of them, or forever when None); each row gets "_epoch"."""

    def __init__(self, make_epoch: EpochFactory, num_epochs: int | None) -> None:
        super().__init__()
        self._make_epoch = make_epoch
        self._num_epochs = num_epochs
        self._slice: slice | None = None

    def set_slice(self, sl: slice, sequential_slice: bool = False) -> None:
        """Called by grain in each worker process: this worker reads records `sl` of every epoch."""
        del sequential_slice
        self._slice = sl

    def __iter__(self) -> _EpochsIterator:
        return _EpochsIterator(self._make_epoch, self._num_epochs, self._slice)

    def __str__(self) -> str:
        return f"EpochsIterDataset(num_epochs={self._num_epochs})"


class _EpochsIterator(grain.DatasetIterator):
    def __init__(self, make_epoch: EpochFactory, num_epochs: int | None, worker_slice: slice | None) -> None:
        super().__init__()
        self._make_epoch = make_epoch
        self._num_epochs = num_epochs
        self._slice = worker_slice
        self._epoch = 0
        self._inner = None

    def _open(self) -> bool:
        """Start the current epoch's iterator; False when the epoch has no rows (this worker's slice is empty)."""
        dataset = self._make_epoch(self._epoch, self._slice)
        self._inner = iter(dataset) if dataset is not None else None
        return self._inner is not None

    def _finished(self) -> bool:
        return self._num_epochs is not None and self._epoch >= self._num_epochs

    def __next__(self) -> dict:
        while not self._finished():
            if self._inner is None and not self._open():
                break  # every epoch of an empty slice is empty: stop rather than loop forever
            try:
                row = next(self._inner)
            except StopIteration:
                self._close_inner()
                self._epoch += 1
                continue
            return {**row, EPOCH: np.int32(self._epoch)}
        raise StopIteration

    def get_state(self) -> dict:
        return {"epoch": self._epoch, "inner": self._inner.get_state() if self._inner is not None else None}

    def set_state(self, state: dict) -> None:
        self._close_inner()
        self._epoch = int(state["epoch"])
        if state["inner"] is not None and not self._finished() and self._open():
            self._inner.set_state(state["inner"])

    def _close_inner(self) -> None:
        if self._inner is not None:
            self._inner.close()
            self._inner = None

    def close(self) -> None:
        self._close_inner()
        super().close()
