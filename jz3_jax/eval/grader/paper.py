"""The `paper` policy: the decisions of the JiuZhang3.0 / math-evaluation-harness grader, kept so
that a table can be compared with the paper's.

Extraction order (as in the original evaluation): a multiple-choice letter where the item has
options, "final answer is $...$", the last brace-matched `\\boxed{}`, "the answer is", a GSM8K-style
"#### answer" line, the last number. Equality: normalised strings, then numbers within relative
1e-4 with the percentage variants (x100 and /100 of the gold accepted for every item), then sympy.
These are knowingly lenient (123457 equals 123456, 25 equals 0.25): the `strict` policy is the default.
"""

from __future__ import annotations

import math
import re

from jz3_jax.eval.grader.latex import last_boxed
from jz3_jax.eval.grader.sympy_parse import to_sympy

NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+(?:\.\d+)?)?|-?\.\d+")
_UNITS = ("square units", "sq units", "units", "unit", "degrees", "degree", "cm", "meters", "meter", "inches", "inch",
          "feet", "foot", "dollars", "dollar", "cents", "hours", "hour", "minutes", "minute", "seconds", "second",
          "mph", "km", "kg", "pounds", "miles", "mile")


def _after_phrase(text: str, phrase: str) -> str | None:
    index = text.lower().rfind(phrase)
    if index < 0:
        return None
    tail = text[index + len(phrase):].strip()
    tail = re.sub(r"^[:\s]*(?:\*\*)?", "", tail)
    if tail.startswith("$"):
        end = tail.find("$", 1)
        tail = tail[1:end] if end > 0 else tail[1:]
    else:
        tail = re.split(r"\n|(?<=[^\d])\.(?:\s|$)|\.$", tail, maxsplit=1)[0]
    tail = tail.strip().strip("*").strip()
    return tail or None


def last_number(text: str) -> str | None:
    """The last number in `text` (thousands separators and fractions a/b allowed)."""
    found = NUMBER.findall(text.replace("\\!", ""))
    return found[-1] if found else None


def _final_value(phrase: str) -> str:
    """The value a worded answer ends at: "2 * 1.5 = 3 bolts" -> "3 bolts", "$18 per day" -> "$18"."""
    if "=" in phrase:
        phrase = phrase.rsplit("=", 1)[1].strip()
    match = re.match(r"^(\$?-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?%?)\s+[A-Za-z]", phrase)
    return match.group(1) if match else phrase


def extract_answer(text: str) -> str:
    """The answer a free-form solution gives ("" when nothing looks like one)."""
    for candidate in (_after_phrase(text, "final answer is"), last_boxed(text)):
        if candidate:
            boxed = last_boxed(candidate)
            return boxed if boxed is not None else candidate
    answer = _after_phrase(text, "he answer is")
    if answer:
        boxed = last_boxed(answer)
        return boxed if boxed is not None else _final_value(answer)
    match = re.search(r"####\s*(.+)", text)
    if match:
        return match.group(1).strip()
    number = last_number(text)
    return number or ""


def extract_choice(text: str, letters: str) -> str:
    """The option letter a solution picks (one of `letters`), or "" when it names none."""
    valid = f"[{letters}]"
    for candidate in (_after_phrase(text, "final answer is"), last_boxed(text), _after_phrase(text, "he answer is")):
        if candidate:
            match = re.search(rf"(?<![A-Za-z]){valid}(?![A-Za-z])", candidate.replace("\\text", ""))
            if match:
                return match.group(0)
    matches = re.findall(rf"(?:\(|\b)({valid})(?:\)|\b)", text)
    return matches[-1] if matches else ""


def _fix_fracs(s: str) -> str:
    """\\frac12 -> \\frac{1}{2}, \\frac1b -> \\frac{1}{b}."""
    parts = s.split("\\frac")
    out = parts[0]
    for part in parts[1:]:
        out += "\\frac"
        if part.startswith("{") or len(part) < 2:
            out += part
            continue
        a, b, rest = part[0], part[1], part[2:]
        if b == "{":
            out += "{" + a + "}" + b + rest
        else:
            out += "{" + a + "}{" + b + "}" + rest
    return out


def _strip_text_wrappers(s: str) -> str:
    s = re.sub(r"\\(?:text|textbf|mathrm|mbox|mathbf)\{([^{}]*)\}", r"\1", s)
    return s


def normalize_answer(answer: str) -> str:
    """A canonical string for comparing answers: LaTeX spacing and wrappers, units, currency,
    percentages, thousands separators and a trailing ".0" removed."""
    s = str(answer).strip()
    s = s.replace("\n", "").replace("\\!", "").replace("\\,", "").replace("\\;", "").replace("\\ ", "")
    s = s.replace("\\left", "").replace("\\right", "").replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = s.replace("^{\\circ}", "").replace("^\\circ", "").replace("°", "")
    s = s.replace("\\$", "").replace("$", "").replace("\\%", "").replace("%", "")
    s = _strip_text_wrappers(s)
    s = s.strip().rstrip(".").strip()
    for unit in _UNITS:
        s = re.sub(rf"(\d|\}})\s*{unit}(?:\^?\{{?\d\}}?)?$", r"\1", s)
    s = re.sub(r"^(?:[a-zA-Z]|\\theta)\s*=\s*(?=[-\d\\.])", "", s)  # "x = 5" -> "5"
    s = s.replace(" ", "")
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", s):
        s = s.replace(",", "")
    s = re.sub(r"^(-?\d+)\.0+$", r"\1", s)
    s = re.sub(r"^(-?\d*\.\d*?)0+$", r"\1", s) if re.fullmatch(r"-?\d*\.\d+", s) else s
    if s.startswith("."):
        s = "0" + s
    s = s.replace("{,}", "")
    s = _fix_fracs(s)
    if re.fullmatch(r"-?\d+/\d+", s):
        num, den = s.split("/")
        s = f"\\frac{{{num}}}{{{den}}}"
    s = re.sub(r"\\sqrt(\w)", r"\\sqrt{\1}", s)
    return s


REL_TOL = 1e-4


def to_number(s: str) -> float | None:
    """`s` as a number when it is one: integers, decimals, a/b, \\frac{a}{b}, a trailing percent."""
    t = normalize_answer(s)
    match = re.fullmatch(r"(-?)\\frac\{(-?[\d.]+)\}\{(-?[\d.]+)\}", t)
    try:
        if match:
            value = float(match.group(2)) / float(match.group(3))
            return -value if match.group(1) else value
        return float(t)  # as the harness does: Python's float also reads "1_000"
    except (ValueError, ZeroDivisionError):
        return None


def _numeric_equal(pred: str, gold: str) -> bool | None:
    p, g = to_number(pred), to_number(gold)
    if p is None or g is None:
        return None
    return any(math.isclose(p, c, rel_tol=REL_TOL, abs_tol=1e-9) for c in (g, g / 100, g * 100))


def sympy_equal(a: str, b: str) -> bool:
    """The harness's symbolic check: parse both, simplify the difference, else compare their
    numeric values within relative 1e-4."""
    import sympy

    x, y = to_sympy(a), to_sympy(b)  # the harness's eval-based parse_expr is never used on model text
    if x is None or y is None:
        return False
    try:
        if x == y:
            return True
        diff = sympy.simplify(x - y)
        if diff == 0:
            return True
        return math.isclose(float(sympy.N(x)), float(sympy.N(y)), rel_tol=REL_TOL)  # as the harness does
    except Exception:  # noqa: BLE001 - sets, relations, matrices: compare their simplified forms
        try:
            return sympy.simplify(x) == sympy.simplify(y)
        except Exception:  # noqa: BLE001
            return False


def answers_equal(pred: str, gold: str) -> tuple[bool, str]:
    """The harness's equality of two answer strings and the step that decided ("string",
    "numeric", "symbolic", "different", "empty")."""
    if not pred.strip():
        return False, "empty"
    p, g = normalize_answer(pred), normalize_answer(gold)
    if p == g or p.lower() == g.lower():
        return True, "string"
    numeric = _numeric_equal(pred, gold)
    if numeric is not None:
        return numeric, "numeric"
    if len(p) > 400 or len(g) > 400:
        return False, "different"
    return (True, "symbolic") if sympy_equal(p, g) else (False, "different")
