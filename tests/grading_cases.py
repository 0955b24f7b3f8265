"""Independent, hand-labelled test cases for the answer grader (extract + grade).

Data and builders only -- no test functions.  Standard library only.

Each `Case` holds the gold answer as the dataset stores it, the WHOLE model output,
and the label: is the answer the output commits to equivalent to the gold?

Labels are what is mathematically right, following the consensus of public graders'
suites (Hendrycks MATH `is_equiv`, PRM800K, lm-eval minerva_math, Qwen2.5-Math /
math-evaluation-harness `grader.py`, math-verify).  Where a label depends on a
convention, the group carries a comment naming it.  Conventions used throughout:

  C1 final answer:  the answer is what the output finally commits to -- the last
     \\boxed{}/\\fbox{} (several boxes only combine when the gold has several
     parts), the Minerva "Final Answer: The final answer is X. I hope it is
     correct.", "The answer is X" (X ends at the sentence end), "#### X", a bold or
     "Answer:" line, else the last $...$ of the final line.  Values that only appear
     in the working -- even the gold itself -- do not count.  Text a few-shot model
     runs on with after its answer (a new "Problem:"/"Question:") is not the answer.
  C2 exact values:  numbers compare by exact value (0.5 = 0.50 = 1/2, 7 = 7.0);
     no rounding tolerance in `label`: 3.1416 != 3.14, 2.50001 != 2.5, a rounded
     decimal is not an exact fraction (4.67 != 14/3), integers compare exactly.
  C3 paper_label:  set only where the JiuZhang / math-evaluation-harness
     ("paper") grader's NUMERIC decision differs from `label`: math_equal with
     relative tolerance 1e-4, and percentage variants (ref/100, ref, ref*100) when
     both sides are plain numbers (after it strips %, $, units).  Its string
     normalisation quirks (e.g. dropping any short "y =" prefix) are not annotated.
  C4 percent:  a percent sign is a unit next to the bare same number (gold 28 vs
     28\\% True: MATH stores "what percent" answers bare) and a literal percent also
     equals its fraction (25\\% = 0.25).  Bare 25 vs bare 0.25 is False.
  C5 units:  units, currency signs and degree marks are dropped (10 weeks = 10,
     \\$12.50 = 12.5, 30^\\circ = 30).  No case compares two different units.
  C6 collections:  MATH comma lists of solutions ("enter all solutions separated by
     commas") and \\{...\\} sets are unordered; tuples / ordered pairs and intervals
     are ordered, and bracket types matter.  "a \\pm b" means the two values a+b, a-b.
  C7 names:  a prefix "k = 4" is fine when the gold is bare (or names the same
     variable); when both name variables the names must agree (x = 2 vs y = 2 False).
  C8 separators:  thousands separators "1,000", "1{,}000", "10,\\!080", "1 000" are
     ignored; a decimal comma counts only where unambiguous ("0,75": a group after a
     leading 0 cannot be a thousands group).
  C9 bases:  base-n numerals compare digit by digit with the same base; the
     subscript's braces do not matter (10_{2} = 10_2).
  C10 text:  text answers compare case-insensitively; \\text{}, \\textbf{},
     \\mathrm{} wrappers are ignored; "(C)" = "C" for a lettered option.
  C11 multiple choice:  gold is a letter; the output's committed option letter, or a
     final answer equal to that option's text, decides.
"""
from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import re
from fractions import Fraction


@dataclasses.dataclass(frozen=True)
class Case:
    gold: str
    prediction: str
    label: bool
    shape: str
    dataset: str = "math"
    choices: tuple[str, ...] = ()
    paper_label: bool | None = None


CASES: list[Case] = []


def _add(shape: str, rows, dataset: str = "math") -> None:
    """rows: (gold, prediction, label) or (gold, prediction, label, paper_label)."""
    for row in rows:
        gold, prediction, label = row[:3]
        paper = row[3] if len(row) > 3 else None
        CASES.append(Case(gold, prediction, label, shape, dataset, (), paper))


# ---------------------------------------------------------------------------
# bare answers: the whole generation is the answer
# ---------------------------------------------------------------------------
_add("bare", [
    ("1000", "1 000", True),                      # C8 spaced thousands
    ("1000", "1 001", False),
    ("1000", "100", False),
    (r"\frac{1}{3}", r"$\frac13$", True),
    (r"\frac{1}{3}", r"$\frac31$", False),
    (r"\frac{1}{3}", "1/3", True),
    (r"\frac{1}{3}", "3", False),
    (r"2\sqrt{3}", r"$2\sqrt{3}$.", True),
    (r"2\sqrt{3}", r"$3\sqrt{2}$.", False),
    (r"2\sqrt{3}", r"$\sqrt{12}$", True),
    ("-7", "-7", True),
    ("7", "-7", False),
    ("-7", "7", False),
    (r"\frac{\pi}{2}", r"\pi/2", True),
    (r"\frac{\pi}{2}", r"\pi/3", False),
    (r"\frac{\pi}{2}", r"2/\pi", False),
    ("42", "42\n", True),
    ("42", "  $42$  ", True),
    ("42", "24", False),
    ("0.5", "0.5", True),
    ("0.5", "5", False),
    (r"3\sqrt{2}", r"3\sqrt2", True),
    ("12", "$12$", True),
    ("12", "$21$", False),
    (r"\sqrt{2}", r"$\sqrt{2}$", True),
    ("2", r"$\sqrt{2}$", False),
    (r"-\frac{1}{2}", "-0.5", True),
    (r"-\frac{1}{2}", "0.5", False),
    (r"\frac{5}{2}", r"$\dfrac{5}{2}$.", True),
    ("9", r"\(9\)", True),
    ("9", r"\[ 9 \]", True),
    ("9", r"\[ 6 \]", False),
    ("0", "0", True),
    ("0", "1", False),
])

# ---------------------------------------------------------------------------
# Minerva closing sentence (C1)
# ---------------------------------------------------------------------------
_M = "\nFinal Answer: The final answer is {}. I hope it is correct."
_add("minerva", [
    ("14400", "Each half can be arranged in $5! = 120$ ways, so there are $120^2$ arrangements." + _M.format("14400"), True),
    ("14400", "There are $120 \\cdot 120$ arrangements." + _M.format("$14400$"), True),
    ("14400", "There are $120 \\cdot 120$ arrangements." + _M.format("$14{,}400$"), True),
    ("14400", "There are $120$ ways for each half and $12$ choices of ends, so $120 \\cdot 12$ in all." + _M.format("$1440$"), False),
    # the gold appears in the working but the committed answer differs
    ("14400", "If both halves were free we would get $120^2 = 14400$, but the rotation makes every "
              "arrangement appear $10$ times, so we divide by $10$." + _M.format("$1440$"), False),
    ("1440", "If both halves were free we would get $120^2 = 14400$, but the rotation makes every "
             "arrangement appear $10$ times, so we divide by $10$." + _M.format("$1440$"), True),
    (r"\frac{7}{2}", "Adding the equations gives $2x = 7$." + _M.format(r"$\frac{7}{2}$"), True),
    (r"\frac{7}{2}", "Adding the equations gives $2x = 7$." + _M.format("$3.5$"), True),
    (r"\frac{7}{2}", "Adding the equations gives $7x = 2$." + _M.format(r"$\frac{2}{7}$"), False),
    ("(3,2)", "Substituting back, $q = 2$ and $p = 3$." + _M.format("$(3,2)$"), True),
    ("(3,2)", "Substituting back, $q = 3$ and $p = 2$." + _M.format("$(2,3)$"), False),
    (r"2\sqrt{5}", "The distance is $\\sqrt{4^2 + 2^2}$." + _M.format(r"$\sqrt{20}$"), True),
    (r"2\sqrt{5}", "The distance is $\\sqrt{3^2 + 1^2}$." + _M.format(r"$\sqrt{10}$"), False),
    ("-3", "The slope is $\\frac{-6}{2}$." + _M.format("$-3$"), True),
    ("-3", "The slope is $\\frac{6}{2}$." + _M.format("$3$"), False),
    ("1.6", "$s = \\alpha f = 1.6$ cm." + _M.format("1.6"), True),
    ("1.6", "$s = \\alpha f = 1.5$ cm." + _M.format("1.5"), False),
    ("x^2 + 1", "Expanding, the remainder is $x^2 + 1$." + _M.format("$x^2+1$"), True),
    ("x^2 + 1", "Expanding, the remainder is $x^2 - 1$." + _M.format("$x^2-1$"), False),
    # C1: a few-shot model that runs on into the next problem still answered 10
    ("10", "Since $2 \\cdot 5 = 10$, she has $10$ marbles." + _M.format("10")
           + "\n\nProblem:\nIf $3x = 12$, what is $x$?\n\nSolution:\nDividing by $3$ gives $x = 4$.", True),
    ("4", "Since $2 \\cdot 5 = 10$, she has $10$ marbles." + _M.format("10")
          + "\n\nProblem:\nIf $3x = 12$, what is $x$?\n\nSolution:\nDividing by $3$ gives $x = 4$.", False),
])

# scientific notation (minerva_math golds such as "4.5e33")
_add("scientific", [
    ("4.5e33", "$L = 4 \\pi R^2 \\sigma T^4 \\simeq 4.5 \\times 10^{33}$ erg/s." + _M.format(r"$4.5 \times 10^{33}$"), True),
    ("4.5e33", "$L = 4 \\pi R^2 \\sigma T^4 \\simeq 4.5 \\times 10^{34}$ erg/s." + _M.format(r"$4.5 \times 10^{34}$"), False),
    ("6.5e-7", r"The answer is $6.5 \times 10^{-7}$.", True),
    ("6.5e-7", r"The answer is $6.5 \times 10^{7}$.", False),
    (r"3 \times 10^{8}", r"$\boxed{300000000}$", True),
    (r"3 \times 10^{8}", r"$\boxed{3 \times 10^{6}}$", False),
])

# ---------------------------------------------------------------------------
# "The answer is X" sentences (C1: X ends at the sentence end)
# ---------------------------------------------------------------------------
_S5 = "Adding the two parts gives 2 + 3. The answer is 5. This follows from 2 + 3 = 5 and 5 < 7."
_S72 = (r"The roots sum to $7$ and there are $2$ of them, so the answer is $\frac{7}{2}$, since the "
        r"average of the roots is their sum divided by $2$.")
_S10 = "Therefore, the final answer is 10. Note that 12 would be too large, since 12 > 11."
_S8 = "I think the answer is 8 because the pattern repeats every 4 terms."
_add("the_answer_is", [
    ("5", _S5, True),
    ("7", _S5, False),
    (r"\frac{7}{2}", _S72, True),
    ("2", _S72, False),
    ("3.5", "The answer is 3.5.", True),
    ("3", "The answer is 3.5.", False),
    ("35", "The answer is 3.5.", False),
    ("12", "So the answer is 12 apples.", True),
    ("-4", "Hence, the answer is $-4$.", True),
    ("4", "Hence, the answer is $-4$.", False),
    ("10", "The answer is: 10", True),
    ("10", _S10, True),
    ("12", _S10, False),
    ("11", _S10, False),
    ("8", _S8, True),
    ("4", _S8, False),
    ("-1", "Thus the answer is -1.", True),
    ("1", "Thus the answer is -1.", False),
    (r"\frac{1}{4}", r"The probability is $\frac{1}{4}$, so the answer is 1/4.", True),
    (r"\frac{1}{4}", r"One of the $4$ cases works, so the answer is 1/3.", False),
    ("2", "The answer is $x=2$.", True),
])

# ---------------------------------------------------------------------------
# \boxed{} and \fbox{} (C1: the last box is the answer)
# ---------------------------------------------------------------------------
_B_SIN = r"By the unit circle, $\sin 60^\circ = \frac{\sqrt{3}}{2}$, so the answer is $\boxed{\frac{\sqrt{3}}{2}}$."
_B_INTER = ("First, the number of rows is $\\boxed{3}$.\n\nEach row has $4$ seats, so the total number of "
            "seats is $3 \\times 4 = \\boxed{12}$.")
_B_POLAR = r"We have $r = 3$ and $\theta = \frac{\pi}{2}$, so the point is $\boxed{\left(3,\frac{\pi}{2}\right)}$."
_add("boxed", [
    (r"\frac{\sqrt{3}}{2}", _B_SIN, True),           # nested braces
    (r"\frac{\sqrt{2}}{2}", _B_SIN, False),
    ("9", "Hence the smallest such number is \\fbox{9}.", True),
    ("8", "Hence the smallest such number is \\fbox{9}.", False),
    ("9", "The answer is \\boxed {9}.", True),
    ("12", _B_INTER, True),                            # intermediate box, then the final one
    ("3", _B_INTER, False),
    (r"\left( 3, \frac{\pi}{2} \right)", _B_POLAR, True),
    (r"\left( 3, \frac{\pi}{2} \right)", r"So the point is $\boxed{\left(\frac{\pi}{2}, 3\right)}$.", False),
    ("3", r"Solving the linear equation, $\boxed{x = 3}$.", True),
    ("-3", r"Solving the linear equation, $\boxed{x = 3}$.", False),
    (r"\frac{1}{2}", r"$\boxed{\dfrac{1}{2}}$", True),
    (r"\frac{1}{2}", r"$\boxed{\dfrac{1}{3}}$", False),
    ("6", "Each face has area $\\boxed{6}$, and there are $6$ faces, so the total surface area is $\\boxed{36}$.", False),
    ("36", "Each face has area $\\boxed{6}$, and there are $6$ faces, so the total surface area is $\\boxed{36}$.", True),
])

# several boxes combine only when the gold has several parts (C1); lists of
# solutions are unordered (C6)
_MB = r"Factoring gives $(x-2)(x-5) = 0$, so $x = \boxed{2}$ and $x = \boxed{5}$."
_add("multi_boxed", [
    ("2, 5", _MB, True),
    ("2, 5", r"Factoring gives $(x-2)(x-6) = 0$, so $x = \boxed{2}$ and $x = \boxed{6}$.", False),
    ("2, 5", r"The solutions are $\boxed{5}$ and $\boxed{2}$.", True),
    ("2, 5", r"Only $x = 2$ satisfies the original equation, so the solution is $\boxed{2}$.", False),
    ("-1, 3", r"So $x = \boxed{-1}$ or $x = \boxed{3}$.", True),
    ("-1, 3", r"So $x = \boxed{1}$ or $x = \boxed{3}$.", False),
    ("2, 5", r"The solutions are $\boxed{2, 5}$.", True),
    ("2, 5", r"The solutions are $\boxed{2}, \boxed{5}$.", True),
    ("1, 2, 3", r"The roots are $\boxed{1}$, $\boxed{2}$, and $\boxed{3}$.", True),
    ("1, 2, 3", r"The roots are $\boxed{1}$, $\boxed{2}$, and $\boxed{4}$.", False),
    ("3", r"The root is $x = \boxed{3}$; checking, $3^2 - 9 = 0$, so the answer is $\boxed{3}$.", True),
])

# ---------------------------------------------------------------------------
# GSM8K "#### N" (gold is the number after ####, commas removed)
# ---------------------------------------------------------------------------
_G18 = ("Janet sells 16 - 3 - 4 = 9 duck eggs a day.\nShe makes 9 * 2 = $18 every day at the farmer's market.\n#### 18")
_G72 = "Each of the 8 bags holds 9 apples, so there are 8 * 9 = 72 apples.\n#### {}"
_G_RUNON = (_G18 + "\n\nQuestion: A robe takes 2 bolts of blue fiber and half that much white fiber. How many "
            "bolts in total does it take?\nAnswer: It takes 2/2 = 1 bolt of white fiber, so 2 + 1 = 3 bolts.\n#### 3")
_add("gsm8k_hashes", [
    ("18", _G18, True),
    ("9", _G18, False),
    ("72", _G72.format("72"), True),
    ("72", _G72.format("72.00"), True),
    ("72", _G72.format("$72"), True),
    ("72", _G72.format("70"), False),
    ("72", _G72.format("0.72"), False, True),        # C3: ref/100
    ("72", _G72.format("7200"), False, True),        # C3: ref*100
    ("72", _G72.format("7.2"), False),
    ("1080", "The yearly total is 12 * 90 = 1,080 dollars.\n#### 1,080", True),
    ("2500", "He saved 5 * 500 = 2,500 dollars.\n#### 2,500", True),
    ("-5", "The temperature fell from 3 to -5 degrees.\n#### -5", True),
    ("5", "The temperature fell from 3 to -5 degrees.\n#### -5", False),
    ("18", _G_RUNON, True),                          # C1: run-on into a new question
    ("3", _G_RUNON, False),
], dataset="gsm8k")

_add("the_answer_is", [
    ("18", "She has 9 eggs left to sell at $2 each, so she makes 9 * 2 = 18 dollars.\nThe answer is 18.", True),
    ("9", "She has 9 eggs left to sell at $2 each, so she makes 9 * 2 = 18 dollars.\nThe answer is 18.", False),
], dataset="gsm8k")

# a plain final sentence ending in the number (no marker at all)
_add("last_number", [
    ("18", "Janet has 16 - 3 - 4 = 9 eggs left. She sells them for $2 each, so she makes 9 * 2 = 18 dollars every day.", True),
    ("9", "Janet has 16 - 3 - 4 = 9 eggs left. She sells them for $2 each, so she makes 9 * 2 = 18 dollars every day.", False),
    ("45", "The train travels 90 miles in 2 hours, so its speed is 90 / 2 = 45 miles per hour.", True),
], dataset="gsm8k")

# ---------------------------------------------------------------------------
# markdown bold and "Answer:" lines
# ---------------------------------------------------------------------------
_BOLD_STEPS = "**Step 1:** 3 + 4 = 7\n**Step 2:** 7 + 8 = 15\n\n**Answer: 15**"
_add("bold", [
    ("72", "She has 8 bags with 9 apples each, so she has 8 x 9 = 72 apples.\n\n**72**", True),
    ("72", "Each of the 8 bags holds 9 apples.\n\n**Answer: 72**", True),
    ("27", "Each of the 8 bags holds 9 apples.\n\n**Answer: 72**", False),
    (r"\frac{3}{4}", "Three of the four outcomes work.\n\n**Answer:** $\\frac{3}{4}$", True),
    (r"\frac{3}{4}", "Four of the three outcomes work.\n\n**Answer:** $\\frac{4}{3}$", False),
    ("72", "We add 35 and 35.\n\n**Final Answer:** 70", False),
    ("72", "The total is **72** apples.", True),
    ("15", _BOLD_STEPS, True),
    ("7", _BOLD_STEPS, False),
])

_add("answer_line", [
    ("72", "Each of the 8 boxes holds 9 cans.\nAnswer: 72", True),
    ("27", "Each of the 8 boxes holds 9 cans.\nAnswer: 72", False),
    ("4", "Solving $3x = 12$ gives $x = 4$.\nFinal answer: $x = 4$", True),
    ("12", "Solving $3x = 12$ gives $x = 4$.\nFinal answer: $x = 4$", False),
    (r"\frac{3}{4}", "ANSWER: $\\frac{3}{4}$", True),
    ("0.75", "Answer: 3/4", True),
    ("0.75", "Answer: 4/3", False),
    ("5", "Answer: 5 (it is the only prime in the list)", True),
])

# the answer in the last $...$ of the final line (after "=" when it is an equation)
_LD14 = "We compute $3 + 4 = 7$ and then double it.\nSo the total is $14$."
_LD24 = r"The legs are $6$ and $8$, so the area is $\frac{1}{2} \cdot 6 \cdot 8 = 24$."
_LD16 = r"There are $36$ outcomes and $6$ favourable ones, so the probability is $\frac{6}{36} = \frac{1}{6}$."
_add("last_dollar", [
    ("14", _LD14, True),
    ("7", _LD14, False),
    ("24", _LD24, True),
    ("6", _LD24, False),
    (r"\frac{1}{6}", _LD16, True),
    (r"\frac{1}{36}", _LD16, False),
    ("48", "The perimeter is $2(10 + 14) = 48$ units.", True),
])

# ---------------------------------------------------------------------------
# named answers (C7)
# ---------------------------------------------------------------------------
_add("named", [
    ("(3,2)", r"Solving the system, $\boxed{(p,q)=(3,2)}$.", True),
    ("(3,2)", r"Solving the system, $\boxed{(p,q) = (2,3)}$.", False),
    ("2x + 3", r"Comparing coefficients, $\boxed{f(x) = 2x + 3}$.", True),
    ("2x + 3", r"Comparing coefficients, $\boxed{f(x) = 2x - 3}$.", False),
    ("1, 2", r"Substituting back gives $y = 2$, so $\boxed{x = 1, y = 2}$.", True),
    ("1, 2", r"Substituting back gives $y = 3$, so $\boxed{x = 1, y = 3}$.", False),
    ("y = 2", r"The horizontal asymptote is $\boxed{x = 2}$.", False),
    ("y = 2", r"The horizontal asymptote is $\boxed{y = 2}$.", True),
    ("y = 2", r"The horizontal asymptote is $\boxed{y=2}$.", True),
    ("4", r"Therefore $\boxed{k = 4}$.", True),
    ("4", r"Therefore $\boxed{k = 5}$.", False),
    ("x=5", r"Checking both candidates, only $5$ works, so the answer is $\boxed{5}$.", True),
    ("x=5", r"Checking both candidates, only $-5$ works, so $\boxed{x = -5}$.", False),
    ("y = 2x + 3", r"The image is the line $\boxed{y = 3 + 2x}$.", True),
    ("y = 2x + 3", r"The image is the line $\boxed{y=2x-3}$.", False),
    ("y = 2x + 3", r"The image is the line $\boxed{x = 2y + 3}$.", False),
    ("-2", "Dividing both sides by $3$, we find $x = -2$.", True),
    ("5", "Final Answer: The final answer is $n = 5$. I hope it is correct.", True),
    ("6", "Final Answer: The final answer is $n = 5$. I hope it is correct.", False),
])

# ---------------------------------------------------------------------------
# intervals and inequalities (C6: bracket types matter; unions commute)
# ---------------------------------------------------------------------------
_U = r"(-\infty, 3) \cup (5, \infty)"
_add("interval", [
    (r"[5,\infty)", r"$\boxed{[5, \infty)}$", True),
    (r"[5,\infty)", r"$\boxed{(5,\infty)}$", False),
    (_U, r"$\boxed{(-\infty,3)\cup(5,\infty)}$", True),
    (_U, r"$\boxed{(5,\infty) \cup (-\infty,3)}$", True),
    (_U, r"$\boxed{(-\infty,3] \cup [5,\infty)}$", False),
    (_U, r"$\boxed{(3,5)}$", False),
    ("(1,2)", r"$\boxed{(1,2]}$", False),
    ("[-2,7]", r"$\boxed{[-2,7)}$", False),
    (r"x \in [-2,7]", r"$\boxed{[-2,7]}$", True),
    ("[-2,7]", r"$\boxed{x \in [-2, 7]}$", True),
    (r"(2,\infty)", r"$\boxed{(2, \infty)}$", True),
    (r"(2,\infty)", r"$\boxed{(-\infty, 2)}$", False),
    (r"(0,9) \cup (9,36)", r"$\boxed{(0,36)}$", False),
    (r"(0,9) \cup (9,36)", r"$\boxed{(0,9)\cup(9,36)}$", True),
    (r"\left(\frac{3}{5},\frac{8}{3}\right]", r"$\boxed{\left(0.6, \frac{8}{3}\right]}$", True),
    (r"\left(\frac{3}{5},\frac{8}{3}\right]", r"$\boxed{\left(\frac{3}{5}, \frac{8}{3}\right)}$", False),
    (r"(-\infty,\infty)", r"$\boxed{\mathbb{R}}$", True),
    (r"(-\infty,\infty)", r"$\boxed{(0,\infty)}$", False),
    (r"(-\infty, 0]", r"$\boxed{(-\infty,0)}$", False),
    ("[2,5]", "The answer is [2, 5].", True),
    ("[2,5]", "The answer is [5, 2].", False),
])

_add("inequality", [
    ("(-793,10)", r"Combining the two conditions, $\boxed{-793<a<10}$.", True),
    ("(-793,10)", r"Combining the two conditions, $\boxed{-793 \le a < 10}$.", False),
    (r"[5,\infty)", r"Subtracting $3$ from both sides gives $2x \geq 10$, so $x \geq 5$ is the solution.", True),
    (r"[5,\infty)", r"$\boxed{x > 5}$", False),
    (r"[5,\infty)", r"$\boxed{x \ge 5}$", True),
    (r"[5,\infty)", r"$\boxed{x \le 5}$", False),
    (r"(2,\infty)", r"$\boxed{x > 2}$", True),
    (r"(2,\infty)", r"$\boxed{x \geq 2}$", False),
    (r"(-\infty, 0]", r"$\boxed{x \leq 0}$", True),
    ("(3,4]", r"$\boxed{3 < x \le 4}$", True),
    ("(3,4]", r"$\boxed{3 \le x < 4}$", False),
    (_U, r"$\boxed{x < 3 \text{ or } x > 5}$", True),
    (_U, r"$\boxed{3 < x < 5}$", False),
    ("[-2,7]", r"$\boxed{-2 \leq x \leq 7}$", True),
])

# ---------------------------------------------------------------------------
# sets (unordered), tuples (ordered), lists of solutions (unordered) -- C6
# ---------------------------------------------------------------------------
_add("set", [
    (r"\{1,2,3\}", r"$\boxed{\{3,1,2\}}$", True),
    (r"\{1,2,3\}", r"$\boxed{\{1,2,4\}}$", False),
    (r"\{1,2,3\}", r"$\boxed{\{1,2\}}$", False),
    (r"\{1\pm\sqrt{5},-2\}", r"$\boxed{\{-2, 1+\sqrt{5}, 1-\sqrt{5}\}}$", True),
    (r"\{1\pm\sqrt{5},-2\}", r"$\boxed{\{2, 1+\sqrt{5}, 1-\sqrt{5}\}}$", False),
    (r"\{-1,0,1\}", r"$\boxed{\{0, \pm 1\}}$", True),
    (r"\emptyset", r"$\boxed{\varnothing}$", True),
    (r"\emptyset", r"$\boxed{\{0\}}$", False),
])

_add("tuple", [
    ("(1,2)", r"$\boxed{(2,1)}$", False),
    ("(1,2)", r"$\boxed{(1, 2)}$", True),
    ("(6,31,-1)", r"$\boxed{(6, 31, -1)}$", True),
    ("(6,31,-1)", r"$\boxed{(6,-1,31)}$", False),
    ("(6,31,-1)", r"$\boxed{(6,31,1)}$", False),
    (r"\left( \frac{3}{2}, -13 \right)", r"$\boxed{(1.5, -13)}$", True),
    (r"\left( \frac{3}{2}, -13 \right)", r"$\boxed{\left(-13, \frac{3}{2}\right)}$", False),
    ("(1,-16,-4,43)", r"$\boxed{(1, -16, -4, 43)}$", True),
    ("(1,-16,-4,43)", r"$\boxed{(1, -16, 4, 43)}$", False),
    ("(8,-2)", "Solving the two equations, the point is $P = (8,-2)$.", True),
    ("(8,-2)", "The answer is (-2, 8).", False),
])

_add("list", [
    ("1, -2", r"$\boxed{-2, 1}$", True),
    ("1,-2", r"$\boxed{1, 2}$", False),
    ("1,-2", r"$\boxed{1}$", False),
    ("3, 5, 7", r"The roots are $\boxed{7, 5, 3}$.", True),
    ("3, 5, 7", r"The roots are $\boxed{3, 5}$.", False),
    ("3, 5, 7", r"The roots are $\boxed{3,5,7,9}$.", False),
    (r"1 \pm \sqrt{19}", r"$\boxed{1+\sqrt{19}, 1-\sqrt{19}}$", True),
    (r"1 \pm \sqrt{19}", r"$\boxed{1+\sqrt{19}}$", False),
    ("-3, 3", r"$\boxed{\pm 3}$", True),
    ("3", r"$\boxed{\pm 3}$", False),
])

# ---------------------------------------------------------------------------
# matrices and vectors
# ---------------------------------------------------------------------------
_P = r"\begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}"
_V3 = r"\begin{pmatrix} -1/3 \\ 2/3 \\ 5/3 \end{pmatrix}"
_NI = r"\begin{pmatrix} -1 & 0 \\ 0 & -1 \end{pmatrix}"
_add("matrix", [
    (_P, r"$\boxed{\begin{bmatrix} 1 & 2 \\ 3 & 4 \end{bmatrix}}$", True),
    (_P, r"$\boxed{\begin{pmatrix}1&2\\3&4\end{pmatrix}}$", True),
    (_P, r"$\boxed{\begin{pmatrix} 1 & 2 \\ 3 & 5 \end{pmatrix}}$", False),
    (_P, r"$\boxed{\begin{pmatrix} 1 & 3 \\ 2 & 4 \end{pmatrix}}$", False),
    (r"\begin{pmatrix} 1/2 \\ 3 \end{pmatrix}", r"$\boxed{\begin{pmatrix} 0.5 \\ 3 \end{pmatrix}}$", True),
    (r"\begin{pmatrix} 1/2 \\ 3 \end{pmatrix}", r"$\boxed{\begin{pmatrix} \frac{1}{2} \\ 3 \end{pmatrix}}$", True),
    (r"\begin{pmatrix} 1/2 \\ 3 \end{pmatrix}", r"$\boxed{\begin{pmatrix} 2 \\ 3 \end{pmatrix}}$", False),
    (_V3, "Solving the system, \\[\\mathbf{v} = \\boxed{\\begin{pmatrix} -\\frac{1}{3} \\\\ \\frac{2}{3} \\\\ \\frac{5}{3} \\end{pmatrix}}.\\]", True),
    (_V3, "Solving the system, \\[\\mathbf{v} = \\boxed{\\begin{pmatrix} \\frac{1}{3} \\\\ \\frac{2}{3} \\\\ \\frac{5}{3} \\end{pmatrix}}.\\]", False),
    (_NI, r"$\boxed{\begin{pmatrix}-1&0\\0&-1\end{pmatrix}}$", True),
    (_NI, r"$\boxed{\begin{pmatrix}1&0\\0&1\end{pmatrix}}$", False),
    (r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", r"$\boxed{\begin{pmatrix} 1 & 2 \end{pmatrix}}$", False),
    (r"\begin{pmatrix} 2 & 0 \\ 0 & 2 \end{pmatrix}", r"$\boxed{\begin{pmatrix} 2 & 0 \\ 0 & 2 \\ \end{pmatrix}}$", True),
])

# ---------------------------------------------------------------------------
# units, currency, words (C5)
# ---------------------------------------------------------------------------
_add("units", [
    (r"28\%", "The answer is 28 percent.", True),
    ("10", "It takes $10$ weeks." + _M.format("10 weeks"), True),
    ("10", "It takes $12$ weeks." + _M.format("12 weeks"), False),
    ("5", r"$\boxed{5\text{ miles}}$", True),
    ("5", r"$\boxed{6\text{ miles}}$", False),
    (r"15\mbox{ cm}^2", r"$\boxed{15}$", True),
    (r"15\mbox{ cm}^2", r"$\boxed{15 \text{ cm}^2}$", True),
    (r"15\mbox{ cm}^2", r"$\boxed{16 \text{ cm}^2}$", False),
    (r"864 \mbox{ inches}^2", r"The surface area is $\boxed{864}$ square inches.", True),
    (r"864 \mbox{ inches}^2", r"The surface area is $\boxed{846}$ square inches.", False),
    ("12", r"$\boxed{12 \textnormal{ feet}}$", True),
    ("12", r"$\boxed{12\ \text{ft}}$", True),
    ("12.5", "She paid $12.50 in total.\nThe answer is $12.50.", True),
    ("12.5", r"The answer is \$12.50.", True),
    ("12.5", r"The answer is \$125.", False),
    ("12.5", r"The answer is \$1250.", False, True),     # C3: ref*100
    (r"\$18.90", r"$\boxed{18.90}$", True),
    (r"\$18.90", r"$\boxed{\$18.9}$", True),
    (r"\$18.90", r"$\boxed{\$18.09}$", False),
    ("10", r"$\boxed{10cm}$", True),
    ("10", r"$\boxed{10 \mathrm{~cm}}$", True),
    ("10", r"$\boxed{100 \mathrm{~cm}}$", False),
    (r"5.4 \text{ cents}", r"$\boxed{5.4}$", True),
    (r"5.4 \text{ cents}", r"$\boxed{5.5 \text{ cents}}$", False),
    (r"\frac{270}7\text{ degrees}", r"$\boxed{\frac{270}{7}}$", True),
    (r"\$32,\!348", r"$\boxed{32348}$", True),
    (r"\$32,\!348", r"$\boxed{\$32,348}$", True),
    (r"\$32,\!348", r"$\boxed{32,438}$", False),
    (r"\$36", "The original price was $36.\nAnswer: 36", True),
    (r"\$36", r"Answer: \$63", False),
])

# C4: percent as a unit next to the same bare number, and a literal percent equal
# to its fraction; bare 25 vs bare 0.25 is False (the paper grader accepts x100 / x/100)
_add("percent", [
    (r"25\%", r"$\boxed{0.25}$", True),
    ("0.25", r"$\boxed{25}$", False, True),
    ("25", r"$\boxed{0.25}$", False, True),
    ("25", r"$\boxed{25\%}$", True),
    ("0.25", r"$\boxed{25\%}$", True),
    (r"28\%", r"$\boxed{28}$", True),
    (r"28\%", r"$\boxed{28 \%}$", True),
    (r"28\%", r"$\boxed{2800}$", False, True),
    (r"28\%", r"$\boxed{29\%}$", False),
    ("50", "The answer is 50 percent.", True),
    ("50", "The answer is 5 percent.", False),
    ("40", r"So the price dropped by $\boxed{40\%}$.", True),
    ("40", r"So the price dropped by $\boxed{60\%}$.", False),
    (r"12.5\%", "The answer is 12.5%.", True),
    (r"12.5\%", "The answer is 1.25%.", False),
])

# ---------------------------------------------------------------------------
# number formats: thousands separators, decimal commas (C8)
# ---------------------------------------------------------------------------
_add("thousands", [
    ("1000000", r"$\boxed{1,000,000}$", True),
    ("1000000", "The answer is 1 000 000.", True),
    ("1000000", r"$\boxed{100,000}$", False),
    (r"10,\!080", r"$\boxed{10080}$", True),
    (r"10,\!080", r"$\boxed{10{,}080}$", True),
    ("10080", r"$\boxed{10{,}080}$", True),
    ("10080", r"$\boxed{10\,080}$", True),
    (r"10,\!080", r"$\boxed{1,008}$", False),
    ("58,500", r"$\boxed{58500}$", True),
    ("58,500", r"$\boxed{58,050}$", False),
    (r"11,\! 111,\! 111,\! 100", r"$\boxed{11111111100}$", True),
    (r"11,\! 111,\! 111,\! 100", r"$\boxed{11,111,111,110}$", False, True),   # C3: rel 1e-4
    ("1000", r"$\boxed{1{,}000}$", True),
    ("1000", r"$\boxed{1,001}$", False),
])

_add("decimal_comma", [
    ("0.75", "0,75", True),
    ("0.75", "The answer is 0,75.", True),
    ("0.75", "The answer is 0,57.", False),
    ("0.5", r"$\boxed{0{,}5}$", True),
    ("-0.25", r"$\boxed{-0,25}$", True),
    ("0.25", r"$\boxed{-0,25}$", False),
])

# ---------------------------------------------------------------------------
# exactness (C2) -- paper grader: relative 1e-4 and x100 / x/100 (C3)
# ---------------------------------------------------------------------------
_add("integer_exact", [
    ("123456", r"$\boxed{123457}$", False, True),
    ("123456", r"$\boxed{123456}$", True),
    # |100 - 99.99| is exactly 1e-4 * 100; the paper grader's float isclose says False
    ("100", r"$\boxed{99.99}$", False),
    ("100", r"$\boxed{100.0}$", True),
    ("100", r"$\boxed{1}$", False, True),
    ("100", r"$\boxed{10000}$", False, True),
    ("7", r"$\boxed{7.00}$", True),
    ("7", r"$\boxed{7.01}$", False),
    ("2016", r"$\boxed{2017}$", False),
    ("1000000", r"$\boxed{1000001}$", False, True),
    ("13535", r"$\boxed{13536}$", False, True),
    ("9901", r"$\boxed{9902}$", False),
    ("0", r"$\boxed{0.0001}$", False),
    ("0", r"$\boxed{-0}$", True),
])

# C2: decimals compare by exact value; no tolerance tied to the digits written
_add("decimal_precision", [
    ("0.5", r"$\boxed{0.50}$", True),
    ("0.5", r"$\boxed{.5}$", True),
    ("2.5", r"$\boxed{2.50001}$", False, True),
    ("3.14", r"$\boxed{3.1416}$", False),
    ("3.14159", r"$\boxed{3.14}$", False),
    (".0000672", r"$\boxed{0.0000672}$", True),
    (".0000672", r"$\boxed{6.72 \times 10^{-5}}$", True),
    (".0000672", r"$\boxed{0.000672}$", False),
    (".35625", r"$\boxed{\frac{57}{160}}$", True),
    (".35625", r"$\boxed{0.3562}$", False),
    ("1.25", r"$\boxed{1.250}$", True),
    ("1.25", r"$\boxed{1.52}$", False),
    ("326.5", r"$\boxed{\frac{653}{2}}$", True),
    ("326.5", r"$\boxed{326}$", False),
    ("3.21", r"$\boxed{3.2}$", False),
    ("0.15", r"$\boxed{\frac{3}{20}}$", True),
    ("4.5", r"$\boxed{\frac{9}{2}}$", True),
    ("4.5", r"$\boxed{4.05}$", False),
    ("1.6", r"$\boxed{1.60}$", True),
    (r"\frac{14}{3}", r"$\boxed{4.67}$", False),
    (r"\frac{14}{3}", r"$\boxed{4.6667}$", False, True),
    (r"\frac{20000}{\pi}", r"$\boxed{6366.2}$", False, True),
])

# ---------------------------------------------------------------------------
# fractions and mixed numbers
# ---------------------------------------------------------------------------
_add("fraction", [
    (r"\frac34", r"$\boxed{\dfrac{3}{4}}$", True),
    (r"\frac34", r"$\boxed{\tfrac{3}{4}}$", True),
    (r"\frac34", "The answer is 3/4.", True),
    (r"\frac34", r"$\boxed{0.75}$", True),
    (r"\frac{3}{4}", r"$\boxed{\frac{4}{3}}$", False),
    # an unreduced fraction has the same value (math-verify / sympy graders accept it)
    (r"\frac{3}{4}", r"$\boxed{\frac{6}{8}}$", True),
    (r"\frac{3}{4}", r"$\boxed{\frac{3}{5}}$", False),
    (r"\frac{14}{3}", r"$\boxed{14/3}$", True),
    (r"-\frac{35}{9}", r"$\boxed{\frac{-35}{9}}$", True),
    (r"-\frac{35}{9}", r"$\boxed{-35/9}$", True),
    (r"-\frac{35}{9}", r"$\boxed{\frac{35}{9}}$", False),
    (r"-\frac{35}{9}", r"$\boxed{-\frac{9}{35}}$", False),
    (r"\frac 59", r"$\boxed{5/9}$", True),
    (r"\frac9{19}", r"$\boxed{\frac{9}{19}}$", True),
    (r"\frac9{19}", r"$\boxed{\frac{19}{9}}$", False),
    (r"\frac{1}{3}", r"$\boxed{0.\overline{3}}$", True),
    (r"\frac{2}{1005}", r"$\boxed{\frac{4}{2010}}$", True),
    (r"\frac{2}{1005}", r"$\boxed{\frac{2}{1015}}$", False),
    (r"\frac{1}{2}", r"$\boxed{\frac{1}{2}x}$", False),
    (r"\dfrac{17}{50}", r"$\boxed{0.34}$", True),
    (r"\dfrac{17}{50}", r"$\boxed{34}$", False),
])

# a mixed number a\frac{b}{c} means a + b/c, never a * b/c; -a\frac{b}{c} means -(a + b/c)
_add("mixed_number", [
    (r"\frac52", r"$\boxed{2\frac{1}{2}}$", True),
    (r"\frac52", r"$\boxed{2 \frac{1}{2}}$", True),
    (r"\frac52", r"$\boxed{2\frac12}$", True),
    ("1", r"$\boxed{2\frac{1}{2}}$", False),
    (r"1\frac{4}{5}", r"$\boxed{\frac{9}{5}}$", True),
    (r"1\frac{4}{5}", r"$\boxed{1.8}$", True),
    (r"1\frac{4}{5}", r"$\boxed{\frac{4}{5}}$", False),
    (r"1\frac{4}{5}", r"$\boxed{1\frac{5}{4}}$", False),
    (r"137 \frac{1}{2}", r"$\boxed{137.5}$", True),
    (r"137 \frac{1}{2}", r"$\boxed{\frac{275}{2}}$", True),
    (r"137 \frac{1}{2}", r"$\boxed{\frac{137}{2}}$", False),
    (r"-\frac{5}{2}", r"$\boxed{-2\frac{1}{2}}$", True),
    (r"\frac{7}{3}", r"$\boxed{2\frac{1}{3}}$", True),
    (r"\frac{7}{3}", r"$\boxed{3\frac{1}{3}}$", False),
])

# ---------------------------------------------------------------------------
# degrees (C5), bases (C9), times of day
# ---------------------------------------------------------------------------
_add("degrees", [
    (r"30^\circ", r"$\boxed{30}$", True),
    (r"30^\circ", "The angle is 30°.", True),
    (r"30^\circ", r"$\boxed{30^{\circ}}$", True),
    (r"30^\circ", "The answer is 30 degrees.", True),
    (r"30^\circ", r"$\boxed{60^\circ}$", False),
    (r"30^\circ", r"$\boxed{150^\circ}$", False),
    ("30", r"$\boxed{30^\circ}$", True),
    ("30", "The answer is 30°.", True),
    (r"90^\circ", r"$\boxed{90}$", True),
    (r"90^\circ", r"$\boxed{9^\circ}$", False),
    (r"145^\circ", r"$\boxed{145^{\circ}}$", True),
    (r"145^\circ", r"$\boxed{135^\circ}$", False),
])

_add("base", [
    ("1112112_3", r"$\boxed{1112122_3}$", False),
    ("1112122_3", r"$\boxed{1112112_3}$", False),
    ("1011_2", r"$\boxed{1011_2}$", True),
    ("10_2", r"$\boxed{10_{2}}$", True),
    ("10_{2}", r"$\boxed{10_2}$", True),
    ("52_8", r"$\boxed{52_{8}}$", True),
    ("52_8", r"$\boxed{25_8}$", False),
    ("2516_8", r"$\boxed{2516_{8}}$", True),
    ("2516_8", r"$\boxed{2561_8}$", False),
    ("4210_{5}", r"$\boxed{4210_5}$", True),
    ("204_5", r"$\boxed{204_6}$", False),
    ("40_9", r"$\boxed{41_9}$", False),
])

_add("time", [
    ("1:00", r"$\boxed{12:00}$", False),
    ("12:00", r"$\boxed{1:00}$", False),
    ("9:30", "The meeting starts at 9:30.\nThe answer is 9:30.", True),
    ("9:30", "The answer is 9:03.", False),
    ("12:00", "The answer is 12:00.", True),
])

# ---------------------------------------------------------------------------
# symbolic equivalence
# ---------------------------------------------------------------------------
_POLY5 = r"x^5 - x^4 + x^3 - x^2 + x - 1"
_add("symbolic", [
    (r"2\sqrt{2}", r"$\boxed{\sqrt{8}}$", True),
    (r"2\sqrt{2}", r"$\boxed{\sqrt{6}}$", False),
    (r"\frac{\sqrt{3}}{3}", r"$\boxed{\frac{1}{\sqrt{3}}}$", True),
    (r"\frac{\sqrt{3}}{3}", r"$\boxed{\sqrt{3}}$", False),
    ("x^2+2x+1", r"$\boxed{(x+1)^2}$", True),
    ("x^2+2x+1", r"$\boxed{(x-1)^2}$", False),
    ("p - q", r"$\boxed{-q + p}$", True),
    ("p - q", r"$\boxed{q - p}$", False),
    (r"\cot x", r"$\boxed{\frac{\cos x}{\sin x}}$", True),
    (r"\cot x", r"$\boxed{\tan x}$", False),
    ("2k+2", r"$\boxed{2(k+1)}$", True),
    ("2k+2", r"$\boxed{2k+1}$", False),
    ("6 - 5i", r"$\boxed{-5i + 6}$", True),
    ("6 - 5i", r"$\boxed{6+5i}$", False),
    ("-1", r"$\boxed{e^{i\pi}}$", True),
    (r"\sqrt{51}", r"$\boxed{51^{1/2}}$", True),
    (r"11\sqrt2", r"$\boxed{\sqrt{242}}$", True),
    (r"11\sqrt2", r"$\boxed{11\sqrt{3}}$", False),
    (_POLY5, r"$\boxed{-1 + x - x^2 + x^3 - x^4 + x^5}$", True),
    (_POLY5, r"$\boxed{x^5 - x^4 + x^3 - x^2 + x + 1}$", False),
    (r"3R^2", r"$\boxed{3r^2}$", False),             # variable names are case-sensitive
    ("8n^2 + 4n + 1", r"$\boxed{4n + 8n^2 + 1}$", True),
    ("15x - 80", r"$\boxed{15x + 80}$", False),
    (r"\frac{11+9a}{20}", r"$\boxed{\frac{11}{20} + \frac{9a}{20}}$", True),
    (r"\frac{11+9a}{20}", r"$\boxed{\frac{11+9a}{2}}$", False),
    (r"18+2\pi", r"$\boxed{2\pi + 18}$", True),
    (r"18+2\pi", r"$\boxed{20\pi}$", False),
    (r"\frac{3\sqrt{3}}{4}", r"$\boxed{\frac{3}{4}\sqrt{3}}$", True),
    (r"\frac{3\sqrt{3}}{4}", r"$\boxed{\frac{3\sqrt{3}}{2}}$", False),
    ("1024", r"$\boxed{2^{10}}$", True),
    ("10", r"$\boxed{\binom{5}{2}}$", True),
    ("120", r"$\boxed{5!}$", True),
    (r"-\frac{\pi}{6}", r"$\boxed{\frac{-\pi}{6}}$", True),
    (r"-\frac{\pi}{6}", r"$\boxed{-\frac{\pi}{3}}$", False),
    (r"-\sqrt{3}", r"$\boxed{\sqrt{3}}$", False),
    ("2x + 3", r"$\boxed{2y + 3}$", False),
    ("1+2i", r"$\boxed{2i+1}$", True),
    ("i", r"$\boxed{-i}$", False),
    ("3", r"$\boxed{\log_2 8}$", True),
    ("x + y = 5", r"$\boxed{y = 5 - x}$", True),     # the same equation rearranged
    ("x + y = 5", r"$\boxed{y = x - 5}$", False),
    ("(a+5)(b+2)", r"$\boxed{(b+2)(a+5)}$", True),
    ("(a+5)(b+2)", r"$\boxed{(a+2)(b+5)}$", False),
])

# ---------------------------------------------------------------------------
# text answers (C10) and number words
# ---------------------------------------------------------------------------
_add("text", [
    (r"\text{(C)}", r"$\boxed{\text{(C)}}$", True),
    (r"\text{(C)}", r"$\boxed{C}$", True),
    (r"\text{(C)}", "The shape is a plane. The answer is (C).", True),
    (r"\text{(C)}", r"$\boxed{\textbf{(C)}}$", True),
    (r"\text{(C)}", r"$\boxed{\text{(D)}}$", False),
    (r"\text{even}", r"$\boxed{\text{even}}$", True),
    (r"\text{even}", "Each composition of odd and even functions keeps the parity.\nThe answer is even.", True),
    (r"\text{even}", r"$\boxed{\text{odd}}$", False),
    (r"\text{even}", r"$\boxed{\text{neither}}$", False),
    (r"\text{even}", r"$\boxed{\text{Even}}$", True),
    ("odd", r"$\boxed{\text{even}}$", False),
    ("Yes", "The answer is yes.", True),
    ("Yes", "The answer is no.", False),
    ("No", r"$\boxed{\text{No}}$", True),
    (r"\text{Evelyn}", r"Evelyn has the steepest slope, so the answer is $\boxed{\text{Evelyn}}$.", True),
    (r"\text{Evelyn}", r"Briana has the steepest slope, so the answer is $\boxed{\text{Briana}}$.", False),
    (r"\text{east}", "After $2250 = 6 \\cdot 360 + 90$ degrees she faces east." + _M.format("east"), True),
    (r"\text{east}", "After $2250 = 6 \\cdot 360 + 90$ degrees she faces west." + _M.format("west"), False),
    (r"\text{ellipse}", r"$\boxed{\text{ellipse}}$", True),
    (r"\text{ellipse}", r"$\boxed{\text{hyperbola}}$", False),
    ("12", "The answer is twelve.", True),
    ("12", "The answer is eleven.", False),
    ("3", "Final Answer: The final answer is three. I hope it is correct.", True),
])

# ---------------------------------------------------------------------------
# multiple choice (C11): gold is a letter, choices are the option texts
# ---------------------------------------------------------------------------
_MC1 = ("21", "24", "27", "30", "33")
_MC1_WORK = "Each crate holds 9 boxes, so 3 crates hold 3 * 9 = 27 boxes."
_MC2 = ("12", "15", "18", "20", "22")
_MC2_TEXT = ("Option (A) 12 is too small because it ignores the second shipment, and (B) 15 double counts the "
             "returns. Adding carefully: 8 + 14 - 2 = 20.\nTherefore, the answer is D")
_MC3 = ("$61", "$65", "$67.40", "$70", "$78.20")
_MC3_TEXT = "Let x be the original price. Then 0.78x - 20 = x/2 + 1.9, so 0.28x = 21.9 and x = 78.20.\nAnswer: E"
_MC3_VALUE = "Let x be the original price. Then 0.78x - 20 = x/2 + 1.9, so 0.28x = 21.9.\nThe original price was $78.20."
_MC4 = ("4", "5", "6", "7", "9")
_MC4_TEXT = "The number must be prime and odd. The answer is a prime number, 7, which is option D."
_SAT1 = ("$f(-6)=0$", "$f(6)=-6$", "$f(-6)=6$", "$f(0)=-6$")
_SAT1_TEXT = "Since $(-6,0)$ is an $x$-intercept of the graph, $f(-6)=0$. Choice A is correct."
_SAT2 = ("$(-3,-6)$", r"$\left(-\frac{5}{3},-\frac{2}{3}\right)$", "$(3,18)$", "$(15,66)$")
_SAT2_TEXT = ("Substituting $y = 4x + 6$ into $-5x - y = 21$ gives $-9x - 6 = 21$, so $x = -3$ and $y = -6$. "
              "The solution is $(-3,-6)$.")
_MMLU = ("It doubles", "It halves", "It stays the same", "It quadruples")
_MMLU_TEXT = ("Kinetic energy is proportional to the square of the speed, so doubling the speed multiplies it by 4.\n"
              "The answer is (D).")
CASES.extend([
    Case("C", _MC1_WORK + "\nTherefore, the answer is (C).", True, "multiple_choice", "aqua", _MC1),
    Case("C", _MC1_WORK + " The answer is 27.", True, "multiple_choice", "aqua", _MC1),
    Case("C", _MC1_WORK + " The answer is C.", True, "multiple_choice", "aqua", _MC1),
    Case("C", "Each crate holds 8 boxes, so 3 crates hold 24 boxes.\nThe answer is (B).", False, "multiple_choice", "aqua", _MC1),
    Case("C", "Each crate holds 8 boxes, so 3 crates hold 24 boxes. The answer is 24.", False, "multiple_choice", "aqua", _MC1),
    Case("C", "Each crate holds 9 boxes minus one broken one. The answer is 26.", False, "multiple_choice", "aqua", _MC1),
    Case("B", _MC1_WORK + "\nTherefore, the answer is (C).", False, "multiple_choice", "aqua", _MC1),
    Case("C", _MC1_WORK + "\nthe correct option is (c).", True, "multiple_choice", "aqua", _MC1),
    Case("D", _MC2_TEXT, True, "multiple_choice", "aqua", _MC2),
    Case("A", _MC2_TEXT, False, "multiple_choice", "aqua", _MC2),
    Case("B", _MC2_TEXT, False, "multiple_choice", "aqua", _MC2),
    Case("E", _MC3_TEXT, True, "multiple_choice", "aqua", _MC3),
    Case("C", _MC3_TEXT, False, "multiple_choice", "aqua", _MC3),
    Case("E", _MC3_VALUE, True, "multiple_choice", "aqua", _MC3),
    Case("D", _MC3_VALUE, False, "multiple_choice", "aqua", _MC3),
    Case("E", r"Solving gives $x = 78.2$, so the answer is $\boxed{E}$.", True, "multiple_choice", "aqua", _MC3),
    Case("B", r"Solving gives $x = 78.2$, so the answer is $\boxed{E}$.", False, "multiple_choice", "aqua", _MC3),
    Case("B", "Testing the options, only the $65 price satisfies both conditions.\nThe answer is B) $65", True,
         "multiple_choice", "aqua", _MC3),
    Case("D", _MC4_TEXT, True, "multiple_choice", "aqua", _MC4),
    Case("A", _MC4_TEXT, False, "multiple_choice", "aqua", _MC4),
    Case("A", _SAT1_TEXT, True, "multiple_choice", "sat_math", _SAT1),
    Case("B", _SAT1_TEXT, False, "multiple_choice", "sat_math", _SAT1),
    Case("A", _SAT2_TEXT, True, "multiple_choice", "sat_math", _SAT2),
    Case("C", _SAT2_TEXT, False, "multiple_choice", "sat_math", _SAT2),
    Case("D", _MMLU_TEXT, True, "multiple_choice", "mmlu_stem", _MMLU),
    Case("A", _MMLU_TEXT, False, "multiple_choice", "mmlu_stem", _MMLU),
    Case("D", "Kinetic energy grows with the square of the speed.\nThe answer is: It quadruples", True,
         "multiple_choice", "mmlu_stem", _MMLU),
])

# ---------------------------------------------------------------------------
# false positives: must NOT match (the paper grader's x100 / x/100 and 1e-4 noted)
# ---------------------------------------------------------------------------
_FP_EXTRA = r"Squaring gives $x = 2$ or $x = 3$. But $x = 2$ is extraneous, so the only solution is $\boxed{x = 3}$."
_FP_HALF = r"We get $42 / 2 = 21$. So the answer is $\boxed{21}$."
_FP_PAIRS = ("Counting ordered pairs we found 12 earlier, but that counted each pair twice, "
             "so the number of unordered pairs is $\\boxed{6}$.")
_add("false_positive", [
    ("x = 2", r"$\boxed{y = 2}$", False),
    ("5", r"$\boxed{50}$", False),
    ("5", r"$\boxed{500}$", False, True),
    ("5", r"$\boxed{0.05}$", False, True),
    ("3", r"$\boxed{-3}$", False),
    ("-3", r"$\boxed{3}$", False),
    ("10", r"$\boxed{10^2}$", False),
    ("2", r"$\boxed{2^2}$", False),
    ("6", r"$\boxed{6!}$", False),
    ("7", "The answer is 7 + 1 = 8.", False),
    ("8", "The answer is 7 + 1 = 8.", True),
    ("2", _FP_EXTRA, False),
    ("3", _FP_EXTRA, True),
    ("42", _FP_HALF, False),
    ("21", _FP_HALF, True),
    ("12", _FP_PAIRS, False),
    ("6", _FP_PAIRS, True),
    ("x + 1 = 3", r"$\boxed{y + 2 = 4}$", False),
    ("a + b = 0", r"$\boxed{a - b = 0}$", False),
    ("x^2 + y^2 = 25", r"$\boxed{x^2 + y^2 = 5}$", False),
    ("0", r"$\boxed{x - y}$", False),
    ("1", r"$\boxed{i}$", False),
])

# ---------------------------------------------------------------------------
# long chain-of-thought outputs: many intermediate numbers, then the answer
# ---------------------------------------------------------------------------
_LONG_EGGS = """Let's work through this step by step.

First, the ducks lay 16 eggs per day. Janet eats 3 eggs for breakfast, and she uses 4 eggs to bake muffins, so she uses 3 + 4 = 7 eggs herself.

That leaves 16 - 7 = 9 eggs to sell. Each egg sells for $2, so her revenue is 9 \\times 2 = 18 dollars.

Therefore, the answer is $\\boxed{18}$.

Double-check: 9 eggs at 2 dollars each is 18, and 16 - 7 = 9, so everything is consistent with 16, 7 and 9."""

_LONG_DICE = """We roll two fair dice, so there are $6 \\times 6 = 36$ equally likely outcomes.

The probability that neither die shows a 6 is $\\frac{5}{6} \\cdot \\frac{5}{6} = \\frac{25}{36}$.

So the probability that at least one die shows a 6 is $1 - \\frac{25}{36} = \\frac{11}{36}$.

As a sanity check, we can count directly: there are 6 outcomes with a 6 on the first die, 6 with a 6 on the second, and 1 with both, so $6 + 6 - 1 = 11$ favourable outcomes out of 36.
Final Answer: The final answer is $\\frac{11}{36}$. I hope it is correct."""

_LONG_INEQ = """A point with $f(f(x)) = x$ but $f(x) \\neq x$ lies on a 2-cycle. Dividing $f(f(x)) - x$ by $f(x) - x$ leaves the quadratic $\\lambda^2 x^2 - (\\lambda^2 + \\lambda) x + (\\lambda + 1) = 0$.

Its discriminant is $(\\lambda^2 + \\lambda)^2 - 4\\lambda^2(\\lambda + 1) = \\lambda^2(\\lambda + 1)(\\lambda - 3)$, which is positive exactly when $\\lambda > 3$. At $\\lambda = 3$ the double root is the fixed point $x = \\frac{2}{3}$, so 3 is excluded; for $3 < \\lambda \\le 4$ both roots lie in $[0,1]$, and 4 is the largest allowed value.

So the solution set is $\\boxed{(3,4]}$."""

_LONG_COUNT = """We seat 5 people in a row.

Without restrictions there are $5! = 120$ arrangements. If we required Alice and Bob to sit together we would glue them into a block: $4! \\cdot 2 = 48$ arrangements, and the remaining $120 - 48 = 72$ would have them apart.

But the problem places no restriction, so all arrangements count. (Had it asked for them apart, it would be 72; together, 48; and with Alice first, 24.)

**Answer: 120**"""

_LONG_GEOM = """Place the square with vertices $(0,0)$, $(4,0)$, $(4,4)$ and $(0,4)$. The midpoint of the top side is $(2,4)$ and the point on the right side is $(4,0)$.

The horizontal distance is $4 - 2 = 2$ and the vertical distance is $4 - 0 = 4$, so the length is $\\sqrt{2^2 + 4^2} = \\sqrt{4 + 16} = \\sqrt{20}$.

Simplifying, $\\sqrt{20} = \\sqrt{4 \\cdot 5} = 2\\sqrt{5}$. The answer is $2\\sqrt{5}$."""

_LONG_GSM = """Tom buys 8 packs of stickers with 8 stickers each, so he has 8 * 8 = 64 stickers.
His sister gives him 8 more, so he now has 64 + 8 = 72 stickers.
He had 3 albums with 24 pages each, which hold 3 * 24 = 72 stickers, so they will all fit.
#### 72"""

_LONG_VERIFY = """Let the number be $n$. Then $3n - 1 = 20$, so $3n = 21$ and $n = 7$.

The answer is 7. To verify: 7 \\times 3 = 21, and 21 - 1 = 20, which matches the 20 in the problem; a value like 6 would give 17 and 8 would give 23."""

_LONG_ROOTS = """By the rational root theorem, any integer root divides 14, so the candidates are $\\pm 1, \\pm 2, \\pm 7, \\pm 14$.

Testing: $f(1) = 1 + 5 + 9 - 1 - 14 = 0$, so 1 is a root. $f(-1) = 1 - 5 + 9 + 1 - 14 = -8$. $f(2) = 16 + 40 + 36 - 2 - 14 = 76$. $f(-2) = 16 - 40 + 36 + 2 - 14 = 0$, so $-2$ is a root. $f(7)$ and $f(-7)$ are far from zero, as are $f(14)$ and $f(-14)$.

Dividing out $(x - 1)(x + 2)$ leaves $x^2 + 4x + 7$, which has no real roots (discriminant $16 - 28 = -12$).

So the integer roots are $\\boxed{-2, 1}$."""

_add("long_cot", [
    ("18", _LONG_EGGS, True),
    ("9", _LONG_EGGS, False),
    (r"\frac{11}{36}", _LONG_DICE, True),
    (r"\frac{25}{36}", _LONG_DICE, False),
    ("(3,4]", _LONG_INEQ, True),
    ("(3,4)", _LONG_INEQ, False),
    ("120", _LONG_COUNT, True),
    ("72", _LONG_COUNT, False),
    (r"2\sqrt{5}", _LONG_GEOM, True),
    (r"\sqrt{5}", _LONG_GEOM, False),
    ("7", _LONG_VERIFY, True),
    ("21", _LONG_VERIFY, False),
    ("-2,1", _LONG_ROOTS, True),
    ("1,-2", _LONG_ROOTS, True),
    ("-2, 1, 7", _LONG_ROOTS, False),
])
_add("long_cot", [
    ("72", _LONG_GSM, True),
    ("64", _LONG_GSM, False),
], dataset="gsm8k")


# ===========================================================================
# Derived cases from MATH-500 (read at test time; nothing is copied here)
# ===========================================================================
# Each gold answer is classified; only shapes whose rewritings are certain get
# cases.  True rewritings are exact identities (the gold itself, \frac ->
# \dfrac, a/b, terminating decimals, mixed numbers, k\sqrt{m} -> \sqrt{k^2 m},
# \left/\right and spacing, a fresh "n = " prefix, reordering unordered sets /
# solution lists / polynomial terms, dropping units, degree marks and currency).
# False rewritings change the value and are checked numerically or structurally
# (off-by-one, dropped/added minus sign, reciprocal, swapped tuple, flipped
# interval bracket, dropped solution, another problem's answer, ...).  Answers
# that fit no safe rule are skipped.

_TEMPLATES = (
    "{work}Therefore, the answer is $\\boxed{A}$.",
    "{work}Final Answer: The final answer is $A$. I hope it is correct.",
    "The answer is $A$.",
    "{work}**Answer:** $A$",
    "A",
    "{work}So the final answer is $A$.",
    "{work}Answer: $A$",
    "$\\boxed{A}$",
    "{work}The answer is $\\boxed{A}$. This is consistent with every condition above.",
)


def _working(solution: str) -> str:
    """The reference solution up to (not including) the sentence that states the answer."""
    at = solution.find("\\boxed")
    if at < 0:
        return ""
    cut = max(solution.rfind(". ", 0, at), solution.rfind(".\n", 0, at), solution.rfind("\n\n", 0, at))
    if cut <= 0:
        return ""
    work = solution[:cut + 1].strip()
    balanced = (work.count("$") % 2 == 0 and work.count("\\[") == work.count("\\]")
                and work.count("\\begin") == work.count("\\end") and work.count("{") == work.count("}"))
    if not balanced or len(work) > 2500 or re.search(r"answer|boxed|final", work, re.I):
        return ""
    return work + "\n\n"


def _fill(template: str, work: str, answer: str) -> str:
    if template == "A":
        return answer
    out = template.replace("$A$", "$" + answer + "$").replace("\\boxed{A}", "\\boxed{" + answer + "}")
    return out.replace("{work}", work)   # last, so a "$A$" in the working (point A) is left alone


# --- a tiny evaluator for constant LaTeX (integers, decimals, \frac, \sqrt, \pi, ^)
def _to_python(tex: str) -> str | None:
    s = tex.strip()
    for a, b in (("\\left", ""), ("\\right", ""), ("\\dfrac", "\\frac"), ("\\tfrac", "\\frac"),
                 ("\\!", ""), ("\\,", ""), ("\\cdot", "*"), ("\\times", "*")):
        s = s.replace(a, b)
    for _ in range(8):
        before = s
        s = re.sub(r"\\sqrt\s*\{([^{}]*)\}", r"sqrt((\1))", s)
        s = re.sub(r"\\sqrt\s*(\d)", r"sqrt(\1)", s)
        s = re.sub(r"\\frac\s*(\{[^{}]*\}|\d)\s*(\{[^{}]*\}|\d)",
                   lambda m: "((" + m.group(1).strip("{}") + ")/(" + m.group(2).strip("{}") + "))", s)
        s = re.sub(r"\^\s*\{([^{}]*)\}", r"**(\1)", s)
        if s == before:
            break
    s = re.sub(r"\^\s*(\d)", r"**\1", s)
    s = s.replace("\\pi", " pi ")
    if "\\" in s or "{" in s or "}" in s:
        return None
    s = re.sub(r"\s+", " ", s).strip()
    s = re.sub(r"(\d|\)|pi)\s*(?=\(|sqrt|pi)", r"\1*", s)
    s = re.sub(r"\)\s*(?=\d)", ")*", s)
    s = s.replace(" ", "")
    if not re.fullmatch(r"[0-9.+\-*/()a-z]+", s) or set(re.findall(r"[a-z]+", s)) - {"sqrt", "pi"}:
        return None
    return s


def _value(tex: str) -> float | None:
    expr = _to_python(tex)
    if expr is None:
        return None
    try:
        v = eval(expr, {"__builtins__": {}}, {"sqrt": math.sqrt, "pi": math.pi})  # noqa: S307 - vetted charset
    except Exception:
        return None
    return float(v) if isinstance(v, (int, float)) else None


def _differs(a: float, b: float) -> bool:
    return abs(a - b) > 1e-9 * max(1.0, abs(a), abs(b))


_PLAIN = re.compile(r"-?\d*\.?\d+")


def _plain(tex: str) -> str:
    s = re.sub(r"\\(text|mbox)\{[^{}]*\}(\^2)?$", "", tex.strip())
    for a in ("\\$", "$", "\\!", "{,}", ",", " ", "\\%", "%", "^\\circ", "^{\\circ}"):
        s = s.replace(a, "")
    return s


def _paper_equal(gold: str, pred: str) -> bool:
    """The paper grader's numeric decision (C3), for answers both sides can evaluate."""
    g, p = _plain(gold), _plain(pred)
    if _PLAIN.fullmatch(g) and _PLAIN.fullmatch(p):
        gv, pv = float(g), float(p)
        return any(math.isclose(c, pv, rel_tol=1e-4) for c in (gv / 100, gv, gv * 100))
    gv, pv = _value(gold), _value(pred)
    return gv is not None and pv is not None and math.isclose(gv, pv, rel_tol=1e-4)


def _neg(answer: str, gold: str, shape: str) -> tuple[str, bool, str, bool | None]:
    try:
        paper = True if _paper_equal(gold, answer) else None
    except Exception:
        paper = None
    return (answer, False, shape, paper)


def _split_top(s: str, sep: str = ",") -> list[str]:
    parts, depth, cur = [], 0, ""
    i = 0
    while i < len(s):
        ch = s[i]
        if s.startswith("\\{", i) or ch in "({[":
            depth += 1
        elif s.startswith("\\}", i) or ch in ")}]":
            depth -= 1
        if ch == sep and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            if s.startswith("\\{", i) or s.startswith("\\}", i):
                cur += s[i:i + 2]
                i += 2
                continue
            cur += ch
        i += 1
    parts.append(cur)
    return [p.strip() for p in parts]


def _terms(s: str) -> list[str] | None:
    """Split a sum at top-level + and - (each term keeps its sign)."""
    terms, depth, cur = [], 0, ""
    for i, ch in enumerate(s):
        if ch in "({[":
            depth += 1
        elif ch in ")}]":
            depth -= 1
        if ch in "+-" and depth == 0 and cur.strip() and not cur.rstrip().endswith(("^", "e")):
            terms.append(cur.strip())
            cur = ch
        else:
            cur += ch
    if cur.strip():
        terms.append(cur.strip())
    if depth != 0:
        return None
    return [re.sub(r"^([+-])\s*", r"\1", t) for t in terms]


def _join(terms: list[str]) -> str:
    out = ""
    for k, t in enumerate(terms):
        sign, body = ("-", t[1:]) if t.startswith("-") else ("+", t.lstrip("+"))
        out += ("-" if sign == "-" else "") + body if k == 0 else (" - " if sign == "-" else " + ") + body
    return out


_MONO = re.compile(r"([+-]?)(\d*)([a-zA-Z])?(?:\^(?:\{(\d+)\}|(\d)))?")


def _poly(s: str) -> dict | None:
    """Integer polynomial in single-letter variables (one letter per term), else None."""
    if "\\" in s or "=" in s or "," in s:
        return None
    terms = _terms(s.replace(" ", ""))
    if not terms:
        return None
    out: dict = {}
    for t in terms:
        m = _MONO.fullmatch(t)
        if not m or (not m.group(2) and not m.group(3)):
            return None
        coef = int(m.group(2) or "1") * (-1 if m.group(1) == "-" else 1)
        var = m.group(3) or ""
        exp = int(m.group(4) or m.group(5) or (1 if var else 0))
        if (m.group(4) or m.group(5)) and not var:
            return None
        out[(var, exp)] = out.get((var, exp), 0) + coef
    return {k: v for k, v in out.items() if v}


def _fresh_var(problem: str) -> str:
    for v in ("n", "k", "m", "x", "a"):
        if not re.search(r"(?<![A-Za-z\\])" + v + r"(?![A-Za-z])", problem):
            return v
    return "N"


def _int_groups(n: int) -> str:
    return f"{n:,}"


def _other_answer(rows: list[dict], i: int, ok) -> str | None:
    for step in range(1, len(rows)):
        cand = rows[(i + 7 * step) % len(rows)]["answer"].strip()
        if ok(cand):
            return cand
    return None


def _rewrites(gold: str, problem: str, i: int, rows: list[dict]) -> list[tuple[str, bool, str, bool | None]]:
    g = gold.strip()
    out: list[tuple[str, bool, str, bool | None]] = []

    def true(a, shape):
        out.append((a, True, shape, None))

    # integers, possibly with thousands separators (C8)
    mthou = re.fullmatch(r"(-?\d{1,3})((?:,(?:\\!)?\s?\d{3})+)", g)
    if re.fullmatch(r"-?\d+", g) or mthou:
        n = int(re.sub(r"[^\d-]", "", g))
        shape = "thousands" if mthou else "integer"
        true(g, shape)
        variant = i % 3
        if abs(n) >= 1000 and (variant == 0 or mthou):
            true(str(n) if mthou else _int_groups(n), shape)
        elif variant == 1:
            true(f"{_fresh_var(problem)} = {n}", "named")
        neg_kind = i % 4
        if neg_kind == 0 or (neg_kind == 2 and n == 0):
            out.append(_neg(str(n + 1), str(n), "integer"))                      # off by one
        elif neg_kind == 1:
            other = _other_answer(rows, i, lambda c: re.fullmatch(r"-?\d+", c) and int(c) != n)
            if other:
                out.append(_neg(other, str(n), "integer"))                       # another problem's answer
        elif neg_kind == 2:
            out.append(_neg(str(-n), str(n), "integer"))                        # sign
        else:
            out.append(_neg(str(n - 1) if n != 1 else "2", str(n), "integer"))  # off by one
        return out

    # degrees (C5)
    m = re.fullmatch(r"(\d+)\s*\^\s*\\circ", g)
    if m:
        n = int(m.group(1))
        true(g, "degrees")
        true(str(n) if i % 2 else f"{n}^{{\\circ}}", "degrees")
        wrong = 180 - n if n not in (90, 180) else n + 10
        out.append(_neg(f"{wrong}^\\circ", str(n), "degrees"))
        return out

    # money (C5)
    m = re.fullmatch(r"\\\$(\d{1,3}(?:,\\!\d{3})*|\d+)(\.\d+)?", g)
    if m:
        whole = int(m.group(1).replace(",\\!", ""))
        frac = m.group(2) or ""
        true(g, "units")
        true(f"{whole}{frac}", "units")
        if frac.endswith("0"):
            true(f"\\${whole}{frac.rstrip('0').rstrip('.')}", "units")
        out.append(_neg(f"{whole + 2}{frac}", f"{whole}{frac}", "units"))
        return out

    # number followed by a unit in \text / \mbox (C5)
    m = re.fullmatch(r"(\d+(?:\.\d+)?|\\frac\{?\d+\}?\{?\d+\}?)\s*\\(?:text|mbox)\{\s*([a-z ]+)\}(\^2)?", g)
    if m:
        num = m.group(1)
        true(g, "units")
        frac = re.fullmatch(r"\\frac\{?(\d+)\}?\{?(\d+)\}?", num)
        if frac:
            a, b = frac.groups()
            true(f"\\frac{{{a}}}{{{b}}}", "units")
            out.append((f"\\frac{{{b}}}{{{a}}}", False, "units", None))
        else:
            true(num, "units")
            bumped = str(int(num) + 1) if "." not in num else f"{float(num) + 0.2:.1f}"
            out.append(_neg(bumped, num, "units"))
        return out

    # base-n numerals (C9)
    m = re.fullmatch(r"(\d+)_(?:\{(\d+)\}|(\d))", g)
    if m:
        digits, base = m.group(1), int(m.group(2) or m.group(3))
        true(g, "base")
        true(f"{digits}_{base}" if m.group(2) else f"{digits}_{{{base}}}", "base")
        last = (int(digits[-1]) + 1) % base
        out.append((f"{digits[:-1]}{last}_{base}", False, "base", None))
        if len(set(digits)) > 1:
            swapped = digits[1] + digits[0] + digits[2:]
            if swapped != digits and swapped[0] != "0":
                out.append((f"{swapped}_{base}", False, "base", None))
        return out

    # mixed numbers
    m = re.fullmatch(r"(\d+)\s*\\frac\{(\d+)\}\{(\d+)\}", g)
    if m:
        w, a, b = map(int, m.groups())
        value = Fraction(w * b + a, b)
        true(g, "mixed_number")
        true(f"\\frac{{{value.numerator}}}{{{value.denominator}}}", "mixed_number")
        out.append((f"\\frac{{{w * a}}}{{{b}}}", False, "mixed_number", None))   # w * a/b misreading
        return out

    # simple fractions
    m = re.fullmatch(r"(-?)\\[dt]?frac\s*(?:\{(\d+)\}|(\d))\s*(?:\{(\d+)\}|(\d))", g)
    if m:
        sign = m.group(1)
        a, b = int(m.group(2) or m.group(3)), int(m.group(4) or m.group(5))
        value = Fraction(a, b) * (-1 if sign else 1)
        true(g, "fraction")
        kind = i % 4
        if kind == 0:
            true(f"{sign}\\dfrac{{{a}}}{{{b}}}", "fraction")
        elif kind == 1:
            true(f"{sign}{a}/{b}", "fraction")
        den = value.denominator
        while den % 2 == 0:
            den //= 2
        while den % 5 == 0:
            den //= 5
        if kind == 2 and den == 1:
            dec = format(float(value), ".10f").rstrip("0").rstrip(".")
            if Fraction(dec) == value:
                true(dec, "fraction")
        if kind in (2, 3) and not sign and a > b and len(out) < 2:
            true(f"{a // b}\\frac{{{a % b}}}{{{b}}}", "mixed_number")
        if a != b:
            recip = f"{sign}{b}" if a == 1 else f"{sign}\\frac{{{b}}}{{{a}}}"
            out.append((recip, False, "fraction", None))                           # reciprocal
        out.append(_neg(f"\\frac{{{a}}}{{{b}}}" if sign else f"-\\frac{{{a}}}{{{b}}}", g, "fraction"))
        return out

    # decimals
    if re.fullmatch(r"-?\d*\.\d+", g):
        value = Fraction(g)
        true(g, "decimal")
        if g.startswith("."):
            true("0" + g, "decimal")
        else:
            true(g + "0", "decimal")
        if value.denominator <= 1000:
            true(f"\\frac{{{value.numerator}}}{{{value.denominator}}}", "decimal")
        shifted = str(value * 10) if (value * 10).denominator == 1 else format(float(value * 10), "f").rstrip("0")
        out.append(_neg(shifted, g, "decimal"))
        last = g[:-1] + str((int(g[-1]) + 1) % 10)
        out.append(_neg(last, g, "decimal"))
        return out

    # \text{...}: option letters and words (C10)
    m = re.fullmatch(r"\\text\{\(([A-F])\)\}", g)
    if m:
        letter = m.group(1)
        true(g, "text")
        true(letter if i % 2 else f"({letter})", "text")
        other = "ABCDE"[("ABCDE".index(letter) + 1) % 5] if letter in "ABCDE" else "A"
        out.append((f"\\text{{({other})}}", False, "text", None))
        return out
    m = re.fullmatch(r"\\text\{([A-Za-z]+)\}", g)
    if m:
        word = m.group(1)
        true(g, "text")
        true(word, "text")
        opposite = {"even": "odd", "odd": "even", "east": "west", "west": "east", "north": "south",
                    "south": "north", "ellipse": "hyperbola", "hyperbola": "ellipse", "parabola": "circle",
                    "circle": "parabola"}.get(word.lower())
        if opposite is None:
            opposite = _other_answer(rows, i, lambda c: re.fullmatch(r"\\text\{[A-Z][a-z]+\}", c) and c != g)
            opposite = opposite[6:-1] if opposite else None
        if opposite:
            out.append((f"\\text{{{opposite}}}", False, "text", None))
        return out

    # matrices / vectors with integer or a/b entries
    m = re.fullmatch(r"\\begin\{pmatrix\}(.*)\\end\{pmatrix\}", g, re.S)
    if m:
        rows_ = [r.split("&") for r in m.group(1).split("\\\\")]
        cells = [[c.strip() for c in r] for r in rows_]
        if all(re.fullmatch(r"-?\d+(?:/\d+)?", c) for r in cells for c in r):
            def build(cs, env="pmatrix"):
                return f"\\begin{{{env}}} " + " \\\\ ".join(" & ".join(r) for r in cs) + f" \\end{{{env}}}"

            def texfrac(c):
                mm = re.fullmatch(r"(-?)(\d+)/(\d+)", c)
                return f"{mm.group(1)}\\frac{{{mm.group(2)}}}{{{mm.group(3)}}}" if mm else c
            true(g, "matrix")
            if any("/" in c for r in cells for c in r):
                true(build([[texfrac(c) for c in r] for r in cells]), "matrix")
            else:
                true(build(cells, "bmatrix"), "matrix")
            flipped = [r[:] for r in cells]
            for r in flipped:
                for k, c in enumerate(r):
                    if Fraction(c) != 0:
                        r[k] = c[1:] if c.startswith("-") else "-" + c
                        break
                else:
                    continue
                break
            out.append((build(flipped), False, "matrix", None))
        return out

    # "x = 5" style named numbers, "y = mx + b" lines, "... = 0" planes (C7)
    m = re.fullmatch(r"([a-z])\s*=\s*(-?\d+)", g)
    if m:
        var, n = m.group(1), int(m.group(2))
        true(g, "named")
        true(str(n), "named")
        out.append((f"{var} = {-n if n else 1}", False, "named", None))
        return out
    m = re.fullmatch(r"y\s*=\s*(.+)", g)
    if m and _poly(m.group(1)) is not None:
        rhs = _terms(m.group(1).replace(" ", ""))
        true(g, "named")
        true("y=" + m.group(1).replace(" ", ""), "named")
        if len(rhs) > 1:
            true("y = " + _join(rhs[::-1]), "named")
        flipped = rhs[:-1] + [rhs[-1][1:] if rhs[-1].startswith("-") else "-" + rhs[-1].lstrip("+")]
        out.append(("y = " + _join(flipped), False, "named", None))
        return out
    m = re.fullmatch(r"(.+?)\s*=\s*0", g)
    if m and _poly(m.group(1)) is not None:
        lhs = _terms(m.group(1).replace(" ", ""))
        true(g, "symbolic")
        true(g.replace(" ", ""), "symbolic")
        flipped = lhs[:-1] + [lhs[-1][1:] if lhs[-1].startswith("-") else "-" + lhs[-1].lstrip("+")]
        out.append((_join(flipped) + " = 0", False, "symbolic", None))
        return out

    # intervals: anything with \infty, \cup, a square bracket, or "interval notation" (C6)
    inner = g[len("x \\in "):].strip() if g.startswith("x \\in ") else g
    plain = inner.replace("\\left", "").replace("\\right", "").strip()
    is_interval = bool(re.fullmatch(r"[\[(].*[\])]", plain)) and (
        "\\infty" in plain or "\\cup" in plain or "[" in plain or "]" in plain or "interval notation" in problem)
    if is_interval:
        pieces = [p.strip() for p in plain.split("\\cup")]
        ok = all(re.fullmatch(r"[\[(][^\[\]()]*(?:\([^()]*\))?[^\[\]()]*,[^\[\]()]*[\])]", p) or
                 re.fullmatch(r"[\[(].*,.*[\])]", p) for p in pieces)
        if ok:
            true(g, "interval")
            if plain != g:
                true(plain, "interval")
            else:
                true(plain.replace(", ", ",") if ", " in plain else plain.replace(",", ", "), "interval")
            if len(pieces) > 1:
                true(" \\cup ".join(pieces[::-1]), "interval")
            # flip the bracket at the first finite endpoint
            flipped = None
            for k, piece in enumerate(pieces):
                lo, hi = _split_top(piece[1:-1])
                if "\\infty" not in lo:
                    new = ("[" if piece[0] == "(" else "(") + piece[1:]
                elif "\\infty" not in hi:
                    new = piece[:-1] + ("]" if piece[-1] == ")" else ")")
                else:
                    continue
                flipped = " \\cup ".join(pieces[:k] + [new] + pieces[k + 1:])
                break
            if flipped:
                out.append((flipped, False, "interval", None))
            if len(pieces) == 1 and "\\infty" not in plain:
                lo, hi = _split_top(pieces[0][1:-1])
                if lo != hi:
                    out.append((f"{pieces[0][0]}{hi}, {lo}{pieces[0][-1]}", False, "interval", None))
            return out

    # unordered sets \{...\}
    if g.startswith("\\{") and g.endswith("\\}"):
        elems = _split_top(g[2:-2])
        if len(elems) > 1:
            true(g, "set")
            true("\\{" + ", ".join(elems[::-1]) + "\\}", "set")
            out.append(("\\{" + ", ".join(elems[:-1]) + "\\}", False, "set", None))
        return out

    # ordered tuples (points, ordered pairs / triples)
    if plain.startswith("(") and plain.endswith(")"):
        elems = _split_top(plain[1:-1])
        values = [_value(e) for e in elems]
        if len(elems) > 1 and all(v is not None for v in values):
            true(g, "tuple")
            true("(" + ", ".join(elems) + ")" if plain != g else "\\left(" + ",".join(elems) + "\\right)", "tuple")
            if _differs(values[0], values[1]):
                out.append(("(" + ", ".join([elems[1], elems[0]] + elems[2:]) + ")", False, "tuple", None))
            for k, (e, v) in enumerate(zip(elems, values)):
                if v != 0 and (_terms(e) or [None, None])[1:] == []:
                    neg = e[1:] if e.startswith("-") else "-" + e
                    out.append(("(" + ", ".join(elems[:k] + [neg] + elems[k + 1:]) + ")", False, "tuple", None))
                    break
            return out

    # a \pm b: the two solutions (C6)
    m = re.fullmatch(r"([^,\\]*?\d)\s*\\pm\s*(.+)", g)
    if m and _value(m.group(1)) is not None and _value(m.group(2)) is not None:
        a, b = m.group(1).strip(), m.group(2).strip()
        true(g, "list")
        true(f"{a} + {b}, {a} - {b}" if i % 2 else f"{a} - {b}, {a} + {b}", "list")
        out.append((f"{a} + {b}", False, "list", None))
        return out

    # comma lists of solutions (unordered when the problem asks for all solutions)
    if "," in g and not re.search(r"[\\(\[{]", g) and re.search(r"separated by commas|roots|all ", problem):
        elems = [e.strip() for e in g.split(",")]
        if all(re.fullmatch(r"-?\d+", e) for e in elems):
            true(g, "list")
            true(", ".join(elems[::-1]), "list")
            out.append((", ".join(elems[:-1]), False, "list", None))
            changed = [str(-int(elems[0]))] + elems[1:]
            if sorted(map(int, changed)) != sorted(map(int, elems)):
                out.append((", ".join(changed), False, "list", None))
        return out

    # (a+5)(b+2): commuting factors
    m = re.fullmatch(r"\(([a-z])\s*\+\s*(\d+)\)\(([a-z])\s*\+\s*(\d+)\)", g)
    if m and m.group(1) != m.group(3) and m.group(2) != m.group(4):
        x, p, y, q = m.groups()
        true(g, "symbolic")
        true(f"({y}+{q})({x}+{p})", "symbolic")
        out.append((f"({x}+{q})({y}+{p})", False, "symbolic", None))
        return out

    # \frac{poly}{n}
    m = re.fullmatch(r"\\frac\{([^{}]+)\}\{(\d+)\}", g)
    if m and _poly(m.group(1)) is not None and len(_terms(m.group(1))) > 1:
        terms = _terms(m.group(1).replace(" ", ""))
        true(g, "symbolic")
        true(f"\\frac{{{_join(terms[::-1])}}}{{{m.group(2)}}}", "symbolic")
        flipped = terms[:-1] + [terms[-1][1:] if terms[-1].startswith("-") else "-" + terms[-1].lstrip("+")]
        out.append((f"\\frac{{{_join(flipped)}}}{{{m.group(2)}}}", False, "symbolic", None))
        return out

    # polynomials (and complex numbers a + bi as polynomials in i)
    poly = _poly(g)
    if poly is not None and any(var for var, _ in poly):
        terms = _terms(g.replace(" ", ""))
        true(g, "symbolic")
        if len(terms) > 1:
            true(_join(terms[::-1]), "symbolic")
        flipped = terms[:-1] + [terms[-1][1:] if terms[-1].startswith("-") else "-" + terms[-1].lstrip("+")]
        if _poly(_join(flipped)) != poly:
            out.append((_join(flipped), False, "symbolic", None))
        if len(terms) == 1:
            mm = re.fullmatch(r"(-?)(\d*)(.+)", terms[0])
            bumped = f"{mm.group(1)}{int(mm.group(2) or '1') + 1}{mm.group(3)}"
            if _poly(bumped) not in (None, poly):
                out.append((bumped, False, "symbolic", None))
        return out

    # a trigonometric function of x
    m = re.fullmatch(r"\\(cot|tan|sec|csc|sin|cos)\s*x", g)
    if m:
        ratio = {"cot": ("\\cos x", "\\sin x"), "tan": ("\\sin x", "\\cos x"), "sec": ("1", "\\cos x"),
                 "csc": ("1", "\\sin x")}.get(m.group(1))
        true(g, "symbolic")
        if ratio:
            true(f"\\frac{{{ratio[0]}}}{{{ratio[1]}}}", "symbolic")
        other = {"cot": "tan", "tan": "cot", "sec": "csc", "csc": "sec", "sin": "cos", "cos": "sin"}[m.group(1)]
        out.append((f"\\{other} x", False, "symbolic", None))
        return out

    # constants: \sqrt, \pi, sums of them
    v = _value(g)
    if v is not None:
        true(g, "symbolic")
        mk = re.fullmatch(r"(\d+)\s*\\sqrt\s*(?:\{(\d+)\}|(\d))", g)
        mq = re.fullmatch(r"\\frac\{\\sqrt\{(\d+)\}\}\{(\d+)\}", g)
        terms = _terms(g)
        if mk:
            k, n = int(mk.group(1)), int(mk.group(2) or mk.group(3))
            true(f"\\sqrt{{{k * k * n}}}", "symbolic")
        elif mq and mq.group(1) == mq.group(2):
            true(f"\\frac{{1}}{{\\sqrt{{{mq.group(1)}}}}}", "symbolic")
        elif terms and len(terms) == 2:
            true(_join(terms[::-1]), "symbolic")
        elif "\\frac" in g:
            true(g.replace("\\frac", "\\dfrac"), "symbolic")
        # wrong: flip the sign (single term) or bump the last integer literal
        if terms and len(terms) == 1 and _differs(v, 0):
            flipped = g[1:] if g.startswith("-") else "-" + g
            out.append(_neg(flipped, g, "symbolic"))
        lits = list(re.finditer(r"\d+", g))
        if lits:
            lit = lits[-1]
            bumped = g[:lit.start()] + str(int(lit.group()) + 1) + g[lit.end():]
            bv = _value(bumped)
            if bv is not None and _differs(bv, v):
                out.append(_neg(bumped, g, "symbolic"))
        return out
    return out


def math500_cases(path: pathlib.Path) -> list[Case]:
    """Derived cases from the MATH-500 file (jsonl with `answer`, `solution`): for every gold answer
    whose shape has certain rewritings, equivalent rewritings (True) and non-equivalent ones (False),
    each wrapped in a realistic full model output."""
    rows = [json.loads(line) for line in pathlib.Path(path).read_text().splitlines() if line.strip()]
    cases: list[Case] = []
    seen: set[tuple[str, str]] = set()
    k = 0
    for i, row in enumerate(rows):
        gold = row["answer"]
        work = _working(row.get("solution", ""))
        answers: set[str] = set()
        for answer, label, shape, paper in _rewrites(gold, row.get("problem", ""), i, rows):
            if answer in answers:
                continue
            answers.add(answer)
            template = _TEMPLATES[k % len(_TEMPLATES)]
            k += 1
            prediction = _fill(template, work, answer)
            if (gold, prediction) in seen:
                continue
            seen.add((gold, prediction))
            cases.append(Case(gold, prediction, label, shape, "math", (), paper))
    return cases
