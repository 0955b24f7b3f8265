"""Model text to sympy objects, without ever evaluating it as Python.

`sympy.sympify` (and `parse_expr`) run their input through `eval`, so an answer like
`__import__('os').system(...)` would run inside the grader. Plain syntax is therefore parsed only
when it is made of numbers, operators, brackets, one-letter variables and a short list of function
names; LaTeX goes through `latex2sympy2_extended`, a real parser.
"""

from __future__ import annotations

import functools
import re

_PLAIN = re.compile(r"[0-9a-zA-Z\s+\-*/^().,]*")
_FUNCTIONS = frozenset("sqrt sin cos tan cot sec csc asin acos atan log ln exp pi oo E I".split())


def is_plain_math(s: str) -> bool:
    """Whether `s` is safe to hand to sympy's plain-syntax parser (see module doc)."""
    if not _PLAIN.fullmatch(s) or len(s) > 400:
        return False
    return all(len(name) == 1 or name in _FUNCTIONS for name in re.findall(r"[A-Za-z_]\w*", s))


@functools.lru_cache(maxsize=4096)
def to_sympy(latex: str):
    """`latex` as a sympy object (LaTeX first, then safe plain syntax), or None."""
    import sympy
    from latex2sympy2_extended import latex2sympy

    try:
        return latex2sympy(latex)
    except Exception:  # noqa: BLE001 - not LaTeX: try plain syntax
        pass
    plain = latex.replace("\\", "")
    if not is_plain_math(plain):
        return None
    try:
        return sympy.sympify(plain.replace("^", "**").replace("ln", "log"), rational=True)
    except Exception:  # noqa: BLE001 - neither: not comparable symbolically
        return None
