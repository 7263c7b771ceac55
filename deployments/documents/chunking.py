"""Overlapping text chunks of a document, for embedding.

The pages' text is normalised first: control characters dropped, runs of spaces and
single line breaks (a PDF's line wraps) become one space, a blank line (two or more line
breaks) becomes a paragraph break ``"\\n\\n"``; a word hyphenated across a line break is
left as it is. Pages are joined by paragraph breaks, and the document is cut in one pass, so a
chunk may run across a page break; each chunk carries the page its first character is on.

A chunk is at most ``chunk_chars`` long. It ends at the last paragraph break in its last
part (the last half, or less when the overlap is large: every chunk moves the text on by at
least a quarter chunk), else the last sentence end (``. ! ?`` then a space), else the last
space; only a word longer than that part is cut mid-word. The next chunk starts about
``overlap_chars`` before the previous one ended, moved forward to the start of a word.
The same pages always give the same chunks.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from deployments.errors import InvalidJobError

PARAGRAPH = "\n\n"
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_PARAGRAPH_BREAK = re.compile(r"[ \t]*(?:\r\n?|\n)(?:[ \t]*(?:\r\n?|\n))+[ \t]*")
_SPACES = re.compile(r"\s+")
_SENTENCE_END = re.compile(r"[.!?][\"')\]]*\s")


class PageLike(Protocol):
    """What :func:`chunk_pages` reads of a page (``pdf.PageText`` has it)."""

    @property
    def page(self) -> int: ...

    @property
    def text(self) -> str: ...


@dataclass(frozen=True)
class Chunk:
    """One piece of a document: its position, the (1-based) page it starts on, its text."""

    index: int
    page: int
    text: str


def normalise(text: str) -> str:
    """Whitespace as described in the module docstring; no leading or trailing space."""
    text = _CONTROL.sub("", text.replace("\u00a0", " "))
    paragraphs = (_SPACES.sub(" ", part).strip() for part in _PARAGRAPH_BREAK.split(text))
    return PARAGRAPH.join(p for p in paragraphs if p)


def _document(pages: Iterable[PageLike]) -> tuple[str, list[tuple[int, int]]]:
    """The normalised text of all pages and where each page starts in it: ``[(offset, page)]``."""
    parts: list[str] = []
    starts: list[tuple[int, int]] = []
    offset = 0
    for item in pages:
        text = normalise(item.text)
        if not text:
            continue
        if parts:
            parts.append(PARAGRAPH)
            offset += len(PARAGRAPH)
        starts.append((offset, item.page))
        parts.append(text)
        offset += len(text)
    return "".join(parts), starts


def _cut(text: str, start: int, limit: int, chunk_chars: int, overlap_chars: int) -> int:
    """Where the chunk starting at ``start`` ends (exclusive)."""
    end = start + chunk_chars
    if end >= limit:
        return limit
    # The earliest cut that still moves the next chunk on by at least a quarter chunk past the overlap.
    floor = start + max(chunk_chars // 2, overlap_chars + chunk_chars // 4)
    window = text[floor:end + 1]  # the character at ``end`` may itself be the space to break at
    paragraph = window.rfind(PARAGRAPH)
    if paragraph >= 0:
        return floor + paragraph
    sentence_ends = [m.end() - 1 for m in _SENTENCE_END.finditer(window)]
    if sentence_ends:
        return floor + sentence_ends[-1]
    space = window.rfind(" ")
    if space >= 0:
        return floor + space
    newline = window.rfind("\n")
    return floor + newline if newline >= 0 else end


def _next_start(text: str, previous: int, end: int, overlap_chars: int) -> int:
    """The next chunk's start: ``overlap_chars`` before ``end``, moved forward to a word start."""
    start = max(previous + 1, end - overlap_chars)
    if start < end and start > 0 and not text[start - 1].isspace():
        boundary = _SPACES.search(text, start, end)
        start = boundary.end() if boundary else end  # no word start in the overlap: no overlap
    while start < len(text) and text[start].isspace():
        start += 1
    return start


def chunk_pages(pages: Iterable[PageLike], chunk_chars: int = 1000, overlap_chars: int = 200,
                max_chunks: int = 5000) -> list[Chunk]:
    """Cut the pages' text into overlapping chunks (see the module docstring).

    ``max_chunks`` bounds the result: a document that needs more is refused with an
    ``InvalidJobError`` on ``url`` naming the limit. Pages with no text give no chunk; a
    document with no text gives ``[]``.
    """
    if chunk_chars < 20:
        raise ValueError("chunk_chars must be at least 20")
    if not 0 <= overlap_chars <= chunk_chars // 2:
        raise ValueError("overlap_chars must be in 0..chunk_chars/2")
    if max_chunks < 1:
        raise ValueError("max_chunks must be positive")
    text, starts = _document(pages)
    chunks: list[Chunk] = []
    page_at = 0
    start = 0
    while start < len(text):
        end = _cut(text, start, len(text), chunk_chars, overlap_chars)
        body = text[start:end].strip()
        if body:
            if len(chunks) == max_chunks:
                raise InvalidJobError("url", f"the document makes more than {max_chunks} chunks of {chunk_chars} "
                                             f"characters; allowed: at most {max_chunks} chunks (split the document)")
            while page_at + 1 < len(starts) and starts[page_at + 1][0] <= start:
                page_at += 1
            chunks.append(Chunk(index=len(chunks), page=starts[page_at][1], text=body))
        if end >= len(text):
            break
        start = _next_start(text, start, end, overlap_chars)
    return chunks
