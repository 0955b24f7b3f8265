"""Check one teacher answer and turn it into the KD target, or say why it is rejected.

The prompt ends with the `## Problem` header, so an answer is the problem, then `## Solution`
(cot) or `## Code Solution` (tool) and the solution, in the format `jz3_jax.synth.parse` reads.
Rejections (never asked again: the answer was paid for and is cached): refused / empty answers,
`truncated` (cut at max_tokens), `too_short` / `too_long` (outside `min_chars`..`max_chars`), the
parser's reasons (no solution header, empty problem or solution; for tool answers no code block,
code that does not parse, no `\\boxed{}` answer) and `no_final_answer` (a cot solution without
`\\boxed{}` while an answer is required).
"""

from __future__ import annotations

from jz3_jax.distill.answers import Answer
from jz3_jax.prompts.library import SOLUTION_HEADERS
from jz3_jax.synth.parse import Malformed, has_boxed, parse_completion

REJECT_REASONS = ("refused", "empty", "truncated", "too_short", "too_long", "no_solution_header", "empty_problem",
                  "empty_solution", "no_code_block", "code_syntax_error", "no_boxed_answer", "no_final_answer")


def validate(answer: Answer, kind: str, min_chars: int, max_chars: int,
             require_answer: bool) -> tuple[str | None, str | None]:
    """(the KD output, None) for a good answer, else (None, the rejection reason)."""
    text = answer.content
    if text is None:
        return None, "refused" if answer.refusal else "empty"
    if not text.strip():
        return None, "empty"
    if answer.finish_reason == "length":
        return None, "truncated"
    if len(text.strip()) < min_chars:
        return None, "too_short"
    if max_chars and len(text) > max_chars:
        return None, "too_long"
    parsed = parse_completion(text, kind)
    if isinstance(parsed, Malformed):
        return None, parsed.reason
    if kind == "cot" and require_answer and not has_boxed(parsed.solution):
        return None, "no_final_answer"
    return f"{parsed.problem}\n\n{SOLUTION_HEADERS[kind]}\n{parsed.solution}", None
