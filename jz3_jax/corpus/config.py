"""The `corpus` section (a leaf module: dataclasses only)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class CorpusConfig:
    """`corpus` stage: math texts in, snippets of at most `max_chars` characters out.

    `sources`: paths, folders or globs of .jsonl / .parquet / .md / .tex / .txt files, or
    `hf:NAME[:CONFIG][:SPLIT]` (a Hugging Face dataset, needs `datasets` and a network) or
    `tfds:BUILDER_DIR[:SPLIT]` (a TFDS array_record builder directory); each optionally `=WEIGHT`
    (relative sampling weight, default 1; 0 leaves the source out). A source's tag is the folder
    name, the file name without extension, or the dataset name.
    Records (jsonl / parquet / datasets) give their text in the first present `text_fields`, or a
    question and an answer (first present of `question_fields` / `answer_fields`) joined.
    Snippets shorter than `min_chars` are dropped; `max_snippets` (0 = all) are drawn by weight with
    the run's seed. `bad_records`: "error" (stop, naming file and line) or "skip" (count them).
    """

    sources: list[str] = dataclasses.field(default_factory=list)
    max_chars: int = 1000
    min_chars: int = 20
    max_snippets: int = 0
    bad_records: str = "error"
    text_fields: list[str] = dataclasses.field(default_factory=lambda: ["text", "content"])
    question_fields: list[str] = dataclasses.field(default_factory=lambda: ["question", "problem", "input"])
    answer_fields: list[str] = dataclasses.field(default_factory=lambda: ["answer", "solution", "output"])
