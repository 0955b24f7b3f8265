"""Small LaTeX string tools shared by extraction and parsing: brace matching, `\\boxed{}` contents,
math delimiters, and splitting at top-level separators (outside any bracket pair)."""

from __future__ import annotations

import re

OPENERS = {"{": "}", "(": ")", "[": "]"}
_BOXED = re.compile(r"\\(?:boxed|fbox)\b")


def matching_brace(s: str, start: int) -> int:
    """Index of the `}` closing the `{` at `s[start]`, or -1 when it is never closed."""
    depth = 0
    for i in range(start, len(s)):
        if s[i] == "{" and (i == 0 or s[i - 1] != "\\"):
            depth += 1
        elif s[i] == "}" and (i == 0 or s[i - 1] != "\\"):
            depth -= 1
            if depth == 0:
                return i
    return -1


def _brace_pairs(text: str) -> dict[int, int]:
    """{index of each `{`: index of its closing `}`} for every balanced pair, in one pass."""
    pairs, stack = {}, []
    for i, ch in enumerate(text):
        if ch == "{" and (i == 0 or text[i - 1] != "\\"):
            stack.append(i)
        elif ch == "}" and (i == 0 or text[i - 1] != "\\") and stack:
            pairs[stack.pop()] = i
    return pairs


def boxed_spans(text: str) -> list[tuple[int, int, str]]:
    """Every outermost `\\boxed{...}` / `\\fbox{...}` (and `\\boxed 5`) as (start, end, content), in
    order; a box never closed is skipped. Linear in the text's length."""
    pairs, spans = None, []
    for match in _BOXED.finditer(text):
        rest = match.end()
        while rest < len(text) and text[rest] == " ":
            rest += 1
        if rest < len(text) and text[rest] == "{":
            pairs = _brace_pairs(text) if pairs is None else pairs
            if rest in pairs:
                spans.append((match.start(), pairs[rest] + 1, text[rest + 1:pairs[rest]]))
        else:
            bare = re.match(r"([^\s$]+)", text[rest:rest + 200])
            if bare:
                spans.append((match.start(), rest + bare.end(), bare.group(1)))
    outermost, reach = [], -1
    for span in spans:  # sorted by start: a span inside the last kept one is nested in it
        if span[0] >= reach:
            outermost.append(span)
            reach = span[1]
    return outermost


def last_boxed(text: str) -> str | None:
    """The content of the last (outermost) `\\boxed{...}` or `\\fbox{...}`, braces matched; None if none."""
    spans = boxed_spans(text)
    return spans[-1][2] if spans else None


def strip_math_delimiters(s: str) -> str:
    """`$x$`, `$$x$$`, `\\(x\\)`, `\\[x\\]` -> `x` (only when the delimiters wrap the whole string)."""
    s = s.strip()
    for left, right in (("$$", "$$"), ("\\[", "\\]"), ("\\(", "\\)"), ("$", "$")):
        if s.startswith(left) and s.endswith(right) and len(s) >= len(left) + len(right):
            inner = s[len(left):len(s) - len(right)]
            if left != "$" or "$" not in inner:
                return inner.strip()
    return s


def depth_map(s: str) -> list[int]:
    """The bracket depth at each character of `s` ((), [], {} and \\{ \\} all count; a bracket
    character itself has the outer depth)."""
    depths, depth = [], 0
    for ch in s:
        if ch in ")]}":
            depth = max(0, depth - 1)
        depths.append(depth)
        if ch in "([{":
            depth += 1
    return depths


def split_top_level(s: str, separator: str) -> list[str]:
    """`s` split at every `separator` that sits outside all brackets."""
    depths, parts, last, i = depth_map(s), [], 0, 0
    while i < len(s):
        if depths[i] == 0 and s.startswith(separator, i):
            parts.append(s[last:i])
            i += len(separator)
            last = i
        else:
            i += 1
    parts.append(s[last:])
    return parts


def wrapped_by(s: str, left: str, right: str) -> bool:
    """Whether `s` is `left ... right` with `left` closed only by the final `right`."""
    if not (s.startswith(left) and s.endswith(right)) or len(s) < len(left) + len(right):
        return False
    inner_depths = depth_map(s)
    return all(d > 0 for d in inner_depths[len(left):len(s) - len(right)]) or len(s) == len(left) + len(right)
