"""The `bench` stage's config section (`cfg.bench`): a plain dataclass (a leaf module)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class BenchConfig:
    """`bench` stage: which kind, its shapes, and how many timed repeats."""

    kind: str = "forward"  # forward | train | decode | influence | synthesis
    batch: int = 8
    seq_len: int = 256
    new_tokens: int = 128  # decode: tokens generated per request
    prompt_len: int = 32  # decode: prompt tokens per request
    warmup: int = 2
    repeats: int = 5
    reference: bool = True  # also time the transformers/PyTorch reference where one exists
    # synthesis: the paged vs the contiguous engine on prompts rendered from the shipped corpus;
    # `batch` is the contiguous engine's rows (the paged one gets the same cache bytes), the cap on a
    # request's new tokens is sampling.max_new_tokens
    requests: int = 96  # prompts in the workload
    level: str = "high_school"  # the education level of every prompt (one shared template)
    length_spread: float = 4.0  # the cap / the mean of the requests' max_new_tokens (exponential draws)
