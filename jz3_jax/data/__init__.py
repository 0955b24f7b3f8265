"""Training data for the `sft` and `pretrain` stages: records -> tokenized, masked examples -> packed batches.

    source = read_records("data/train.jsonl")              # or .parquet / .array_record / a dir / a TFDS dir
    source = read_records("data/train.jsonl", index=TokenIndex("idx", tokenizer))  # offsets + id counts, built once
    data = TrainData(source, tokenizer, max_length=2048, rows_per_batch=8, pack=True, train_on_input=False,
                     seed=0, shuffle=True, process_index=i, process_count=n)
    for batch in data: ...                                 # dicts of [rows, max_length] arrays
    state = data.get_state()                               # JSON; TrainData(...).set_state(state) resumes
"""

from typing import TYPE_CHECKING

from jz3_jax.lazy import lazy_exports

# Public name -> the module that defines it (imported lazily, see `__getattr__`).
_EXPORTS = {
    "DataError": "jz3_jax.errors",
    "Example": ".examples",
    "encode_example": ".examples",
    "TrainData": ".pipeline",
    "process_positions": ".pipeline",
    "RecordSource": ".sources",
    "hold_out": ".sources",
    "read_records": ".sources",
    "list_files": ".sources",
    "TokenIndex": ".index",
}

if TYPE_CHECKING:
    from .errors import DataError
    from .examples import Example, encode_example
    from .pipeline import TrainData, process_positions
    from .index import TokenIndex
    from .sources import RecordSource, hold_out, list_files, read_records

__all__ = [
    "DataError",
    "Example",
    "RecordSource",
    "TokenIndex",
    "TrainData",
    "encode_example",
    "hold_out",
    "list_files",
    "read_records",
    "process_positions",
]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
