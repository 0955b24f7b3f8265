"""Test-set decontamination: word n-gram overlap with evaluation questions.

Every evaluation set is a `NAME/test.jsonl` under one directory. Its question text is the join of
the configured fields a row has (see `synth.config.DEFAULT_EVAL_FIELDS`). Texts are normalised with
`text.normalize` (the same function applied to the synthetic records), and every n-gram of words is
hashed into one table mapping hash -> the sets that contain it. A question shorter than n words has
no n-gram: it matches a synthetic problem that equals it after normalisation.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from jz3_jax.errors import FilterError
from jz3_jax.records.jsonl import read_lines
from jz3_jax.synth.text import WordHasher, ngram_hashes, whole_hash, words


@dataclasses.dataclass(frozen=True)
class Match:
    """Why a record is contaminated."""

    set: str  # the evaluation set with the most matching n-grams (ties: first by name)
    sets: list[str]  # every evaluation set matched
    ngrams: int  # matching n-grams (0: the problem equals a short evaluation question)
    example: str  # the first matching n-gram (normalised words), for auditing


class EvalIndex:
    """Hashed word n-grams of evaluation questions, to test synthetic records against."""

    def __init__(self, n: int, hasher: WordHasher | None = None) -> None:
        self.n = n
        self.hasher = hasher or WordHasher()
        self.names: list[str] = []
        self.stats: dict[str, dict] = {}
        self._grams: dict[int, int] = {}  # n-gram hash -> bit mask of set indices
        self._short: dict[int, int] = {}  # whole-question hash (< n words) -> bit mask

    @classmethod
    def from_dir(cls, eval_dir: str | Path, fields: list[str], n: int, hasher: WordHasher | None = None) -> "EvalIndex":
        """Index every `eval_dir/NAME/test.jsonl`; FilterError when there is none or a line is bad."""
        root = Path(eval_dir)
        if not root.is_dir():
            raise FilterError(f"filter.eval_dir {str(eval_dir)!r} is not a directory")
        files = sorted(root.glob("*/test.jsonl"))
        if not files:
            raise FilterError(f"filter.eval_dir {str(eval_dir)!r} has no NAME/test.jsonl evaluation sets")
        index = cls(n, hasher)
        for path in files:
            index.add(path.parent.name, _questions(path, fields))
        return index

    def add(self, name: str, questions: list[str]) -> None:
        """Index the questions of evaluation set `name`."""
        bit = 1 << len(self.names)
        self.names.append(name)
        grams, short, counts = self._grams, self._short, {"empty": 0, "short": 0}
        for question in questions:
            values = self.hasher(words(question))
            if len(values) == 0:
                counts["empty"] += 1
            elif len(values) < self.n:
                counts["short"] += 1
                key = whole_hash(values)
                short[key] = short.get(key, 0) | bit
            else:
                for h in ngram_hashes(values, self.n).tolist():
                    grams[h] = grams.get(h, 0) | bit
        self.stats[name] = {"questions": len(questions), "short_questions": counts["short"],
                            "empty_questions": counts["empty"]}

    def match(self, problem: list[str], solution: list[str]) -> Match | None:
        """Test a record given the normalised words (`text.words`) of its problem and its solution."""
        counts: dict[int, int] = {}
        example = ""
        grams = self._grams
        for text in (problem, solution):
            hashes = ngram_hashes(self.hasher(text), self.n).tolist()
            if grams.keys().isdisjoint(hashes):  # the common case (no overlap) stays in C
                continue
            for position, h in enumerate(hashes):
                mask = grams.get(h, 0)
                if mask and not example:
                    example = " ".join(text[position:position + self.n])
                for i in _bits(mask):
                    counts[i] = counts.get(i, 0) + 1
        if 0 < len(problem) < self.n:
            mask = self._short.get(whole_hash(self.hasher(problem)), 0)
            if mask and not example:
                example = " ".join(problem)
            for i in _bits(mask):
                counts.setdefault(i, 0)
        if not counts:
            return None
        best = max(counts, key=lambda i: (counts[i], -i))
        return Match(self.names[best], sorted(self.names[i] for i in counts), counts[best], example)

    def __len__(self) -> int:
        return len(self._grams) + len(self._short)


def _bits(mask: int):
    i = 0
    while mask:
        if mask & 1:
            yield i
        mask >>= 1
        i += 1


def _questions(path: Path, fields: list[str]) -> list[str]:
    return [" ".join(row[k] for k in fields if isinstance(row.get(k), str) and row[k].strip())
            for row in (line.record for line in read_lines(path, error=FilterError))]
