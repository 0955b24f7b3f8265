"""Evaluation prompts in the paper's format, few-shot demonstrations and option rendering.

CoT: `## Question\n{q}\n\n## Solution\n`; tool: `## Question\n{q}\n\n## Code Solution\n`.
Demonstrations (written for this project) come first, each a finished question and solution,
separated by `\n\n---\n\n` (the tool loop's stop string `\n\n---` ends a generation that starts
another one).
"""

from __future__ import annotations

from typing import Sequence

from jz3_jax.eval.datasets import LETTERS, Problem

SETTINGS = ("cot", "tool")
HEADERS = {"cot": "## Solution", "tool": "## Code Solution"}
SEPARATOR = "\n\n---\n\n"
STOP = {"cot": ("\n\n---",), "tool": ("```output", "\n\n---")}

# Five multiple-choice demonstrations: (question, options, letter, CoT solution, tool solution).
_DEMOS = [
    ("A shop sells pencils at 3 for $0.75. How much do 12 pencils cost?", ["$2.25", "$3.00", "$3.75", "$4.00",
     "$9.00"], "B",
     "One pencil costs 0.75 / 3 = 0.25 dollars, so 12 pencils cost 12 * 0.25 = 3.00 dollars. The answer is (B).",
     "price = 0.75 / 3\nprint(12 * price)", "3.0"),
    ("What is the remainder when 2^10 is divided by 7?", ["1", "2", "3", "4", "5"], "B",
     "Powers of 2 modulo 7 repeat with period 3: 2, 4, 1. Since 10 = 3 * 3 + 1, 2^10 leaves the same remainder "
     "as 2^1, which is 2. The answer is (B).", "print(2 ** 10 % 7)", "2"),
    ("A rectangle has a perimeter of 30 cm and a length of 9 cm. What is its area?", ["36 cm^2", "45 cm^2",
     "54 cm^2", "63 cm^2", "81 cm^2"], "C",
     "Length plus width is 30 / 2 = 15 cm, so the width is 15 - 9 = 6 cm and the area is 9 * 6 = 54 cm^2. "
     "The answer is (C).", "width = 30 / 2 - 9\nprint(9 * width)", "54.0"),
    ("If 3x - 7 = 2x + 5, what is x?", ["-12", "2", "7", "12", "-2"], "D",
     "Subtract 2x from both sides: x - 7 = 5, so x = 12. The answer is (D).",
     "from sympy import symbols, solve\nx = symbols('x')\nprint(solve(3*x - 7 - (2*x + 5), x))", "[12]"),
    ("A train travels 240 km in 3 hours. At the same speed, how far does it travel in 5 hours?", ["300 km",
     "360 km", "400 km", "480 km", "720 km"], "C",
     "The speed is 240 / 3 = 80 km per hour, so in 5 hours it covers 5 * 80 = 400 km. The answer is (C).",
     "speed = 240 / 3\nprint(5 * speed)", "400.0"),
]


def render_question(problem: Problem) -> str:
    """The question text, with lettered options for multiple choice."""
    if not problem.choices:
        return problem.question
    options = " ".join(f"({LETTERS[i]}) {c}" for i, c in enumerate(problem.choices))
    return f"{problem.question}\nAnswer Choices: {options}"


def _demo_block(index: int, setting: str) -> str:
    question, choices, letter, cot, code, output = _DEMOS[index]
    options = " ".join(f"({LETTERS[i]}) {c}" for i, c in enumerate(choices))
    head = f"## Question\n{question}\nAnswer Choices: {options}\n\n{HEADERS[setting]}\n"
    if setting == "cot":
        return head + cot
    return (head + f"```python\n{code}\n```\n```output\n{output}\n```\n"
            f"The program gives {output}, so the answer is ({letter}).")


def demonstrations(setting: str, shots: int) -> str:
    """`shots` worked demonstrations (at most 5) followed by the separator, or ""."""
    shots = min(max(shots, 0), len(_DEMOS))
    return "".join(_demo_block(i, setting) + SEPARATOR for i in range(shots))


def build_prompt(problem: Problem, setting: str, shots: int) -> str:
    """The prompt text the model continues."""
    if setting not in SETTINGS:
        raise ValueError(f"eval.setting must be one of {', '.join(SETTINGS)}, got {setting!r}")
    return f"{demonstrations(setting, shots)}## Question\n{render_question(problem)}\n\n{HEADERS[setting]}\n"


def stop_strings(setting: str) -> Sequence[str]:
    """Where a generation call ends (besides EOS and the token limit)."""
    return STOP[setting]
