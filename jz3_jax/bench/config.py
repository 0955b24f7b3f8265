"""The `bench` stage's config section (`cfg.bench`): a plain dataclass (a leaf module)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class BenchConfig:
    """`bench` stage: which kind, its shapes, and how many timed repeats."""

    kind: str = "forward"  # forward | train | decode | influence
    batch: int = 8
    seq_len: int = 256
    new_tokens: int = 128  # decode: tokens generated per request
    prompt_len: int = 32  # decode: prompt tokens per request
    warmup: int = 2
    repeats: int = 5
    reference: bool = True  # also time the transformers/PyTorch reference where one exists
