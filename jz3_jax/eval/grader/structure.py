"""An answer string (already cleaned) as a value with structure: numbers, words, expressions,
tuples, sets, lists, intervals and their unions, matrices, named answers and equations.

`parse(text)` never fails: what it cannot read as anything else is an `Expr` (LaTeX, left to
sympy). Relations that describe intervals (`-793<a<10`, `x \\geq 5`, `x < 1 or x > 3`) become
`Intervals`, so they compare with the interval they describe.
"""

from __future__ import annotations

import dataclasses
import re
from fractions import Fraction
from typing import Union as TypingUnion

from jz3_jax.eval.grader.latex import split_top_level, wrapped_by

GREEK = ("alpha beta gamma delta epsilon varepsilon zeta eta theta vartheta iota kappa lambda mu nu xi rho sigma "
         "tau upsilon phi varphi chi psi omega Gamma Delta Theta Lambda Xi Sigma Phi Psi Omega").split()
_NAME = re.compile(r"(?:[a-zA-Z]|[A-Z]{2,3}|\\(?:" + "|".join(GREEK) + r"))(?:_\{?\w+\}?)?'*(?:\([a-zA-Z, ]*\))?")
_RELATIONS = re.compile(r"(\\leq|\\geq|\\neq|<|>)")
_MATRIX = re.compile(r"^\\begin\{([pbBvV]?matrix|smallmatrix|array)\}(?:\{[^{}]*\})?(.*)\\end\{\1\}$", re.DOTALL)
NUMBER_WORDS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty".split())}
_INFINITY = {"\\infty": 1, "+\\infty": 1, "-\\infty": -1, "oo": 1, "-oo": -1, "infinity": 1, "-infinity": -1}


@dataclasses.dataclass(frozen=True)
class Number:
    """An exact value and how many decimals were written (None: exact, e.g. an integer or a/b)."""

    value: Fraction
    decimals: int | None
    text: str


@dataclasses.dataclass(frozen=True)
class Text:
    """Words, option letters, numerals in another base (`1011_2`) and clock times: compared as strings."""

    text: str


@dataclasses.dataclass(frozen=True)
class Expr:
    """Anything else: a LaTeX expression for sympy."""

    latex: str


@dataclasses.dataclass(frozen=True)
class Infinity:
    """`\\infty` (sign 1) or `-\\infty` (sign -1), as an interval's endpoint."""

    sign: int


@dataclasses.dataclass(frozen=True)
class Seq:
    """`tuple` (ordered, in parentheses), `set` (braces), `list` (bare commas: unordered), `pm`
    (the two values of `a \\pm b`, unordered) or `pair` (`2,5`: a list, or a decimal comma)."""

    kind: str
    items: tuple


@dataclasses.dataclass(frozen=True)
class Interval:
    """`(lo, hi]` and friends: endpoints with whether each is included."""

    lo: "Value"
    hi: "Value"
    left_closed: bool
    right_closed: bool


@dataclasses.dataclass(frozen=True)
class Intervals:
    """A union of intervals, possibly written as a relation on `variable`."""

    parts: tuple[Interval, ...]
    variable: str = ""


@dataclasses.dataclass(frozen=True)
class Matrix:
    """A matrix in any environment (`pmatrix`, `bmatrix`, `array`, ...), as rows of entries."""

    rows: tuple[tuple["Value", ...], ...]


@dataclasses.dataclass(frozen=True)
class Named:
    """`x = 5`, `(p, q) = (3, 2)`, `f(x) = 2x + 3`, `x = 1, y = 2`: names and the value they are given."""

    names: tuple[str, ...]
    value: object


@dataclasses.dataclass(frozen=True)
class Equation:
    """An equation whose left side is not a name (`x^2 + y^2 = 1`, `2 \\cdot 3 = 6`)."""

    lhs: str
    rhs: str


Value = TypingUnion[Number, Text, Expr, Infinity, Seq, Interval, Intervals, Matrix, Named, Equation]


MAX_EXPONENT = 400  # beyond this a power of ten is left to sympy (as an expression), never expanded here
MAX_DIGITS = 1000


def parse_number(s: str) -> Number | None:
    """Integers, decimals, a/b, `\\frac{a}{b}`, mixed numbers (`2\\frac12`, `2 1/2`), `1.5 \\times 10^{3}`,
    `4.5e33`, `0.\\overline{3}`, `0,75`, number words; else None. Spaces count: `1 2` is not 12."""
    t = re.sub(r"\s*([{}])\s*", r"\1", s.strip())
    sign = 1
    if t[:1] in ("-", "+"):
        sign, t = (-1 if t[0] == "-" else 1), t[1:].lstrip()
    if len(t) > MAX_DIGITS:
        return None
    try:
        value = _unsigned(t)
    except (ValueError, ZeroDivisionError):
        return None
    return None if value is None else Number(sign * value[0], value[1], s)


def _unsigned(t: str) -> tuple[Fraction, int | None] | None:
    """(value, decimals written) of an unsigned number `t`, or None."""
    if re.fullmatch(r"0,\d+", t):  # a decimal comma: a thousands group never starts with "0,"
        t = t.replace(",", ".")
    if t.lower() in NUMBER_WORDS:
        return Fraction(NUMBER_WORDS[t.lower()]), None
    mixed = re.fullmatch(r"(\d+)\s*\\frac\{(\d+)\}\{(\d+)\}|(\d+) +(\d+)/(\d+)", t)
    if mixed:
        whole, num, den = [int(g) for g in mixed.groups() if g is not None]
        return (whole + Fraction(num, den), None) if num < den else None
    if " " in t:
        return None
    repeating = re.fullmatch(r"(\d*)\.(\d*)\\overline\{(\d+)\}", t)
    if repeating:  # 0.1\overline{6} = 1/6
        whole, head, cycle = repeating.groups()
        return (Fraction(int(whole or 0)) + Fraction(int(head or 0), 10 ** len(head)) +
                Fraction(int(cycle), (10 ** len(cycle) - 1) * 10 ** len(head))), None
    decimal = re.fullmatch(r"(\d*)\.(\d+)|(\d+)\.?", t)
    if decimal:
        return Fraction(t.rstrip(".")), len(decimal.group(2)) if decimal.group(2) is not None else None
    scientific = re.fullmatch(r"(\d+(?:\.\d+)?)(?:(?:\\times|\\cdot|\*|x)10\^\{?([-+]?\d+)\}?|[eE]([-+]?\d+))", t)
    if scientific:
        mantissa, exponent = scientific.group(1), int(scientific.group(2) or scientific.group(3))
        if abs(exponent) > MAX_EXPONENT:
            return None
        decimals = len(mantissa.split(".")[1]) - exponent if "." in mantissa else None
        return Fraction(mantissa) * Fraction(10) ** exponent, decimals
    fraction = re.fullmatch(r"\\frac\{(-?\d+)\}\{(-?\d+)\}|(\d+)/(\d+)", t)
    if fraction:
        num, den = [int(g) for g in fraction.groups() if g is not None]
        return Fraction(num, den), None
    return None


def _scalar(s: str) -> Value:
    s = s.strip()
    if s in _INFINITY:
        return Infinity(_INFINITY[s])
    base = re.fullmatch(r"([0-9A-Za-z]+)_\{?(\d+)\}?", s)
    if base and base.group(1).isalnum() and not base.group(1).isalpha():
        return Text(f"{base.group(1).upper()}_{base.group(2)}")
    if re.fullmatch(r"\d{1,2}:\d{2}(?::\d{2})?(?:\s*[ap]\.?m\.?)?", s, re.IGNORECASE):
        return Text(s.lower().replace(" ", "").replace(".", ""))
    number = parse_number(s)
    if number is not None:
        return number
    letter = re.fullmatch(r"\(([A-Za-z])\)|([A-Z])", s)  # an option letter: (C), C
    if letter:
        return Text((letter.group(1) or letter.group(2)).lower())
    if re.fullmatch(r"[A-Za-z][A-Za-z' ]*", s) and (len(s) > 1 and not re.fullmatch(r"[A-Z]{1,3}", s)):
        return Text(re.sub(r"^(?:the|an?)\s+", "", s.lower()).strip())
    return Expr(s)


def is_name(s: str) -> bool:
    """A variable, a Greek letter, a segment (`AB`), a function value (`f(x)`), with subscripts or primes."""
    return bool(_NAME.fullmatch(s.replace(" ", "")))


def _names(lhs: str) -> tuple[str, ...] | None:
    lhs = lhs.strip()
    if is_name(lhs):
        return (lhs.replace(" ", ""),)
    if wrapped_by(lhs, "(", ")"):
        parts = [p.strip() for p in split_top_level(lhs[1:-1], ",")]
        if len(parts) > 1 and all(is_name(p) for p in parts):
            return tuple(p.replace(" ", "") for p in parts)
    return None


def _relation(s: str) -> Intervals | None:
    """`a < x < b`, `x \\geq a`, `a > x`, `x \\neq a` as intervals; None for other relations."""
    tokens = [t.strip() for t in _RELATIONS.split(s)]
    less = {"<": (True, False), "\\leq": (True, True), ">": (False, False), "\\geq": (False, True)}
    if len(tokens) == 3:
        left, op, right = tokens
        if is_name(right) and not is_name(left):
            left, right = right, left
            op = {"<": ">", ">": "<", "\\leq": "\\geq", "\\geq": "\\leq", "\\neq": "\\neq"}[op]
        if not is_name(left) or is_name(right):
            return None
        value, var = _scalar(right), left.replace(" ", "")
        if op == "\\neq":
            return Intervals((Interval(Infinity(-1), value, False, False), Interval(value, Infinity(1), False, False)), var)
        is_less, closed = less[op]
        interval = Interval(Infinity(-1), value, False, closed) if is_less else Interval(value, Infinity(1), closed, False)
        return Intervals((interval,), var)
    if len(tokens) == 5 and is_name(tokens[2]) and tokens[1] in less and tokens[3] in less:
        (lo, op1, var, op2, hi) = tokens
        if less[op1][0] != less[op2][0]:
            return None
        if not less[op1][0]:  # b > x > a
            lo, hi, op1, op2 = hi, lo, op2, op1
        return Intervals((Interval(_scalar(lo), _scalar(hi), less[op1][1], less[op2][1]),), var.replace(" ", ""))
    return None


def _interval(s: str) -> Interval | None:
    if not (s and s[0] in "([" and s[-1] in ")]" and wrapped_by(s, s[0], s[-1])):
        return None
    parts = split_top_level(s[1:-1], ",")
    if len(parts) != 2:
        return None
    lo, hi = _scalar(parts[0]), _scalar(parts[1])
    if s[0] == "(" and s[-1] == ")" and not isinstance(lo, Infinity) and not isinstance(hi, Infinity):
        return None  # an ordered pair, unless compared with an interval (see equivalence)
    return Interval(lo, hi, s[0] == "[", s[-1] == "]")


def _matrix(s: str) -> Matrix | None:
    match = _MATRIX.match(s)
    if not match:
        return None
    rows = [r for r in re.split(r"\\\\", match.group(2)) if r.strip() and not r.strip().startswith("\\hline")]
    return Matrix(tuple(tuple(parse(cell) for cell in row.split("&")) for row in rows))


def _flat(values) -> tuple:
    """Items with every `a \\pm b` spliced in as its two values."""
    out: list = []
    for v in values:
        out += list(v.items) if isinstance(v, Seq) and v.kind == "pm" else [v]
    return tuple(out)


def _list(parts: list[str], kind: str) -> Value:
    values = _flat(parse(p) for p in parts if p.strip())
    if kind == "list" and values and all(isinstance(v, Named) and len(v.names) == 1 for v in values):
        names = tuple(v.names[0] for v in values)
        if len(set(names)) == 1:  # x = 1 or x = 2
            return Named(names[:1], Seq("list", tuple(v.value for v in values)))
        if len(set(names)) == len(names):  # x = 1, y = 2: ordered like its names
            return Named(names, Seq("tuple", tuple(v.value for v in values)))
    return Seq(kind, values)


def parse(text: str) -> Value:
    """The structured value of one cleaned answer string (see module doc)."""
    s = text.strip().rstrip(".").strip()
    if not s:
        return Text("")
    number = parse_number(s)
    if number is not None:
        return number
    matrix = _matrix(s)
    if matrix is not None:
        return matrix
    for word in (" or ", " and ", "\\text{ or }", "\\text{ and }"):
        parts = split_top_level(s, word)
        if len(parts) > 1:
            return _union_or_list(parts, both="and" in word)
    if re.fullmatch(r"-?\d+,\d+", s):  # "2,5": a list of two, or a decimal comma (see equivalence)
        return Seq("pair", tuple(parse(p) for p in s.split(",")))
    commas = split_top_level(s, ",")
    if len(commas) == 1 and len(split_top_level(s, ";")) > 1:  # 1; 2; 3
        commas = split_top_level(s, ";")
    if len(commas) > 1:
        return _union_or_list(commas)
    sides = split_top_level(s, "=")
    if len(sides) > 1:
        names = _names(sides[0])
        if names is not None:
            return Named(names, parse(sides[-1]))
        return Equation(sides[0].strip(), sides[-1].strip())
    if "\\in " in s or "\\in(" in s or "\\in[" in s:
        name, _, rest = s.partition("\\in")
        if is_name(name):
            inner = parse(rest)
            parts = inner.parts if isinstance(inner, Intervals) else (inner,) if isinstance(inner, Interval) else None
            if parts is not None:
                return Intervals(tuple(parts), name.strip())
    if _RELATIONS.search(s) and len(split_top_level(s, "<")) + len(split_top_level(s, ">")) > 2 or \
            any(len(split_top_level(s, op)) > 1 for op in ("\\leq", "\\geq", "\\neq")):
        relation = _relation(s)
        return relation if relation is not None else Expr(s)
    unions = split_top_level(s, "\\cup")
    if len(unions) > 1:
        parts = [parse(u) for u in unions]
        if all(isinstance(p, Interval) for p in parts):
            return Intervals(tuple(parts))
        return Expr(s)
    if wrapped_by(s, "\\{", "\\}"):
        inner = s[2:-2].strip()
        return Seq("set", _flat(parse(p) for p in split_top_level(inner, ",") if p.strip())) if inner else Seq("set", ())
    interval = _interval(s)
    if interval is not None:
        return interval
    if wrapped_by(s, "(", ")"):
        separator = "," if len(split_top_level(s[1:-1], ",")) > 1 else ";"  # (0;-2;6)
        if len(split_top_level(s[1:-1], separator)) > 1:
            return Seq("tuple", tuple(parse(p) for p in split_top_level(s[1:-1], separator)))
    if s.startswith("\\langle") and s.endswith("\\rangle"):
        return Seq("tuple", tuple(parse(p) for p in split_top_level(s[len("\\langle"):-len("\\rangle")], ",")))
    if wrapped_by(s, "[", "]") and len(split_top_level(s[1:-1], ",")) > 2:
        return Seq("tuple", tuple(parse(p) for p in split_top_level(s[1:-1], ",")))
    if "\\pm" in s:
        head, _, tail = s.partition("\\pm")
        head, tail = head.strip(), tail.strip()
        if not head:
            return Seq("pm", (parse(tail), parse(f"-{tail}")))
        return Seq("pm", (Expr(f"{head}+{tail}"), Expr(f"{head}-({tail})")))
    return _scalar(s)


def _union_or_list(parts: list[str], both: bool = False) -> Value:
    """Pieces joined by commas, "or", "and": relations and intervals join into one union (or, for
    two relations joined by "and", their intersection), else a list."""
    values = [parse(p) for p in parts if p.strip()]
    if both and len(values) == 2 and all(isinstance(v, Intervals) and len(v.parts) == 1 for v in values):
        return _intersection(values[0], values[1])
    if values and all(isinstance(v, (Intervals, Interval)) for v in values):
        intervals, variables = [], set()
        for v in values:
            intervals += list(v.parts) if isinstance(v, Intervals) else [v]
            variables |= {v.variable} if isinstance(v, Intervals) and v.variable else set()
        if len(variables) <= 1 and any(isinstance(v, Intervals) for v in values):
            return Intervals(tuple(intervals), next(iter(variables), ""))
    return _list(parts, "list")


def _intersection(a: Intervals, b: Intervals) -> Value:
    """`-2 < x and x < 3` as `(-2, 3)`: a lower and an upper bound on one variable; an empty result
    is the empty set; other pairs stay a list."""
    (x,), (y,) = a.parts, b.parts
    lower, upper = (x, y) if isinstance(y.lo, Infinity) else (y, x)
    if a.variable != b.variable or not isinstance(lower.hi, Infinity) or not isinstance(upper.lo, Infinity):
        return Seq("list", (a, b))
    interval = Interval(lower.lo, upper.hi, lower.left_closed, upper.right_closed)
    if isinstance(interval.lo, Number) and isinstance(interval.hi, Number) and (
            interval.lo.value > interval.hi.value or (interval.lo.value == interval.hi.value
                                                      and not (interval.left_closed and interval.right_closed))):
        return Seq("set", ())
    return Intervals((interval,), a.variable)
