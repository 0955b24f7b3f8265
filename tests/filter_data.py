"""Generated completion files for the `filter` tests: planted removals and templated problem families.

`planted(...)` writes completions of about 2,400 characters (a problem of 60-110 words and a long
solution) whose problems are pairwise unrelated (random words from a large vocabulary), plus planted
records that must be removed, each with its reason: exact duplicates (an earlier problem re-cased and
re-spaced, another solution), near duplicates (an earlier problem with one number changed: Jaccard of
5-word shingles >= 0.83 at these lengths), contaminated problems (an evaluation question inside),
truncated completions and malformed ones. It returns what the stage must remove.

`templated(...)` writes problem families: each family is one template with three number slots; its
members differ in those numbers (every pair in at least 2 of them, so pairs stay under the 0.8
threshold), and all of them must be kept.

Both are deterministic in their seed. Run as a script to write a data set for measurements:
`python tests/filter_data.py planted 40000 OUT_DIR` (or `templated 10000 OUT_DIR`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

_SYLLABLES = ["ba", "co", "di", "fe", "ga", "hu", "ki", "lo", "ma", "ne", "po", "ra", "si", "tu", "ve", "zo",
              "bri", "cla", "dro", "fla", "gro", "ple", "sta", "tri"]
PLANTED_RATES = {"exact_duplicate": 0.02, "near_duplicate": 0.02, "contaminated": 0.01, "truncated": 0.01,
                 "malformed": 0.01}


def vocabulary(rng: np.random.Generator, size: int) -> np.ndarray:
    """`size` distinct pseudo-words of 2-4 syllables."""
    seen: dict[str, None] = {}
    while len(seen) < size:
        parts = rng.integers(0, len(_SYLLABLES), size=(size, 4))
        lengths = rng.integers(2, 5, size=size)
        for row, n in zip(parts, lengths):
            seen.setdefault("".join(_SYLLABLES[i] for i in row[:n]), None)
            if len(seen) == size:
                break
    return np.array(list(seen), dtype=object)


def _text(rng: np.random.Generator, vocab: np.ndarray, n_words: int) -> list[str]:
    """`n_words` tokens: words of skewed frequency with about one number in seven."""
    ranks = (len(vocab) * rng.random(n_words) ** 2.5).astype(np.int64)  # skewed: frequent words repeat
    tokens = list(vocab[ranks])
    for pos in np.flatnonzero(rng.random(n_words) < 0.14):
        tokens[pos] = str(int(rng.integers(2, 100_000)))
    return tokens


def _problem(tokens: list[str]) -> str:
    return " ".join(tokens).capitalize() + "?"


def _solution(rng: np.random.Generator, vocab: np.ndarray, chars: int) -> str:
    tokens = _text(rng, vocab, chars // 9)
    lines = [" ".join(tokens[i:i + 14]) + "." for i in range(0, len(tokens), 14)]
    return "\n".join(lines) + f"\nThe answer is $\\boxed{{{int(rng.integers(1, 1000))}}}$."


def _completion(problem: str, solution: str) -> str:
    return f"## Problem\n{problem}\n\n## Solution\n{solution}"


def eval_dir(root: Path, seed: int = 1, questions: int = 200) -> tuple[Path, list[str]]:
    """A tiny evaluation directory `root/gen_eval/test.jsonl` (its own vocabulary); (root, questions)."""
    rng = np.random.default_rng(seed)
    vocab = np.array([f"q{w}" for w in vocabulary(rng, 2000)], dtype=object)
    texts = [" ".join(_text(rng, vocab, int(rng.integers(20, 35)))) + "?" for _ in range(questions)]
    (root / "gen_eval").mkdir(parents=True, exist_ok=True)
    (root / "gen_eval" / "test.jsonl").write_text("".join(json.dumps({"question": q}) + "\n" for q in texts))
    return root, texts


def planted(path: Path, n: int, eval_questions: list[str], seed: int = 0, solution_chars: int = 1700,
            rates: dict[str, float] | None = None) -> dict[str, dict]:
    """Write `n` completions to `path`; returns {id: {"reason": ..., ["duplicate_of": id]}} of the
    planted records (every other record must be kept)."""
    rates = rates or PLANTED_RATES
    rng = np.random.default_rng(seed)
    vocab = vocabulary(rng, 20_000)
    reasons, cumulative = list(rates), np.cumsum(list(rates.values()))
    base: list[tuple[str, list[str]]] = []  # kept records: (id, problem tokens)
    expected: dict[str, dict] = {}
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for i in range(n):
            rid, finish = f"r{i}", "stop"
            pick = int(np.searchsorted(cumulative, rng.random(), side="right")) if len(base) >= 10 else len(reasons)
            reason = reasons[pick] if pick < len(reasons) else None
            solution = _solution(rng, vocab, solution_chars)
            if reason == "exact_duplicate":
                source, tokens = base[int(rng.integers(len(base)))]
                problem = "  " + _problem(tokens).upper().replace(" ", " \n ", 3) + " "
                expected[rid] = {"reason": reason, "duplicate_of": source}
            elif reason == "near_duplicate":
                source, tokens = base[int(rng.integers(len(base)))]
                tokens = list(tokens)
                numbers = [k for k, t in enumerate(tokens) if t.isdigit()] or [len(tokens) // 2]
                k = numbers[int(rng.integers(len(numbers)))]
                tokens[k] = str(100_000 + int(rng.integers(1, 100_000)))
                problem = _problem(tokens)
                expected[rid] = {"reason": reason, "duplicate_of": source}
            elif reason == "contaminated":
                question = eval_questions[int(rng.integers(len(eval_questions)))]
                problem = _problem(_text(rng, vocab, 20)) + " " + question + " " + _problem(_text(rng, vocab, 15))
                expected[rid] = {"reason": reason}
            else:
                tokens = _text(rng, vocab, int(rng.integers(60, 111)))
                problem = _problem(tokens)
                if reason is None:
                    base.append((rid, tokens))
                else:
                    expected[rid] = {"reason": reason}
                    finish = "length" if reason == "truncated" else "stop"
            text = _completion(problem, solution)
            if reason == "malformed":
                text = text.replace("## Solution\n", "Solution:\n") if i % 2 else _completion("", solution)
            f.write(json.dumps({"id": rid, "completion": text, "finish_reason": finish}) + "\n")
    return expected


def templated(path: Path, n: int, families: int = 50, seed: int = 0, solution_chars: int = 400) -> None:
    """Write `n` completions from `families` templates of about 70 words with 3 number slots (all to be kept)."""
    rng = np.random.default_rng(seed)
    vocab = vocabulary(rng, 20_000)
    templates = []
    for _ in range(families):
        tokens = [t for t in _text(rng, vocab, 70) if not t.isdigit()]
        tokens += list(vocab[rng.integers(0, len(vocab), size=70 - len(tokens))])
        templates.append((tokens, [8, 33, 58]))  # slots 25 words apart: each changes 5 shingles
    used: list[set[tuple[int, int]]] = [set() for _ in range(families)]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for i in range(n):
            family = i % families
            tokens, slots = templates[family]
            tokens = list(tokens)
            while True:  # no two members share two slot values (they differ in >= 2 numbers)
                values = [int(v) for v in rng.integers(1, 1_000_000, size=len(slots))]
                pairs = {(a * 3 + b, values[a] * 1_000_003 + values[b]) for a in range(3) for b in range(3) if a < b}
                if not pairs & used[family]:
                    used[family] |= pairs
                    break
            for slot, value in zip(slots, values):
                tokens[slot] = str(value)
            text = _completion(_problem(tokens), _solution(rng, vocab, solution_chars))
            f.write(json.dumps({"id": f"t{i}", "completion": text, "finish_reason": "stop"}) + "\n")


if __name__ == "__main__":
    kind, count, out = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    if kind == "planted":
        root, questions = eval_dir(out / "eval")
        truth = planted(out / "completions.jsonl", count, questions)
        (out / "expected.json").write_text(json.dumps(truth))
    else:
        templated(out / "completions.jsonl", count)
