"""Multiple-choice items: which option a solution chooses.

`strict`: the option the solution states as its answer (a boxed letter, "the answer is (C)",
"Answer: C", a generation that is just "C" or "(C) 29"), else the option whose text equals the
stated answer; an option only mentioned along the way is never taken. `paper`: the harness's
rule (its phrases, then the last option letter mentioned anywhere).
"""

from __future__ import annotations

import re

from jz3_jax.eval.grader import paper
from jz3_jax.eval.grader.equivalence import answers_equivalent
from jz3_jax.eval.grader.extract import extract
from jz3_jax.eval.grader.normalize import clean

LETTERS = "ABCDEFGHIJ"


def gold_letter(gold: str) -> str:
    """A gold option as its bare letter: `C`, `(C)`, `c` and `C)` are all `C`."""
    return gold.strip().strip("()").strip().upper()


def _letter_in(answer: str, letters: str) -> str:
    """The option letter an answer string names (`C`, `(C)`, `c`, `\\text{(C)}`, `C) 29`, `option C`),
    or "" (also for a hedge such as `(C) or (D)`)."""
    s = clean(answer).text.strip().strip("*").strip()
    s = re.sub(r"^(?:option|choice)\s+", "", s, flags=re.IGNORECASE)
    if re.fullmatch(rf"\(?[{letters.lower()}]\)?", s):  # a lone lower-case letter: "the answer is c."
        return s.strip("()").upper()
    named = re.findall(rf"(?<![A-Za-z])\(?([{letters}])\)?(?![A-Za-z])", s)
    if len(set(named)) > 1 and re.search(r"\bor\b", s):
        return ""
    match = re.match(rf"^\(?([{letters}])\)?(?:$|[\s.:)])", s)
    return match.group(1) if match else ""


def strict_choice(text: str, choices: list[str]) -> str:
    """The option letter the solution chooses under the strict policy ("" when it states none)."""
    letters = LETTERS[: len(choices)]
    answer = extract(text).answer
    letter = _letter_in(answer, letters)
    if letter:
        return letter
    chosen = re.findall(rf"\b(?:is|choose|select|pick|correct)\s*:?\s+(?:option|choice)\s+\(?([{letters}])\)?"
                        rf"(?![A-Za-z])", text, re.IGNORECASE)
    if chosen:  # "which is option C"; an option only checked along the way is never taken
        return chosen[-1].upper()
    if answer:
        for i, choice in enumerate(choices):
            text_of_option = re.sub(rf"^\(?[{letters}]\)\s*", "", choice.strip())  # "A) 40" or "(A) 40"
            if answers_equivalent(text_of_option, answer)[0]:
                return letters[i]
    return ""


def paper_choice(text: str, choices: list[str]) -> str:
    """The harness's option letter: its phrases, then the last letter mentioned; an answer equal to
    an option's text counts as its letter."""
    letters = LETTERS[: len(choices)]
    letter = paper.extract_choice(text, letters)
    if letter:
        return letter
    answer = paper.normalize_answer(paper.extract_answer(text))
    for i, choice in enumerate(choices):
        if answer and answer == paper.normalize_answer(choice):
            return letters[i]
    return ""
