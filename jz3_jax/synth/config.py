"""The synth stages' config sections (`cfg.synthesize`, `cfg.filter`): plain dataclasses (a leaf module).

Its project imports are leaves: the prompt plan's section (`jz3_jax.prompts.config`) and the error
class raised by `FilterConfig.validate`.
"""

from __future__ import annotations

import dataclasses

from jz3_jax.errors import FilterError
from jz3_jax.prompts.config import PromptPlanConfig



@dataclasses.dataclass
class SynthesizeConfig(PromptPlanConfig):
    """`synthesize` stage: prompts jsonl (`id`, `prompt`) in, completion shards out.

    With `prompts` empty, the prompts are rendered from snippet records with the prompt library and
    the same keys as distill (`PromptPlanConfig`: `snippets` "" = RUN_DIR/corpus/snippets.jsonl,
    `levels`, `level_policy`, `kinds`, `source_levels`, `source_kinds`).
    With `chat_template` the prompt is sent as one user message through the tokenizer's chat
    template; `shard_size` completions are written per shard file (atomically).
    """

    prompts: str = ""
    chat_template: bool = True
    shard_size: int = 256

# Question-text fields of the evaluation sets (see ../shared/data/eval/MANIFEST.json); the ones a row
# has are joined in this order, so context comes before the question (ASDiv body + question, SVAMP
# Body + Question, AGIEval passage + question): gsm8k, aqua, mmlu_stem, sat_math, tabmwp: question;
# math_oai, minerva_math: problem; gsm_hard, mawps: input; carp_en: content.
DEFAULT_EVAL_FIELDS = ["passage", "body", "Body", "content", "problem", "question", "Question", "input"]


@dataclasses.dataclass
class FilterConfig:
    """`filter` stage: parse completions, drop truncated/malformed ones, decontaminate, deduplicate.

    `inputs`: a completion .jsonl file, a directory of them or a glob; empty = the synthesize
    stage's shards, `RUN_DIR/synthesize/completions/*.jsonl`.
    `eval_dir`: a directory of `NAME/test.jsonl` evaluation sets (e.g. ../shared/data/eval); required
    while `decontaminate` is on. A record is contaminated when its problem or solution shares a
    normalised `ngram`-word sequence with an evaluation question, or its problem equals (normalised) an
    evaluation question shorter than `ngram` words. `eval_fields`: the question-text fields of an
    evaluation row (all present ones are joined in order).
    Near duplicates: MinHash (`num_perm` permutations, seed `minhash_seed`) over `shingle`-word shingles
    of the normalised problem, LSH candidates verified by exact Jaccard >= `near_dup_threshold`.
    `bucket_cap`: at most this many earlier members of an LSH bucket are checked against a problem
    (the bucket's first ones and the ones just before it, by record order), so large families of
    similar problems cost time linear in their size. `rows_per_pass`: the most rows one process
    joins in memory at a time (at most about 64 bytes each); more rows take more passes over the spools.
    """

    inputs: str = ""
    eval_dir: str = ""
    decontaminate: bool = True
    eval_fields: list[str] = dataclasses.field(default_factory=lambda: list(DEFAULT_EVAL_FIELDS))
    ngram: int = 13
    near_dup_threshold: float = 0.8
    num_perm: int = 128
    shingle: int = 5
    minhash_seed: int = 0
    bucket_cap: int = 8
    rows_per_pass: int = 1_000_000

    def validate(self) -> None:
        """Raise FilterError naming the `filter.*` key whose value cannot work."""
        if self.ngram < 1:
            raise FilterError(f"filter.ngram must be >= 1, got {self.ngram}")
        if self.shingle < 1:
            raise FilterError(f"filter.shingle must be >= 1, got {self.shingle}")
        if self.num_perm < 1:
            raise FilterError(f"filter.num_perm must be >= 1, got {self.num_perm}")
        if self.bucket_cap < 1:
            raise FilterError(f"filter.bucket_cap must be >= 1, got {self.bucket_cap}")
        if self.rows_per_pass < 1:
            raise FilterError(f"filter.rows_per_pass must be >= 1, got {self.rows_per_pass}")
        if not 0.0 < self.near_dup_threshold <= 1.0:
            raise FilterError(f"filter.near_dup_threshold must be in (0, 1], got {self.near_dup_threshold}")
        if self.decontaminate and not self.eval_dir:
            raise FilterError("filter.eval_dir is empty but filter.decontaminate is on: set filter.eval_dir to a "
                              "directory of NAME/test.jsonl evaluation sets (e.g. ../shared/data/eval), or set "
                              "filter.decontaminate=false")
        if self.decontaminate and not self.eval_fields:
            raise FilterError("filter.eval_fields is empty: list the evaluation rows' question-text fields")
