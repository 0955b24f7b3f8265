"""The small data sets this project writes and ships with the package (`jz3_jax/pipeline/data/`).

- `corpus.jsonl`: 24 short math texts (`source`, `text`): a corpus source, or snippets as they are;
- `targets.jsonl`: 6 target examples (`task`, `input`, `output`) for `select`;
- `seed_kd.jsonl`: 12 distill prompts with the project's own answers in the teacher's format (the
  demo merges them into its KD set, since a 135M local teacher rarely writes a well-formed answer);
- `sft_mix.jsonl`: 12 question/solution records appended to the demo's pre-training data (the paper
  appends its SFT mix);
- `tiny_train.jsonl`: short `input`/`output` pairs for the tiny config's training stages;
- `tiny_completions.jsonl`: synthesize-format completions for `filter` (good ones and one per removal reason);
- `eval_sets/jz3_mini/test.jsonl`: the shipped jz3_mini problems in `filter.eval_dir`'s layout.
"""

from __future__ import annotations

import importlib.resources

NAMES = ("corpus.jsonl", "targets.jsonl", "seed_kd.jsonl", "sft_mix.jsonl", "tiny_train.jsonl",
         "tiny_completions.jsonl", "eval_sets")


def data_path(name: str) -> str:
    """The file system path of one shipped data file or folder (see `NAMES`)."""
    if name not in NAMES:
        raise KeyError(f"no shipped data {name!r}; known: {', '.join(NAMES)}")
    return str(importlib.resources.files("jz3_jax.pipeline") / "data" / name)
