"""Tokenize one record into a shifted training example with its loss mask."""

from __future__ import annotations

import dataclasses

import numpy as np

from .readers import Record


@dataclasses.dataclass
class Example:
    """One training example, already shifted for next-token prediction.

    For ids = [bos] + enc(input) + enc(output) + [eos] ([bos] where the tokenizer adds one): tokens = ids[:-1], targets = ids[1:], and loss_mask
    is 1 where the target is an output token or the final eos (every target with train_on_input).
    `truncated` tells that ids were cut to max_length + 1 (so tokens fit max_length).
    """

    tokens: np.ndarray  # int32 [n]
    targets: np.ndarray  # int32 [n]
    loss_mask: np.ndarray  # float32 [n]
    truncated: bool = False

    def __len__(self) -> int:
        return len(self.tokens)


def encode_example(record: Record, tokenizer, *, max_length: int, train_on_input: bool = False) -> Example:
    """The `Example` for `record` ({"input", "output"} strings); at most `max_length` tokens.

    BOS comes first only where the tokenizer itself adds one (`tokenizer.adds_bos`), as for the raw
    prompts of synthesis, serving and evaluation; an example with fewer than two ids has no tokens.
    """
    prompt = tokenizer.encode(record["input"])
    answer = tokenizer.encode(record["output"])
    head = [tokenizer.bos_id] if tokenizer.adds_bos else []
    ids = np.asarray(head + prompt + answer + [tokenizer.eos_id], dtype=np.int32)
    answer_start = len(head) + len(prompt)  # index in ids of the first output id (or the eos)
    truncated = len(ids) > max_length + 1
    ids = ids[: max_length + 1]
    if len(ids) < 2:
        empty = np.zeros(0, np.int32)
        return Example(empty, empty, np.zeros(0, np.float32), truncated)
    if train_on_input:
        mask = np.ones(len(ids) - 1, np.float32)
    else:
        # targets[i] = ids[i + 1], an output id (or the eos) when i + 1 >= answer_start.
        mask = (np.arange(1, len(ids)) >= answer_start).astype(np.float32)
    return Example(ids[:-1], ids[1:], mask, truncated)
