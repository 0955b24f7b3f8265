"""Where a model's text states its answer (the `strict` policy's extraction).

`extract(text)` tries, in order: the last `\\boxed{}` or the "final answer is" sentence (whichever
comes later; Minerva's "Final Answer: The final answer is X. I hope it is correct." ends at X),
"the answer is" up to the end of the answer, a GSM8K `#### X` line, an `Answer: X` line, a
markdown-bold answer in the last paragraph, a generation that *is* an answer (short, no prose),
the last `$...$` of the final line, a relation in the final sentence (`x \\geq 5 is the solution`),
and last of all the last number. `Extracted.parts` holds every boxed answer when there are
several, for golds with several parts.
"""

from __future__ import annotations

import dataclasses
import re

from jz3_jax.eval.grader.latex import boxed_spans, last_boxed, strip_math_delimiters
from jz3_jax.eval.grader.units import ANSWER_WORDS, UNIT_WORDS

NUMBER = re.compile(r"-?0,\d+(?![\d,])|-?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d{1,3}(?: \d{3})+(?![\d,])|\d+)(?:\.\d+)?"
                    r"(?:/\d+(?:\.\d+)?)?|-?\.\d+")
_FINAL = re.compile(r"final answer(?: is|:)?\s*:?", re.IGNORECASE)
_THE_ANSWER = re.compile(r"\banswer(?: to (?:the|this) (?:problem|question))?\s+(?:is|should be|would be|will be|"
                         r"=)\s*:?", re.IGNORECASE)
# A few-shot model that runs on into a new problem: what follows is not its answer.
_NEXT_PROBLEM = re.compile(r"\n\s*(?:#+\s*)?(?:Question|Problem|Q)\s*(?:[:：]|\n)")
_ANSWER_LINE = re.compile(r"^[\s>#*_-]*(?:\*\*)?\s*(?:(?:final|correct)\s+)?answer\s*(?:\*\*)?\s*(?:[:：]|(?=\$|\\\[|\\\())\s*"
                          r"(?:\*\*)?\s*(.+?)\s*$", re.IGNORECASE | re.MULTILINE)
_BOLD = re.compile(r"\*\*([^*\n]{1,80}?)\*\*")
_MATH = re.compile(r"(?<!\\)\$\$(.+?)(?<!\\)\$\$|(?<!\\)\$(.+?)(?<!\\)\$|\\\((.+?)\\\)|\\\[(.+?)\\\]", re.DOTALL)
_JOINED = re.compile(r"\s*(?:,|,?\s*\b(?:or|and)\b)\s*")  # "$x = -2$ or $x = 3$": one answer of two parts
_IS_WORD = re.compile(r"\b(?:is|are|was|were)\s+([A-Za-z][\w'-]*(?:\s+[A-Z][\w'-]*)?)\s*[.!]?\s*$")
_RELATION = re.compile(r"(-?[\w.\\{}]+\s*(?:<|>|\\leq?|\\geq?|\\lt|\\gt|\\neq?|≤|≥|<=|>=)\s*)?"
                       r"\b[a-zA-Z]\s*(?:<|>|\\leq?|\\geq?|\\lt|\\gt|\\neq?|≤|≥|<=|>=)\s*-?[\w.\\{}]+")
MAX_CHARS = 20_000  # the end of a generation holds its answer; a runaway one is read from its last part
_ANSWERED = re.compile(r"\\boxed|\\fbox|answer|####", re.IGNORECASE)
_BOX_LINK = re.compile(r"[\s$.,;]*(?:(?:and|or|\\text\{\s*(?:and|or)\s*\}|\\quad|\\qquad|,|"
                       r"[a-zA-Z](?:_\{?\w+\}?)?\s*=)[\s$.,;]*)*")  # what may sit between the boxes of one answer
_CHAT_TOKENS = re.compile(r"<\|[a-z_]+\|>(?:user|assistant|system)?")  # a chat template's turn markers
_CONNECTIVE = re.compile(r",?\s+(?:since|because|as|so|which|where|when|given|for|and thus|and so|"
                         r"this is|that is)\b", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class Extracted:
    """The answer text found, how it was found, and every boxed answer when there are several."""

    answer: str
    how: str
    parts: tuple[str, ...] = ()


def sentence_end(tail: str) -> str:
    """`tail` up to the end of its first sentence: a newline, or a period (or ; ! ?) followed by a
    space or the end, where the period is not a decimal point (`3.5` stays whole)."""
    tail = tail.split("\n", 1)[0]
    match = re.search(r"(?<!\\)[.;!?](?=\s|$)|\s+I hope it is correct", tail)
    if match:
        tail = tail[: match.start()]
    connective = _CONNECTIVE.search(tail)
    if connective and connective.start() > 0:
        tail = tail[: connective.start()]
    return tail.strip()


def _answer_after(tail: str) -> str:
    """The answer that starts `tail` (just after a phrase like "the answer is")."""
    tail = re.sub(r"^[\s:]*(?:\*\*)?\s*", "", tail)
    boxed = boxed_spans(tail)
    if boxed and boxed[0][0] < 3:
        return boxed[0][2]
    spans = list(_MATH.finditer(tail[:2000]))
    if spans and spans[0].start() == 0:  # "$2$ or $-3$": every span joined to the first
        run = [spans[0]]
        for span in spans[1:]:
            if not _JOINED.fullmatch(tail[run[-1].end():span.start()]):
                break
            run.append(span)
        inner = _join_spans(tail, run)
        inner_box = last_boxed(inner)
        return inner_box if inner_box is not None else inner
    answer = sentence_end(tail).strip("*").strip()
    remark = re.search(r"\s+\(([^()]*)\)$", answer)
    if remark and _prose_words(remark.group(1)) > 1:  # "5 (it is the only prime)"
        answer = answer[: remark.start()].strip()
    if _prose_words(answer) > 1:  # "The volume of $ABCD$ is 120": the answer follows the verb
        verb = list(re.finditer(r"\b(?:is|are|equals|was|be)\b|=", answer))
        if verb:
            answer = answer[verb[-1].end():].strip()
        if _prose_words(answer) > 1:
            answer = _last_math(answer) or last_number(answer) or answer
    return answer


def _last_match_tail(pattern: re.Pattern, text: str) -> tuple[int, str] | None:
    """(where the last match of `pattern` starts, the text after it), or None."""
    matches = list(pattern.finditer(text))
    if not matches:
        return None
    last = matches[-1]
    return last.start(), text[last.end():]


def _prose_words(s: str) -> int:
    """How many words of prose `s` holds (LaTeX commands, `\\text{}` units and answer words aside)."""
    s = re.sub(r"\\(?:begin|end)\{[^{}]*\}|\\[a-zA-Z]+", " ", s)
    words = re.findall(r"[A-Za-z]{2,}", s)
    return sum(1 for w in words if w.lower() not in UNIT_WORDS and w.lower() not in ANSWER_WORDS)


def _bare_answer(text: str) -> str | None:
    """The whole generation when it is itself an answer: one short line, at most one word of prose."""
    s = text.strip()
    if not s or "\n" in s or len(s) > 120:
        return None
    s = strip_math_delimiters(s.rstrip(".").rstrip())
    s = re.sub(r"^[^\W\d_]+\s*[:：]\s*", "", s)  # "Ergebnis: 0,125"
    return s if _prose_words(s) <= 1 else None


def _final_line(text: str) -> str:
    """The last non-empty line."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _last_math(text: str) -> str | None:
    """The content of the last `$...$`-style span in `text`, or None."""
    found = [next(g for g in m.groups() if g is not None) for m in _MATH.finditer(text)]
    found = [f.strip() for f in found if f.strip()]
    return found[-1] if found else None


def _join_spans(text: str, run: list[re.Match]) -> str:
    """The contents of math spans joined as one answer: "a or b" when "or" links them, else "a, b"."""
    texts = [t for t in (next(g for g in m.groups() if g is not None).strip() for m in run) if t]
    linked_by_or = len(run) > 1 and re.search(r"\bor\b", text[run[0].end():run[1].start()])
    return (" or " if linked_by_or else ", ").join(texts)


def _closing_math(sentence: str) -> str | None:
    """The math that ends a sentence (only words, no numbers, after it), with the spans joined to it
    by "or", "and" or commas (`$x = -2$ or $x = 3$`)."""
    spans = list(_MATH.finditer(sentence))
    if not spans or re.search(r"\d", sentence[spans[-1].end():]):
        return None
    run = [spans[-1]]
    for previous in reversed(spans[:-1]):
        if not _JOINED.fullmatch(sentence[previous.end(): run[0].start()]):
            break
        run.insert(0, previous)
    return _join_spans(sentence, run) or None


def _final_sentence(text: str) -> str:
    """The last sentence of the last line (a period inside `$...$` does not end a sentence)."""
    line = _final_line(text)
    masked = _MATH.sub(lambda m: "M" * len(m.group(0)), line)
    ends = [m.end() for m in re.finditer(r"[.!?](?=\s+\S)", masked)]
    return line[ends[-1]:] if ends else line


def last_number(text: str) -> str | None:
    """The last number in `text` (thousands separators and fractions a/b allowed)."""
    found = NUMBER.findall(text.replace("\\!", "").replace("{,}", ""))
    return found[-1] if found else None


def _linked_boxes(text: str, spans: list[tuple[int, int, str]]) -> tuple[str, ...]:
    """The contents of the last boxes when several are linked as one answer (`\\boxed{2} and
    \\boxed{5}`, `\\boxed{1}, \\boxed{2}`); () for a single box or boxes apart in the working."""
    run = [spans[-1]]
    for previous in reversed(spans[:-1]):
        if not _BOX_LINK.fullmatch(text[previous[1]: run[0][0]]):
            break
        run.insert(0, previous)
    contents = tuple(dict.fromkeys(c.strip() for _, _, c in run if c.strip()))
    return contents if len(contents) > 1 else ()


def extract(text: str) -> Extracted:
    """The answer a free-form solution gives (`Extracted("", "none")` when nothing looks like one)."""
    text = _CHAT_TOKENS.sub(" ", text).replace("−", "-").strip()
    run_on = _NEXT_PROBLEM.search(text)
    if run_on and _ANSWERED.search(text[: run_on.start()]):
        text = text[: run_on.start()].rstrip()
    text = text[-MAX_CHARS:]
    spans = boxed_spans(text)
    final = _last_match_tail(_FINAL, text)
    if final and (not spans or final[0] > spans[-1][0]):
        answer = _answer_after(final[1])
        if answer:
            return Extracted(answer, "final_answer")
    if spans:
        return Extracted(spans[-1][2].strip(), "boxed", _linked_boxes(text, spans))
    found = _last_match_tail(_THE_ANSWER, text)
    if found:
        answer = _answer_after(found[1])
        if answer:
            return Extracted(answer, "the_answer_is")
    hashes = re.findall(r"####\s*(.+)", text)
    if hashes:
        return Extracted(hashes[-1].strip(), "hashes")
    lines = _ANSWER_LINE.findall(text)
    if lines:
        return Extracted(_answer_after(lines[-1]) or lines[-1], "answer_line")
    last_paragraph = re.split(r"\n\s*\n", text)[-1]
    bold = _BOLD.findall(last_paragraph)
    if bold:
        return Extracted(strip_math_delimiters(re.sub(r"(?i)^\s*(?:final\s+)?answer\s*[:：]\s*", "", bold[-1])), "bold")
    bare = _bare_answer(text)
    if bare:
        return Extracted(bare, "bare")
    sentence = _final_sentence(text)
    math = _closing_math(sentence)
    if math:
        return Extracted(math, "last_math")
    relations = list(_RELATION.finditer(sentence[-300:]))
    if relations:
        return Extracted(relations[-1].group(0).strip(), "relation")
    number = last_number(text)
    if number:
        return Extracted(number, "last_number")
    word = _IS_WORD.search(sentence)  # "so the fastest runner is Evelyn."
    return Extracted(word.group(1), "last_word") if word else Extracted("", "none")
