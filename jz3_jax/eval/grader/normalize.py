"""Cleaning an answer string before it is parsed (the `strict` policy).

Removes what never changes an answer's value: math delimiters, spacing and sizing commands,
`\\text{}`-style wrappers around units and unit words, currency signs, degree marks, thousands
separators (commas, spaces, `{,}`); rewrites spellings to one form (`\\dfrac` -> `\\frac`, `\\ge` ->
`\\geq`, `>=` -> `\\geq`, `\\frac12` -> `\\frac{1}{2}`). A percent sign or word is removed and
remembered (`Cleaned.percent`), since 28% equals 0.28 as well as 28.
"""

from __future__ import annotations

import dataclasses
import re
from fractions import Fraction

from jz3_jax.eval.grader.latex import strip_math_delimiters, wrapped_by
from jz3_jax.eval.grader.units import ANSWER_WORDS, MAGNITUDES, NOT_UNITS, UNIT_WORDS

_SPACING = re.compile(r"\\[!,;:>]|(?<!\\)\\ |\\q?quad|\\(?:displaystyle|textstyle|left|right|bigl|bigr|Bigl|Bigr|big|Big|"
                      r"middle)(?![a-zA-Z])")
_WRAPPERS = re.compile(r"\\(?:text|textbf|textit|textrm|textnormal|textsf|mathrm|mathbf|mathit|mathsf|mbox|hbox|"
                       r"operatorname|emph)\s*\{([^{}]*)\}(\s*\^\s*\{?[23]\}?)?")
_UNIT_TAIL = re.compile(r"^(.*?[\d}).!)])\s*((?:[A-Za-z]+\.?(?:\s*\^\s*\{?[23]\}?|[23])?\s*){1,3})$")


@dataclasses.dataclass(frozen=True)
class Cleaned:
    """An answer with its unit marks removed; `percent` when it was written as a percentage."""

    text: str
    percent: bool = False


def _replace_all(s: str, pairs) -> str:
    for old, new in pairs:
        s = s.replace(old, new)
    return s


def fix_fracs(s: str) -> str:
    """`\\frac12` -> `\\frac{1}{2}`, `\\frac1b` -> `\\frac{1}{b}`, `\\frac{1}2` -> `\\frac{1}{2}`,
    `\\sqrt3` -> `\\sqrt{3}`."""
    s = re.sub(r"\\frac\s*([0-9a-zA-Z])\s*([0-9a-zA-Z])", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac\s*([0-9a-zA-Z])\s*\{", r"\\frac{\1}{", s)
    s = re.sub(r"\\frac\s*(\{[^{}]*\})\s*([0-9a-zA-Z])", r"\\frac\1{\2}", s)
    return re.sub(r"\\sqrt\s*([0-9a-zA-Z])", r"\\sqrt{\1}", s)


def _unwrap_text(s: str) -> str:
    """`\\text{...}` and friends: unit words after a value are dropped, other text kept bare."""
    def inner(match: re.Match) -> str:
        content = match.group(1).strip()
        words = re.findall(r"[A-Za-z]+", content)
        before = s[: match.start()].rstrip()
        if words and all(w.lower() in UNIT_WORDS for w in words) and before and before[-1] in "0123456789}).":
            return ""  # a unit, with its square or cube
        return (f" {content} " if content in ("or", "and") else content) + (match.group(2) or "")
    for _ in range(3):  # nested wrappers
        s = _WRAPPERS.sub(inner, s)
    return s


def _strip_unit_words(s: str) -> str:
    """`10 weeks` -> `10`, `5 square units` -> `5`, `3 cm^2` -> `3`, `3 bolts` -> `3`: unit words after
    a value, and the plain words naming what a number counts."""
    match = _UNIT_TAIL.match(s)
    if not match:
        return s
    words = re.findall(r"[A-Za-z]+", match.group(2))
    glued = not s[len(match.group(1))].isspace()
    if not words or any(w.lower() in NOT_UNITS for w in words) or (glued and any(len(w) == 1 for w in words)):
        return s  # "5 squared", "2 thirds"; "3h" and "2m" are algebra, not hours and metres
    counted_things = match.group(1)[-1].isdigit() and all(
        len(w) > 1 and w.islower() and w not in ANSWER_WORDS for w in words)  # "3 bolts", "7 eggs"
    if all(w.lower() in UNIT_WORDS for w in words) or counted_things:
        return match.group(1).strip()
    return s


def _magnitudes(s: str) -> str:
    """`5 million` -> `5000000`, `2 dozen` -> `24`, `1.5 thousand` -> `1500`."""
    match = re.fullmatch(r"(-?\d+(?:\.\d+)?)\s+(hundred|thousand|million|billion|trillion|dozen)\b(.*)", s)
    if not match:
        return s
    value = Fraction(match.group(1)) * MAGNITUDES[match.group(2)]
    number = str(value.numerator) if value.denominator == 1 else str(float(value))
    return (number + match.group(3)).strip()


def _join_thousands(s: str) -> str:
    """`1,234,567` / `1 234 567` / `1{,}234` / `1\\,234` -> `1234567` where the grouping is unambiguous."""
    if re.fullmatch(r"-?\d+\{,\}(?:\d{1,2}|\d{4,})", s) or re.fullmatch(r"-?0\{,\}\d+", s):
        return s.replace("{,}", ".")  # a decimal comma: not a group of three after a non-zero
    s = s.replace("{,}", "")
    if re.fullmatch(r"-?[1-9]\d{0,2}(?:,\d{3})+(?:\.\d+)?", s):
        return s.replace(",", "")
    if re.fullmatch(r"-?[1-9]\d{0,2}(?: \d{3})+(?:\.\d+)?", s):
        return s.replace(" ", "")
    return s


def _unwrap(s: str) -> str:
    """Brackets that only group: `{1,2,3}` (TeX braces), `[\\begin{array}...\\end{array}]`."""
    for _ in range(3):
        if wrapped_by(s, "{", "}"):
            s = s[1:-1].strip()
        elif s and s[0] in "([" and wrapped_by(s, s[0], ")" if s[0] == "(" else "]") and \
                re.fullmatch(r"[(\[]\s*\\begin\{(\w+)\}.*\\end\{\1\}\s*[)\]]", s, re.DOTALL):
            s = s[1:-1].strip()
        else:
            break
    return s


def clean(answer: str) -> Cleaned:
    """`answer` with its spelling normalised and its unit marks removed (see module doc)."""
    s = strip_math_delimiters(str(answer).strip())
    s = re.sub(r"\s+", " ", s).strip()
    s = re.sub(r",\\!\s*", ",", s)  # 32,\! 349: a thousands separator
    s = _SPACING.sub(" ", s)
    s = _replace_all(s, [("\\dfrac", "\\frac"), ("\\tfrac", "\\frac"), ("\\cfrac", "\\frac"), ("≤", "\\leq"), ("≥", "\\geq"), ("≠", "\\neq"), ("<=", "\\leq "),
                         (">=", "\\geq "), ("!=", "\\neq "), ("−", "-"), ("\\$", ""), ("\\infty", "\\infty "), ("∞", "\\infty"),
                         ("\\emptyset", "\\varnothing"), ("\\mathbb{R}", "(-\\infty,\\infty)"), ("\\{", "\\{ "), ("\\}", " \\}")])
    s = re.sub(r"\\(le|ge|ne|lt|gt)(?![a-zA-Z])",
               lambda m: {"le": "\\leq", "ge": "\\geq", "ne": "\\neq", "lt": "<", "gt": ">"}[m.group(1)], s)
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?|°|\\degree", "", s)
    percent = bool(re.search(r"\\?%|\b(?:percent|pct)\b", s))
    s = re.sub(r"\\?%|\s*\b(?:percent(?:age)?|pct)\b", "", s)
    s = _unwrap_text(s)
    s = re.sub(r"\s+", " ", s).strip().rstrip(".,;").strip()
    s = s.replace("$", "").strip()  # a currency sign, or math delimiters around part of the answer
    s = _unwrap(s)
    s = _magnitudes(s)
    s = _strip_unit_words(s)
    s = re.sub(r"\s*\bdegrees?\b$", "", s)
    s = _join_thousands(s)
    s = re.sub(r"^(?:approximately|about|around|roughly|exactly)\s+|^\\approx\s*", "", s, flags=re.IGNORECASE)
    return Cleaned(fix_fracs(s).strip(), percent)
