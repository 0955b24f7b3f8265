"""The prompt texts: one instruction per education stage, for natural-language (cot) and tool answers.

Every prompt has the same shape: who the problem is for, guidelines for the problem and for the
solution, the answer format, then the math text (the snippet, inserted verbatim) and a closing
`## Problem` header that the teacher (or the synthesizer) continues from. The answer format is the
one `jz3_jax.synth.parse` reads: the problem, then `## Solution` (cot) or `## Code Solution` with a
Python block whose printed result leads to a `\\boxed{}` answer (tool).

Snippets are joined in by concatenation, never by `str.format`, so braces, backslashes and
`{}` placeholders in a snippet reach the prompt unchanged.
"""

from __future__ import annotations

import dataclasses

from jz3_jax.prompts.config import KINDS, LEVELS
PROBLEM_HEADER = "## Problem"
SOLUTION_HEADERS = {"cot": "## Solution", "tool": "## Code Solution"}


@dataclasses.dataclass(frozen=True)
class Level:
    """What changes between education stages: the audience, the kind of problem, the solution's depth."""

    audience: str
    problem: str
    solution: str
    words: str  # length of the solution, in words


_LEVELS: dict[str, Level] = {
    "grade_school": Level(
        "a pupil in the last years of primary school",
        "a short word problem about an everyday situation that needs two to four steps of arithmetic "
        "(whole numbers, simple fractions, money, time, lengths); no algebra",
        "explain each step in plain sentences a ten-year-old can follow, writing out every calculation",
        "150-250"),
    "middle_school": Level(
        "a student aged 11 to 14",
        "a problem on ratios, percentages, negative numbers, simple equations, basic geometry or "
        "elementary probability, set in a concrete context",
        "state what is known, set up the calculation or equation, and solve it step by step",
        "200-300"),
    "high_school": Level(
        "a secondary-school student preparing for final exams",
        "a problem on algebra, functions, trigonometry, sequences, coordinate geometry, counting or "
        "probability that takes several connected steps",
        "justify each step, use correct notation, and check the result where it is cheap to do so",
        "250-350"),
    "college": Level(
        "an undergraduate student in a first or second university course",
        "a problem on calculus, linear algebra, differential equations, discrete mathematics, number "
        "theory or probability and statistics that tests understanding rather than recall",
        "argue rigorously, name the theorems used, and keep the computation readable",
        "250-350"),
    "amc8": Level(
        "a strong middle-school contestant in a competition like the AMC 8",
        "a self-contained competition problem with a single numerical answer, solvable without a "
        "calculator by a clever but elementary observation",
        "show the key observation first, then the short computation it allows",
        "150-300"),
    "amc10": Level(
        "a high-school contestant in a competition like the AMC 10",
        "a competition problem in algebra, geometry, number theory or counting with one exact answer, "
        "where the direct approach is long and an insight shortens it",
        "present the insight, carry out the argument carefully, and give the exact answer",
        "250-350"),
    "amc12": Level(
        "an advanced high-school contestant in a competition like the AMC 12",
        "a challenging competition problem that may use trigonometry, logarithms, complex numbers or "
        "elementary calculus ideas, with one exact answer",
        "explain the strategy, then give a complete and careful derivation",
        "250-350"),
    "aime": Level(
        "an olympiad-track student in a competition like the AIME",
        "a hard multi-step problem whose answer is an integer from 0 to 999, combining two or more "
        "areas (number theory, combinatorics, geometry, algebra)",
        "lay out the plan, prove each claim the answer depends on, and verify the final integer",
        "300-400"),
}

_TOOL_EXAMPLE = """Here is an example of the expected shape (its topic is unrelated to the math text below):

## Problem
A tank holds 240 litres of water. A pump removes 15% of the water left in the tank every hour.
How many litres remain after 4 hours, to the nearest litre?

## Code Solution
```python
remaining = 240.0
for hour in range(4):
    remaining -= 0.15 * remaining
print(round(remaining))
```
```output
125
```
After 4 hours about $\\boxed{125}$ litres remain."""


def level_names() -> tuple[str, ...]:
    """The eight education stages, from grade school to AIME."""
    return LEVELS


def render(snippet: str, level: str, kind: str = "cot") -> str:
    """The full prompt asking for a new problem and solution at `level`, inspired by `snippet`.

    The prompt ends with the `## Problem` header, so the answer starts with the problem itself.
    """
    if level not in _LEVELS:
        raise ValueError(f"unknown education level {level!r}; levels: {', '.join(LEVELS)}")
    if kind not in KINDS:
        raise ValueError(f"unknown prompt kind {kind!r}; kinds: {', '.join(KINDS)}")
    spec = _LEVELS[level]
    parts = [
        f"You are writing a new math problem and its worked solution for {spec.audience}. "
        "Take inspiration from the math text below: reuse one of its ideas, methods or facts, but write "
        "a problem that stands on its own and can be understood without the text.",
        "# Guidelines for the problem\n\n"
        f"- Write {spec.problem}.\n"
        "- Give every quantity and condition needed to solve it, and nothing contradictory.\n"
        "- Do not refer to \"the text\", \"the passage\" or \"the snippet\".",
    ]
    if kind == "cot":
        parts += [
            "# Guidelines for the solution\n\n"
            f"- {spec.solution[0].upper() + spec.solution[1:]}.\n"
            f"- Aim for about {spec.words} words.\n"
            "- End with the final answer written as $\\boxed{...}$.",
            "# Format\n\nWrite the problem, then a line `## Solution`, then the solution. Write nothing after "
            "the solution.",
        ]
    else:
        parts += [
            "# Guidelines for the solution\n\n"
            "- Solve the problem with a short, correct Python program in a ```python block that prints the "
            "result (standard library, sympy or numpy only).\n"
            "- Then show what the program prints in a ```output block.\n"
            "- Finish with one sentence that states the final answer as $\\boxed{...}$.",
            "# Format\n\nWrite the problem, then a line `## Code Solution`, then the code, its output and the "
            "final sentence. Write nothing after that.",
            _TOOL_EXAMPLE,
        ]
    # The snippet comes last: every prompt of one level and kind starts with the same template, a
    # prefix the decoding engine's prefix cache computes once (`engine.prefix_cache`).
    parts.append("# Math text\n\n" + snippet)
    return "\n\n".join(parts) + f"\n\n{PROBLEM_HEADER}\n"
