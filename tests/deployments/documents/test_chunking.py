"""Overlapping chunks: boundaries, overlap, pages, normalisation, bounds, determinism."""

from __future__ import annotations

import re

import pytest

from deployments.documents.chunking import chunk_pages, normalise
from deployments.documents.pdf import PageText
from deployments.errors import InvalidJobError

WORDS = re.compile(r"\S+")


def sentences(count: int, page: int) -> str:
    return " ".join(f"Sentence {i} of page {page} has several plain words in it." for i in range(count))


def test_normalise_whitespace_and_paragraphs():
    text = "  Line one\nwraps here.\n\n\n  Second   para\tgraph\x00.\r\n \r\nThird.\u00a0End  "
    assert normalise(text) == "Line one wraps here.\n\nSecond para graph.\n\nThird. End"


def test_short_document_is_one_chunk():
    chunks = chunk_pages([PageText(1, "Just a little text.")], chunk_chars=100, overlap_chars=20)
    assert [(c.index, c.page, c.text) for c in chunks] == [(0, 1, "Just a little text.")]


def test_chunks_are_bounded_overlap_and_end_at_sentences():
    pages = [PageText(1, sentences(30, 1))]
    chunks = chunk_pages(pages, chunk_chars=300, overlap_chars=80)
    assert len(chunks) > 5
    assert [c.index for c in chunks] == list(range(len(chunks)))
    for chunk in chunks:
        assert len(chunk.text) <= 300
        assert chunk.text == chunk.text.strip() and "  " not in chunk.text
    for chunk in chunks[:-1]:
        assert chunk.text.endswith("."), chunk.text[-30:]  # a sentence boundary was available
    words = set(WORDS.findall(pages[0].text))
    for before, after in zip(chunks, chunks[1:], strict=False):
        for word in WORDS.findall(after.text):
            assert word in words  # never a word cut in two
        head = after.text[:40]
        assert head in before.text  # the next chunk starts inside the previous one: overlap
        overlap = len(before.text) - before.text.index(head)
        assert 0 < overlap <= 80


def test_prefers_paragraph_breaks():
    first = "Opening paragraph with a few words. " * 4
    text = first.strip() + "\n\n" + "Next paragraph goes on and on. " * 10
    chunks = chunk_pages([PageText(1, text)], chunk_chars=200, overlap_chars=0)
    assert chunks[0].text == first.strip()
    assert chunks[1].text.startswith("Next paragraph")


def test_no_mid_word_cut_without_sentences():
    text = " ".join(f"word{i:03d}" for i in range(200))  # no sentence ends at all
    chunks = chunk_pages([PageText(1, text)], chunk_chars=100, overlap_chars=25)
    for chunk in chunks:
        assert all(re.fullmatch(r"word\d{3}", w) for w in chunk.text.split())
    joined = set(w for c in chunks for w in c.text.split())
    assert joined == set(text.split())  # nothing lost


def test_an_overlong_word_is_cut_hard():
    chunks = chunk_pages([PageText(1, "x" * 250)], chunk_chars=100, overlap_chars=10)
    assert all(len(c.text) <= 100 for c in chunks)
    assert "".join(c.text for c in chunks).count("x") >= 250


def test_each_chunk_names_the_page_it_starts_on():
    pages = [PageText(1, sentences(6, 1)), PageText(2, ""), PageText(3, sentences(6, 3)), PageText(4, sentences(6, 4))]
    chunks = chunk_pages(pages, chunk_chars=200, overlap_chars=50)
    for chunk in chunks:
        first = re.search(r"of page (\d+)", chunk.text)
        assert first is not None
        # the chunk starts on the page of the first sentence it holds (or in the sentence before it)
        assert chunk.page in (int(first.group(1)), int(first.group(1)) - 1, int(first.group(1)) - 2)
        assert chunk.page != 2  # page 2 has no text
    assert chunks[0].page == 1 and chunks[-1].page == 4
    assert {c.page for c in chunks} == {1, 3, 4}


def test_page_of_a_chunk_starting_exactly_on_a_page():
    pages = [PageText(1, "Alpha. " * 20), PageText(2, "Beta. " * 20)]
    chunks = chunk_pages(pages, chunk_chars=140, overlap_chars=0)
    beta = [c for c in chunks if c.text.startswith("Beta")]
    assert beta and all(c.page == 2 for c in beta)
    assert all(c.page == 1 for c in chunks if c.text.startswith("Alpha"))


def test_deterministic():
    pages = [PageText(1, sentences(40, 1)), PageText(2, sentences(40, 2))]
    assert chunk_pages(pages, 350, 70) == chunk_pages(list(pages), 350, 70)


def test_max_chunks():
    pages = [PageText(1, sentences(50, 1))]
    count = len(chunk_pages(pages, chunk_chars=200, overlap_chars=40))
    assert len(chunk_pages(pages, chunk_chars=200, overlap_chars=40, max_chunks=count)) == count
    with pytest.raises(InvalidJobError) as caught:
        chunk_pages(pages, chunk_chars=200, overlap_chars=40, max_chunks=count - 1)
    assert caught.value.field == "url" and f"at most {count - 1} chunks" in caught.value.message


def test_large_overlap_still_moves_on():
    text = sentences(100, 1)
    chunks = chunk_pages([PageText(1, text)], chunk_chars=400, overlap_chars=200)
    assert len(chunks) <= len(text) // 100 + 1  # every chunk moves on by at least a quarter chunk


def test_bad_settings():
    with pytest.raises(ValueError):
        chunk_pages([], chunk_chars=100, overlap_chars=60)
    assert chunk_pages([PageText(1, "   \n\n ")]) == []
