"""The training data's config section (`cfg.data`): a plain dataclass (a leaf module)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class DataConfig:
    """Training/eval records with `input` (prompt, masked from the loss) and `output` (target) fields.

    `train_path`/`eval_path`: a .jsonl/.parquet/.array_record file, a directory or glob of them, or
    a TFDS array_record builder directory (format "tfds", split from `train_split`/`eval_split`).
    Without `eval_path`, `eval_rows` records are held out from the training data.
    `index_dir`: where the one-time index of the records (byte offsets and token counts, `data/index.py`)
    is kept; "" = the stage's directory (`RUN_DIR/STAGE/data_index`). Runs that share it index a file once.
    """

    train_path: str = ""
    eval_path: str = ""
    format: str = "auto"  # auto | jsonl | parquet | array_record | tfds
    train_split: str = "train"
    eval_split: str = "test"
    eval_rows: int = 0
    input_field: str = "input"
    output_field: str = "output"
    max_length: int = 2048
    pack: bool = True
    train_on_input: bool = False
    bad_records: str = "error"  # error | skip
    shuffle: bool = True
    num_workers: int = 0
    index_dir: str = ""
