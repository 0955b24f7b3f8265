"""`TrainData`: this process's stream of fixed-shape training batches, resumable from a JSON state.

Per epoch: one global record order (shuffled with seed + epoch) -> this process's blocks of it
(`process_positions`) -> tokenized -> packed (or padded) rows. Epochs follow each other (`EpochsIterDataset`), rows are batched, and worker
processes (optional) each build batches from every num_workers-th record of each epoch.
"""

from __future__ import annotations

import functools
import os

import grain
import numpy as np

from .epochs import EPOCH, EpochsIterDataset
from jz3_jax.errors import DataError
from .examples import encode_example
from .packing import (ROW_KEYS, TRUNCATED, example_features, pack_examples, packed_row_count, pad_batch,
                      pad_example)
from .sources import RecordSource

_STATE_VERSION = 1


def process_positions(num_records: int, rows_per_batch: int, process_index: int, process_count: int) -> np.ndarray:
    """Positions (in an epoch's global record order) that process `process_index` reads.

    The order is cut into blocks of `rows_per_batch`; process i takes blocks i, i + n, i + 2n, ...
    Without packing, global batch k is then exactly records [k*G, (k+1)*G) of the epoch's order
    (G = n * rows_per_batch) whatever the number of processes, so a run on 2 hosts sees the same
    batches as a run on 1; each process still reads only its own records.
    """
    positions = np.arange(num_records)
    return positions[(positions // rows_per_batch) % process_count == process_index]


class TrainData:
    """Batches for one process.

    Iterating yields dicts of [rows_per_batch, max_length] arrays: "tokens", "targets" (int32), "loss_mask"
    (float32), "segment_ids" (int32, 0 = padding, 1..n per example in a row) and "positions" (int32, restarting
    at 0 for each example). Every `iter()` starts a fresh iterator at the resume point (the start, or the last
    `set_state`); `get_state` describes the most recent iterator. With `num_epochs` set, the last batch is
    padded with empty rows. The stream is fixed by (records, seed, settings, num_workers): each worker packs
    its own slice, so a state only resumes under the same settings (checked; DataError otherwise).
    """

    def __init__(self, source: RecordSource, tokenizer, *, max_length: int, rows_per_batch: int, pack: bool,
                 train_on_input: bool, seed: int, shuffle: bool, process_index: int = 0, process_count: int = 1,
                 num_epochs: int | None = None, num_workers: int = 0) -> None:
        if max_length < 1 or rows_per_batch < 1:
            raise DataError(f"max_length ({max_length}) and rows_per_batch ({rows_per_batch}) must be positive")
        if not 0 <= process_index < process_count:
            raise DataError(f"process_index {process_index} is not in [0, {process_count})")
        if num_epochs is not None and num_epochs < 1:
            raise DataError(f"num_epochs must be positive or None (forever), got {num_epochs}")
        if tokenizer.eos_id is None:
            raise DataError(f"tokenizer from {getattr(tokenizer, 'source', tokenizer)} has no EOS token")
        path = getattr(source, "path", "the data")
        if len(source) == 0:
            raise DataError(f"no records in {path}")
        mine = process_positions(len(source), rows_per_batch, process_index, process_count)
        if len(mine) == 0:
            raise DataError(f"{path} has {len(source)} records: too few for process {process_index} "
                            f"of {process_count} to get any")
        self.source = source
        self.rows_per_batch = rows_per_batch
        self.max_length = max_length
        encode = functools.partial(_encode, tokenizer=tokenizer, max_length=max_length, train_on_input=train_on_input)
        self._rows = _EpochRows(source, mine, encode, max_length=max_length, rows_per_batch=rows_per_batch,
                                pack=pack, seed=seed, shuffle=shuffle)
        self._num_epochs, self._num_workers = num_epochs, num_workers
        self._fingerprint = {"records": len(source), "process_index": process_index, "process_count": process_count,
                             "seed": seed, "shuffle": shuffle, "pack": pack, "max_length": max_length,
                             "rows_per_batch": rows_per_batch, "train_on_input": train_on_input,
                             "num_epochs": num_epochs, "num_workers": num_workers}
        self._resume: dict | None = None
        self._iterator = None
        self._counts = {"examples_seen": 0, "truncated_examples": 0, "epoch": 0}
        self._rows_per_epoch: int | None = None

    # --- the pipeline --------------------------------------------------------------------------

    def _dataset(self) -> grain.IterDataset:
        rows = EpochsIterDataset(self._rows, self._num_epochs)
        batches = rows.batch(self.rows_per_batch, drop_remainder=False)
        batches = batches.map(functools.partial(pad_batch, rows=self.rows_per_batch))
        if self._num_workers > 0:
            _mark_absl_flags_parsed()
            batches = batches.mp_prefetch(grain.MultiprocessingOptions(num_workers=self._num_workers))
        return batches

    # --- iteration and state -------------------------------------------------------------------

    def __iter__(self):
        """A fresh iterator from the resume point; it replaces (and closes) the previous one."""
        self.close()
        iterator = iter(self._dataset())
        counts = {"examples_seen": 0, "truncated_examples": 0, "epoch": 0}
        if self._resume is not None:
            iterator.set_state(self._resume["pipeline"])
            counts = dict(self._resume["counts"])
        self._iterator, self._counts = iterator, counts
        return self._batches(iterator)

    def _batches(self, iterator):
        for batch in iterator:
            if iterator is not self._iterator:
                return  # replaced by a newer iter() or set_state
            self._counts["truncated_examples"] += int(batch.pop(TRUNCATED).sum())
            self._counts["epoch"] = int(batch.pop(EPOCH).max())
            self._counts["examples_seen"] += int(batch["segment_ids"].max(axis=1).sum())
            yield {key: batch[key] for key in ROW_KEYS}

    def get_state(self) -> dict:
        """JSON-serialisable position of the latest iterator (epoch, place in the epoch, counters)."""
        if self._iterator is None:
            return self._resume or {"version": _STATE_VERSION, "fingerprint": self._fingerprint,
                                    "pipeline": None, "counts": dict(self._counts), "epoch": 0}
        return {"version": _STATE_VERSION, "fingerprint": self._fingerprint, "pipeline": self._iterator.get_state(),
                "counts": dict(self._counts), "epoch": self._counts["epoch"]}

    def set_state(self, state: dict) -> None:
        """Resume from `state` (from `get_state`): the next `iter()` yields the batches that followed it."""
        if state.get("version") != _STATE_VERSION:
            raise DataError(f"data iterator state has version {state.get('version')}, expected {_STATE_VERSION}")
        changed = {key: (state["fingerprint"].get(key), value) for key, value in self._fingerprint.items()
                   if state["fingerprint"].get(key) != value}
        if changed:
            detail = ", ".join(f"{key} {old} -> {new}" for key, (old, new) in changed.items())
            raise DataError(f"cannot resume the data iterator of {self.source.path}: settings changed ({detail})")
        self.close()
        self._resume = state if state["pipeline"] is not None else None
        self._counts = dict(state["counts"])

    def close(self) -> None:
        """Stop the current iterator (and its worker processes, if any)."""
        if self._iterator is not None:
            self._iterator.close()
            self._iterator = None

    # --- sizes and counters ----------------------------------------------------------------------

    def stats(self) -> dict:
        """Counters of the latest iterator: skipped records, truncated examples, examples seen, epoch."""
        return {"skipped_records": int(getattr(self.source, "skipped", 0)),
                "truncated_examples": self._counts["truncated_examples"],
                "examples_seen": self._counts["examples_seen"], "epoch": self._counts["epoch"]}

    def rows_per_epoch(self) -> int:
        """Rows one epoch of this process yields (epoch 0; packing makes later epochs differ by a few rows).

        Follows the pipeline on the examples' token counts: the same records in the same order, each
        worker's slice on its own, the packer's first-fit rule (`packed_row_count`). The counts come
        from the source's index (`RecordSource.id_counts`: no record is read), or else from tokenizing
        this process's records once. Cached.
        """
        if self._rows_per_epoch is None:
            workers = self._num_workers if self._num_workers > 1 else 1
            slices = [None] if workers == 1 else [slice(w, None, workers) for w in range(workers)]
            total = 0
            for worker_slice in slices:
                lengths = self._example_lengths(worker_slice)
                total += (packed_row_count(lengths, max_length=self.max_length, num_bins=self.rows_per_batch)
                          if self._rows.pack else len(lengths))
            self._rows_per_epoch = total
        return self._rows_per_epoch

    def _example_lengths(self, worker_slice: slice | None) -> np.ndarray:
        """Token counts of the examples epoch 0 of this process (or of one worker's slice) packs, in order."""
        records = self._rows.records(0)
        if worker_slice is not None:
            records = records[worker_slice]
        counts = self.source.id_counts
        if counts is not None:
            lengths = np.minimum(counts[records], self.max_length + 1) - 1  # truncated as `encode_example` does
        else:
            encode = self._rows.encode
            lengths = np.fromiter((len(encode(self.source[int(i)])["tokens"]) for i in records), np.int64,
                                  len(records))
        return lengths[lengths > 0]

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass


class _EpochRows:
    """rows(epoch, worker_slice): one epoch's rows, or None if empty. Picklable for grain's worker processes."""

    def __init__(self, source, positions: np.ndarray, encode, *, max_length: int, rows_per_batch: int,
                 pack: bool, seed: int, shuffle: bool) -> None:
        self.source, self.positions, self.encode = source, positions, encode
        self.max_length, self.rows_per_batch, self.pack = max_length, rows_per_batch, pack
        self.seed, self.shuffle = seed, shuffle

    def records(self, epoch: int) -> np.ndarray:
        """The source indices of the records this process reads in `epoch`, in order."""
        if not self.shuffle:
            return self.positions
        # one global order per epoch; this process reads its positions of it
        return np.random.default_rng((self.seed + epoch) % 2**32).permutation(len(self.source))[self.positions]

    def __call__(self, epoch: int, worker_slice: slice | None) -> grain.IterDataset | None:
        records = grain.MapDataset.source(self.source.select(self.records(epoch)))
        if worker_slice is not None:
            records = records[worker_slice]
        if len(records) == 0:
            return None
        examples = records.map(self.encode).filter(_has_tokens)
        if not self.pack:
            examples = examples.map(functools.partial(pad_example, max_length=self.max_length))
        # A few reader threads overlap tokenization with the training step; the order stays deterministic.
        rows = examples.to_iter_dataset(grain.ReadOptions(num_threads=min(4, os.cpu_count() or 1),
                                                          prefetch_buffer_size=64))
        if self.pack:
            rows = pack_examples(rows, max_length=self.max_length, num_bins=self.rows_per_batch)
        return rows


def _encode(record: dict, *, tokenizer, max_length: int, train_on_input: bool) -> dict:
    return example_features(encode_example(record, tokenizer, max_length=max_length, train_on_input=train_on_input))


def _has_tokens(features: dict) -> bool:
    return len(features["tokens"]) > 0


def _mark_absl_flags_parsed() -> None:
    # grain's worker processes read absl flags; outside an absl app they are unparsed and raise.
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
