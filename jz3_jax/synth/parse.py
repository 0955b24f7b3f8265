"""Parse a synthesizer completion into (problem, solution), or say why it is malformed.

The completion format the synthesis prompts ask for (Markdown headers on their own lines)::

    ## Problem
    <the new problem: any Markdown / LaTeX, several paragraphs allowed>

    ## Solution
    <the solution>

Rules (headers are matched leniently: 1-6 `#`, any spacing, any case, an optional trailing `:`):

- Problem header: `Problem` or `Question`. It may be left out when the prompt itself ends with it
  (the model continues from the header): then the problem is everything before the solution header.
  Text before the problem header (e.g. "Sure, here is a problem:") is dropped.
- Solution header: `Solution` or `Code Solution`, the first one after the problem.
- The solution runs to the end of the completion, or up to a further problem header (a second
  problem the model went on to write is dropped). Other headers inside the solution are kept.
- `kind="cot"`: problem and solution must be non-empty.
- `kind="tool"`: the solution must also contain at least one closed fenced Python block
  (```` ```python ````, ```` ```py ```` or ```` ```python3 ````) whose code parses (`ast.parse`), and a
  non-empty `\\boxed{...}` outside the code blocks with the final answer. An ```` ```output ```` block
  with the program's printout is allowed and kept.

Both parts are returned with surrounding whitespace stripped.
"""

from __future__ import annotations

import ast
import dataclasses
import re
import warnings

KINDS = ("cot", "tool")

_PROBLEM_HEADER = re.compile(r"^[ \t]*#{1,6}[ \t]*(?:problem|question)[ \t]*:?[ \t]*$", re.IGNORECASE | re.MULTILINE)
_SOLUTION_HEADER = re.compile(r"^[ \t]*#{1,6}[ \t]*(?:code[ \t]+)?solution[ \t]*:?[ \t]*$", re.IGNORECASE | re.MULTILINE)
_PYTHON_BLOCK = re.compile(r"^[ \t]*```[ \t]*(?:python3?|py)[ \t]*\n(.*?)^[ \t]*```[ \t]*$",
                           re.IGNORECASE | re.MULTILINE | re.DOTALL)
_BOXED = re.compile(r"\\boxed[ \t]*\{")

# Reasons a completion is malformed (the sub-counts of "malformed" in the filter report).
MALFORMED_REASONS = ("no_solution_header", "empty_problem", "empty_solution", "no_code_block",
                     "code_syntax_error", "no_boxed_answer")


@dataclasses.dataclass(frozen=True)
class Parsed:
    """A well-formed completion."""

    problem: str
    solution: str


@dataclasses.dataclass(frozen=True)
class Malformed:
    """A completion that does not follow the format; `reason` is one of MALFORMED_REASONS."""

    reason: str


def parse_completion(text: str, kind: str = "cot") -> Parsed | Malformed:
    """Split `text` into problem and solution following the module's format, checking `kind`'s rules."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    start = 0
    problem_header = _PROBLEM_HEADER.search(text)
    solution_header = _SOLUTION_HEADER.search(text)
    if problem_header and (solution_header is None or problem_header.start() < solution_header.start()):
        start = problem_header.end()
        solution_header = _SOLUTION_HEADER.search(text, start)
    if solution_header is None:
        return Malformed("no_solution_header")
    problem = text[start:solution_header.start()].strip()
    next_problem = _PROBLEM_HEADER.search(text, solution_header.end())
    solution = text[solution_header.end():next_problem.start() if next_problem else len(text)].strip()
    if not problem:
        return Malformed("empty_problem")
    if not solution:
        return Malformed("empty_solution")
    if kind == "tool":
        reason = _tool_problem(solution)
        if reason:
            return Malformed(reason)
    return Parsed(problem, solution)


def _tool_problem(solution: str) -> str | None:
    blocks = list(_PYTHON_BLOCK.finditer(solution))
    if not blocks:
        return "no_code_block"
    for block in blocks:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # e.g. SyntaxWarning for "\d" in generated strings
                ast.parse(block.group(1))
        except (SyntaxError, ValueError):
            return "code_syntax_error"
    if not has_boxed(_PYTHON_BLOCK.sub("", solution)):
        return "no_boxed_answer"
    return None


def has_boxed(text: str) -> bool:
    """Whether `text` has a `\\boxed{...}` with balanced braces and non-blank content."""
    for match in _BOXED.finditer(text):
        depth, i = 1, match.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0 and text[match.end():i - 1].strip():
            return True
    return False
