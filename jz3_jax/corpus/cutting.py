"""Cut one document into snippets of at most `max_chars` characters, at the best boundary available.

A document is split at its strongest boundaries first (markdown headings, LaTeX `\\section`s); a
piece that is still too long is split at the next weaker boundary: paragraphs, then sentences,
then words, and a single word longer than the bound is cut hard. Consecutive pieces are packed
together while they fit. Every snippet is stripped and at most `max_chars` long.
"""

from __future__ import annotations

import re
from typing import Callable

DOC_KINDS = ("plain", "markdown", "latex", "qa")

_HEADING = re.compile(r"(?m)^(?=#{1,6}[ \t])")
_SECTION = re.compile(r"(?=\\(?:chapter|section|subsection|subsubsection)\*?\s*[{\[])")
_PARAGRAPH = re.compile(r"\n[ \t]*\n")
_SENTENCE = re.compile(r"(?<=[.!?\u3002])\s+")
_DOCUMENT = re.compile(r"\\begin\{document\}(.*?)(?:\\end\{document\}|\Z)", re.DOTALL)

# (split, joiner used when packing pieces, hard): the parts of an oversized piece are packed with
# their neighbours, except at a hard boundary (headings, sections), where the next piece starts anew.
Splitter = tuple[Callable[[str], list[str]], str, bool]

_PARAGRAPHS: Splitter = (_PARAGRAPH.split, "\n\n", False)
_SENTENCES: Splitter = (_SENTENCE.split, " ", False)
_WORDS: Splitter = (str.split, " ", False)
_SPLITTERS: dict[str, list[Splitter]] = {
    "plain": [_PARAGRAPHS, _SENTENCES, _WORDS],
    "qa": [_PARAGRAPHS, _SENTENCES, _WORDS],
    "markdown": [(_HEADING.split, "\n\n", True), _PARAGRAPHS, _SENTENCES, _WORDS],
    "latex": [(_SECTION.split, "\n\n", True), _PARAGRAPHS, _SENTENCES, _WORDS],
}


def latex_body(text: str) -> str:
    """The part of a LaTeX file between `\\begin{document}` and `\\end{document}` (all of it if absent)."""
    match = _DOCUMENT.search(text)
    return match.group(1) if match else text


def cut(text: str, max_chars: int, kind: str = "plain") -> list[str]:
    """The snippets of `text` (a document of `kind`, one of DOC_KINDS), in document order."""
    if max_chars < 1:
        raise ValueError(f"max_chars must be >= 1, got {max_chars}")
    if kind == "latex":
        text = latex_body(text)
    return _split(text, _SPLITTERS[kind], max_chars)


def _split(text: str, splitters: list[Splitter], max_chars: int) -> list[str]:
    text = text.strip()
    if not text:
        return []
    if len(text) <= max_chars:
        return [text]
    if not splitters:  # one word longer than the bound
        return [text[i:i + max_chars] for i in range(0, len(text), max_chars)]
    (split, joiner, hard), rest = splitters[0], splitters[1:]
    pieces = [p.strip() for p in split(text)]
    pieces = [p for p in pieces if p]
    if len(pieces) <= 1:
        return _split(text, rest, max_chars)
    out: list[str] = []
    current = ""
    for piece in pieces:
        if len(piece) > max_chars and hard:
            if current:
                out.append(current)
                current = ""
            out.extend(_split(piece, rest, max_chars))
            continue
        # the parts of a long paragraph or sentence are packed like whole ones, so a heading
        # stays with the start of its section
        for unit in _split(piece, rest, max_chars) if len(piece) > max_chars else [piece]:
            if not current:
                current = unit
            elif len(current) + len(joiner) + len(unit) <= max_chars:
                current = current + joiner + unit
            else:
                out.append(current)
                current = unit
    if current:
        out.append(current)
    return out
