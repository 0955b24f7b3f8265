"""Whether two answers are the same (the `strict` policy), given as strings.

Both are cleaned (`normalize.clean`) and parsed (`structure.parse`), then compared by shape:
integers exactly; decimals within half a unit of the last place the gold writes (a more precise
prediction that rounds to it counts); an exact gold against a decimal prediction when the
prediction is its correct rounding to at least four significant digits; percentages as either
reading (28% is 28 and 0.28); tuples in order, sets and bare lists in any order; intervals with
their brackets (an inequality counts as the interval it describes); matrices entry by entry;
named answers on their value when the gold has no name, on names and values when both have
them; words and numerals in another base as strings; everything else with sympy.

Run it where a runaway simplification can be stopped: `worker.py` calls it in a child process.
"""

from __future__ import annotations

import math
import random
import re
from fractions import Fraction

from jz3_jax.eval.grader.normalize import clean
from jz3_jax.eval.grader.sympy_parse import to_sympy
from jz3_jax.eval.grader.structure import (Equation, Expr, Infinity, Interval, Intervals, Matrix, Named, Number, Seq,
                                           Text, Value, parse, parse_number)

MIN_SIGNIFICANT = 4  # digits a decimal prediction needs before it may stand for an exact non-integer gold
MIN_ROUNDED_GOLD = 3  # digits a decimal gold needs before it is read as a rounding (0.4 is exact, 4.12 rounded)


def answers_equivalent(gold: str, pred: str) -> tuple[bool, str]:
    """(equal?, the step that decided: "string" or "structure" when equal, "different" or "empty"
    when not)."""
    g, p = clean(gold), clean(pred)
    if not p.text:
        return False, "empty"
    if g.text == p.text and g.percent == p.percent:
        return True, "string"
    gv, pv = parse(g.text), parse(p.text)
    if isinstance(gv, Number) and isinstance(pv, Number) and (g.percent or p.percent):
        equal = _percent_equal(gv, pv, g.percent, p.percent)
    else:
        equal = values_equal(gv, pv)
    return equal, "structure" if equal else "different"


def _percent_equal(g: Number, p: Number, g_percent: bool, p_percent: bool) -> bool:
    """28% equals 28 and 0.28; 0.28 equals 28%; a bare 28 never equals a bare 0.28."""
    if g_percent == p_percent:
        return numbers_equal(g, p)
    if g_percent:
        return numbers_equal(g, p) or numbers_equal(_scaled(g, Fraction(1, 100)), p)
    return numbers_equal(g, p) or numbers_equal(g, _scaled(p, Fraction(1, 100)))


def _scaled(n: Number, factor: Fraction) -> Number:
    decimals = None if n.decimals is None else n.decimals + 2
    return Number(n.value * factor, decimals, n.text)


def _half_unit(decimals: int) -> Fraction:
    return Fraction(1, 2 * 10 ** decimals)


def _significant(n: Number) -> int:
    digits = n.text.replace("-", "").replace("+", "").replace(".", "").replace(" ", "").lstrip("0")
    return sum(c.isdigit() for c in digits)


def numbers_equal(g: Number, p: Number) -> bool:
    """Exact for integers; a decimal gold holds to the precision it is written with (see module doc)."""
    if g.value == p.value:
        return True
    if g.decimals is None and p.decimals is None:
        return False
    if g.decimals is not None:  # a rounded gold: an exact prediction that rounds to it
        return p.decimals is None and _significant(g) >= MIN_ROUNDED_GOLD and \
            abs(p.value - g.value) <= _half_unit(g.decimals)
    if g.value.denominator == 1:
        return False  # an integer gold is exact
    return _significant(p) >= MIN_SIGNIFICANT and abs(p.value - g.value) <= _half_unit(p.decimals)


def values_equal(g: Value, p: Value) -> bool:
    """Whether prediction value `p` equals gold value `g` (see module doc)."""
    if isinstance(g, Equation) or isinstance(p, Equation):
        g, p = _as_equation(g, p), _as_equation(p, g)
        if isinstance(g, Equation) and isinstance(p, Equation):
            return equations_equal(g, p)
        if isinstance(p, Equation):  # "2 \cdot 1.5 = 3" for gold 3: the value it arrives at
            return _arrives_at(p) and values_equal(g, parse(p.rhs))
        if _names_a_quantity(g):  # |AB| = 1, V_1 : V_2 = 11 : 21: the gold's value
            return values_equal(parse(g.rhs), p)
        return False
    if isinstance(g, Named) or isinstance(p, Named):
        return _named_equal(g, p)
    if isinstance(g, (Interval, Intervals)) or isinstance(p, (Interval, Intervals)):
        return _intervals_equal(g, p)
    if isinstance(g, Matrix) or isinstance(p, Matrix):
        return _matrices_equal(g, p)
    if isinstance(g, Seq) or isinstance(p, Seq):
        return _sequences_equal(g, p)
    return scalars_equal(g, p)


def _as_equation(v: Value, other: Value) -> Value:
    """`y = 2x + 3` as an equation when compared with one (`2x + 4y - 3 = 0`)."""
    if isinstance(v, Named) and isinstance(other, Equation) and len(v.names) == 1 and isinstance(v.value, Expr):
        return Equation(v.names[0], v.value.latex)
    return v


def _arrives_at(p: Equation) -> bool:
    """Whether `p`'s right side is its value: the left names a quantity (`|AB| = 5`), is a formula
    (`\\pi r^2 = 9\\pi`) or a computation that equals it (`2 \\cdot 1.5 = 3`); not `2x = 5` or `7 = 6`."""
    if _names_a_quantity(p):
        return True
    lhs = p.lhs.replace(" ", "")
    if re.fullmatch(r"-?[\d.]*(?:\\cdot)?[a-zA-Z](?:\^\{?\d+\}?)?", lhs):
        return False  # an equation still to solve for its variable: 2x = 5, x^2 = 5
    if re.search(r"(?<!\\)[a-zA-Z]", re.sub(r"\\[a-zA-Z]+", "", p.lhs)):
        return True  # a formula and its value: \pi r^2 = 9\pi
    return values_equal(parse(p.rhs), parse(p.lhs))


def _names_a_quantity(g: Equation) -> bool:
    """An equation whose left side names a quantity (`|AB|`, `\\frac{NO}{BO}`, `V_1:V_2`) and whose
    right side is a constant: the constant is the answer."""
    lhs = re.sub(r"_\{?\w+\}?", "", g.lhs)
    return not re.search(r"\d", lhs) and not re.search(r"(?<!\\)[a-zA-Z]", re.sub(r"\\[a-zA-Z]+", "", g.rhs))


def _named_equal(g: Value, p: Value) -> bool:
    if isinstance(g, Named) and isinstance(p, Named):
        if len(g.names) == 1 and g.names == p.names:
            return values_equal(g.value, p.value)
        gold_by_name, pred_by_name = _by_name(g), _by_name(p)
        return gold_by_name is not None and pred_by_name is not None and gold_by_name.keys() == pred_by_name.keys() \
            and all(values_equal(v, pred_by_name[name]) for name, v in gold_by_name.items())
    if isinstance(g, Named):
        return values_equal(g.value, p)
    return values_equal(g, p.value)


def _by_name(v: Named) -> dict | None:
    """{name: value} of `x = 1, y = 2` or `(p, q) = (3, 2)`; None when the counts differ."""
    if len(v.names) == 1:
        return {v.names[0]: v.value}
    if isinstance(v.value, Seq) and len(v.value.items) == len(v.names):
        return dict(zip(v.names, v.value.items))
    return None


def _as_intervals(v: Value) -> Intervals | None:
    if isinstance(v, Intervals):
        return v
    if isinstance(v, Interval):
        return Intervals((v,))
    if isinstance(v, Seq) and v.kind == "tuple" and len(v.items) == 2:  # (a, b): an open interval here
        return Intervals((Interval(v.items[0], v.items[1], False, False),))
    return None


def _intervals_equal(g: Value, p: Value) -> bool:
    gi, pi = _as_intervals(g), _as_intervals(p)
    if gi is None or pi is None or len(gi.parts) != len(pi.parts):
        return False
    if gi.variable and pi.variable and gi.variable != pi.variable:
        return False

    def same(a: Interval, b: Interval) -> bool:
        return (a.left_closed, a.right_closed) == (b.left_closed, b.right_closed) and \
            values_equal(a.lo, b.lo) and values_equal(a.hi, b.hi)

    return _matched(gi.parts, pi.parts, same)


def _matched(gold_items, pred_items, same) -> bool:
    """Whether the items pair up one to one in some order (greedy is exact: `same` is an equivalence)."""
    if len(gold_items) != len(pred_items):
        return False
    remaining = list(pred_items)
    for g in gold_items:
        for i, p in enumerate(remaining):
            if same(g, p):
                del remaining[i]
                break
        else:
            return False
    return True


def _matrices_equal(g: Value, p: Value) -> bool:
    def rows(v: Value):
        if isinstance(v, Matrix):
            return v.rows
        if isinstance(v, Seq) and v.kind == "tuple":  # a vector written as a tuple: a column
            return tuple((item,) for item in v.items)
        return None

    gr, pr = rows(g), rows(p)
    if gr is None or pr is None:
        return False
    return len(gr) == len(pr) and all(len(a) == len(b) and all(values_equal(x, y) for x, y in zip(a, b))
                                      for a, b in zip(gr, pr))


def _sequences_equal(g: Value, p: Value) -> bool:
    if isinstance(g, Number) and isinstance(p, Seq) and p.kind == "pair" and g.decimals is not None:
        # "2,5" for 2.5: a decimal comma, unambiguous because the gold is one non-integer number
        joined = parse_number(f"{p.items[0].text}.{p.items[1].text}")
        return joined is not None and numbers_equal(g, joined)
    if not (isinstance(g, Seq) and isinstance(p, Seq)):
        return False
    if len(g.items) != len(p.items) and not (g.kind != "tuple" and p.kind != "tuple"):
        return False
    if {g.kind, p.kind} == {"set", "tuple"}:
        return False
    if g.kind == "tuple" and p.kind != "set":
        return all(values_equal(a, b) for a, b in zip(g.items, p.items))
    return _matched(_distinct(g.items), _distinct(p.items), values_equal)


def _distinct(items) -> list:
    """Items with repeats dropped: a set or a list of solutions names each value once."""
    kept: list = []
    for item in items:
        if not any(item == k or values_equal(k, item) for k in kept):
            kept.append(item)
    return kept


def scalars_equal(g: Value, p: Value) -> bool:
    """Numbers, words, infinities and expressions."""
    if isinstance(g, Number) and isinstance(p, Number):
        return numbers_equal(g, p)
    if isinstance(g, Infinity) or isinstance(p, Infinity):
        return isinstance(g, Infinity) and isinstance(p, Infinity) and g.sign == p.sign
    if isinstance(g, Text) or isinstance(p, Text):
        return _texts_equal(g, p)
    g_expr = g.latex if isinstance(g, Expr) else None
    p_expr = p.latex if isinstance(p, Expr) else None
    if isinstance(g, Number) and p_expr is not None:
        return _number_vs_expression(g, p_expr, gold_is_number=True)
    if isinstance(p, Number) and g_expr is not None:
        return _number_vs_expression(p, g_expr, gold_is_number=False)
    if g_expr is not None and p_expr is not None:
        return g_expr.replace(" ", "") == p_expr.replace(" ", "") or sympy_equal(g_expr, p_expr)
    return False


def _texts_equal(g: Value, p: Value) -> bool:
    if isinstance(g, Text) and isinstance(p, Text):
        return g.text.replace(" ", "") == p.text.replace(" ", "")
    if isinstance(g, Text) and "_" in g.text and isinstance(p, Number):  # 1011_2 against a bare 1011
        return p.decimals is None and p.value.denominator == 1 and g.text.split("_")[0] == str(p.value)
    return False


def _numeric(expr) -> complex | None:
    import sympy

    try:
        if getattr(expr, "free_symbols", None):
            return None
        return complex(sympy.N(expr, 30))
    except Exception:  # noqa: BLE001
        return None


def _number_vs_expression(number: Number, latex: str, gold_is_number: bool) -> bool:
    import sympy

    expr = to_sympy(latex)
    if expr is None or not isinstance(expr, sympy.Expr):
        return False
    if number.decimals is None:
        return sympy_equal_objects(sympy.Rational(number.value.numerator, number.value.denominator), expr)
    value = _numeric(expr)
    if value is None or abs(value.imag) > 1e-12:
        return False
    exact = Fraction(repr(value.real))
    if gold_is_number:
        return numbers_equal(number, Number(exact, None, latex))
    return numbers_equal(Number(exact, None, latex), number) if exact.denominator != 1 else exact == number.value


def sympy_equal(a: str, b: str) -> bool:
    """Whether two LaTeX expressions are equal as sympy sees them."""
    if _letters(a) != _letters(b) and {c.lower() for c in _letters(a)} == {c.lower() for c in _letters(b)}:
        return False  # 3R^2 is not 3r^2 (the LaTeX parser folds case)
    x, y = to_sympy(a), to_sympy(b)
    return x is not None and y is not None and sympy_equal_objects(x, y)


def _letters(latex: str) -> set[str]:
    return set(re.findall(r"[a-zA-Z]", re.sub(r"\\[a-zA-Z]+", "", latex)))


def sympy_equal_objects(x, y) -> bool:
    """Equal by structure, by simplification of the difference, or numerically (at random points
    when symbols remain)."""
    import sympy

    try:
        if x == y:
            return True
        if not (isinstance(x, sympy.Expr) and isinstance(y, sympy.Expr)):
            return sympy.simplify(x) == sympy.simplify(y)
        diff = sympy.simplify(x - y)
        if diff == 0:
            return True
        symbols = sorted(diff.free_symbols, key=str)
        if not symbols:
            if diff.is_Rational:  # exact: 2^64 + 1 is not 2^64, however close
                return False
            value, scale = _numeric(diff), _numeric(x)
            return value is not None and scale is not None and math.isfinite(abs(scale)) and \
                abs(value) <= 1e-9 * max(1.0, abs(scale))
        rng = random.Random(0)
        for _ in range(3):
            point = {s: sympy.Rational(rng.randint(11, 97), rng.randint(7, 13)) for s in symbols}
            value, scale = _numeric(diff.subs(point)), _numeric(x.subs(point))
            if value is None or scale is None or not math.isfinite(abs(scale)) or \
                    abs(value) > 1e-9 * max(1.0, abs(scale)):
                return False
        return True
    except Exception:  # noqa: BLE001 - sympy could not decide: not equal
        return False


def equations_equal(g: Equation, p: Equation) -> bool:
    """The same equation: side by side, or one side minus the other equal up to a nonzero factor."""
    if values_equal(parse(g.lhs), parse(p.lhs)) and values_equal(parse(g.rhs), parse(p.rhs)):
        return True
    import sympy

    parts = [to_sympy(s) for s in (g.lhs, g.rhs, p.lhs, p.rhs)]
    if any(x is None or not isinstance(x, sympy.Expr) for x in parts):
        return False
    try:
        dg, dp = sympy.simplify(parts[0] - parts[1]), sympy.simplify(parts[2] - parts[3])
        if dg == 0 or dp == 0:
            return False
        ratio = sympy.simplify(dg / dp)
        return not ratio.free_symbols and ratio != 0
    except Exception:  # noqa: BLE001
        return False
