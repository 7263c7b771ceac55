"""PDF text extraction in a limited child: normal documents, refusals, and PDF bombs."""

from __future__ import annotations

import os
import time
import zlib
from pathlib import Path

import pytest
from fpdf import FPDF

from deployments.documents.pdf import PdfLimits, check_header, extract_pages
from deployments.errors import InvalidJobError

FONT = b"/Resources << /Font << /F1 << /Type /Font /Subtype /Type1 /BaseFont /Helvetica >> >> >>"


def make_pdf(pages: list[str], *, password: str | None = None) -> bytes:
    """A real PDF (fpdf2) with one page per entry; an empty entry is a page with a drawing only."""
    pdf = FPDF()
    pdf.set_font("helvetica", size=11)
    for text in pages:
        pdf.add_page()
        if text:
            pdf.multi_cell(0, 6, text)
        else:
            pdf.rect(20, 20, 60, 40)
    if password is not None:
        pdf.set_encryption(owner_password="owner-" + password, user_password=password)
    return bytes(pdf.output())


def build_pdf(objects: list[bytes]) -> bytes:
    """A PDF by hand: ``objects[i]`` is the body of object ``i + 1``; object 1 is the catalog."""
    out = bytearray(b"%PDF-1.7\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{offset:010d} 00000 n \n".encode() for offset in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def one_page_pdf(stream: bytes, filters: bytes = b"/Filter /FlateDecode") -> bytes:
    return build_pdf([
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R " + FONT + b" >>",
        b"<< /Length " + str(len(stream)).encode() + b" " + filters + b" >>\nstream\n" + stream + b"\nendstream",
    ])


def deflated_zeros(total: int, block: int = 1 << 24) -> bytes:
    """A zlib stream of ``total`` zero bytes, made without compressing them all: after a full
    flush the compressor's state resets, so every later block compresses to the same bytes."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    zero = bytes(block)
    first = compressor.compress(zero) + compressor.flush(zlib.Z_FULL_FLUSH)
    repeat = compressor.compress(zero) + compressor.flush(zlib.Z_FULL_FLUSH)
    count = total // block
    adler = 1
    for _ in range(count):
        adler = zlib.adler32(zero, adler)
    return b"\x78\xda" + first + repeat * (count - 1) + compressor.flush(zlib.Z_FINISH) + adler.to_bytes(4, "big")


def children() -> list[int]:
    """Live child processes of this test process (Linux /proc)."""
    me = str(os.getpid())
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        if fields.get("PPid", "").strip() == me:
            found.append(int(entry.name))
    return found


def refused(data: bytes, limits: PdfLimits | None = None) -> str:
    with pytest.raises(InvalidJobError) as caught:
        extract_pages(data, limits or PdfLimits())
    assert caught.value.field == "url"
    return caught.value.message


def test_pages_and_text_in_order():
    pages = extract_pages(make_pdf(["Alpha page talks about apples.", "", "Gamma page talks about grapes."]),
                          PdfLimits())
    assert [p.page for p in pages] == [1, 2, 3]
    assert "apples" in pages[0].text and "grapes" not in pages[0].text
    assert pages[1].text.strip() == ""  # a page without text keeps its place
    assert "grapes" in pages[2].text


def test_not_a_pdf_and_empty_and_too_big():
    assert "%PDF-" in refused(b"<html>hello</html>")
    assert "empty" in refused(b"")
    data = make_pdf(["small"])
    message = refused(data, PdfLimits(max_bytes=len(data) - 1))
    assert f"at most {len(data) - 1} bytes" in message
    check_header(b"junk" * 10 + data, PdfLimits())  # a header after some junk is accepted, as readers do


def test_encrypted_is_refused():
    assert "encrypted" in refused(make_pdf(["secret text"], password="pw"))
    assert "encrypted" in refused(make_pdf(["not so secret"], password=""))  # empty user password: still refused


def test_no_text_is_refused():
    message = refused(make_pdf(["", ""]))
    assert "no extractable text" in message and "OCR" in message


def test_page_limit_exactly_and_one_past():
    limits = PdfLimits(max_pages=3)
    assert len(extract_pages(make_pdf(["one", "two", "three"]), limits)) == 3
    assert "4 pages; allowed: at most 3 pages" in refused(make_pdf(["one", "two", "three", "four"]), limits)


def test_character_limit_refuses_rather_than_truncates():
    data = make_pdf(["x" * 40 + " word", "y" * 40])
    total = sum(len(p.text) for p in extract_pages(data, PdfLimits()))
    assert len(extract_pages(data, PdfLimits(max_chars=total))) == 2
    message = refused(data, PdfLimits(max_chars=total - 1))
    assert f"more than {total - 1} characters" in message


def test_damaged_pdf():
    assert "could not be read" in refused(b"%PDF-1.7\n" + os.urandom(2000))


def test_flate_bomb_is_refused_quickly_and_the_child_is_gone():
    stream = deflated_zeros(1 << 30)  # inflates to 1 GiB
    data = one_page_pdf(stream)
    assert len(data) < 2_000_000
    limits = PdfLimits(parse_seconds=20)
    start = time.monotonic()
    message = refused(data, limits)
    assert time.monotonic() - start < limits.parse_seconds
    assert "inflates past the parser's limit of 75 MB" in message
    assert children() == []


def test_memory_limit_of_the_child():
    data = one_page_pdf(deflated_zeros(64 << 20))  # under pypdf's own 75 MB cap: only RLIMIT_AS stops it
    message = refused(data, PdfLimits(memory_bytes=128 << 20, parse_seconds=20))
    assert "more than 128 MiB of memory" in message
    assert children() == []


def test_wall_clock_timeout_kills_the_child():
    start = time.monotonic()
    message = refused(make_pdf(["fine text"]), PdfLimits(parse_seconds=0.02))
    assert "longer than 0.02 s" in message
    assert time.monotonic() - start < 5
    assert children() == []


def test_page_tree_loop():
    data = build_pdf([
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [2 0 R 3 0 R] /Count 2 >>",  # a /Pages node that is its own kid
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] >>",
    ])
    assert "loops back on itself" in refused(data)
    assert children() == []


def test_a_million_pages_claimed():
    kids = b" ".join([b"3 0 R"] * 1_000_000)  # one page referenced a million times (6 MB)
    data = build_pdf([
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [" + kids + b"] /Count 1000000 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R " + FONT + b" >>",
        b"<< /Length 38 >>\nstream\nBT /F1 12 Tf 72 712 Td (Hello) Tj ET\n\nendstream",
    ])
    start = time.monotonic()
    assert "at most 100,000 entries" in refused(data, PdfLimits(parse_seconds=20))
    assert time.monotonic() - start < 20


def test_deeply_nested_objects():
    depth = 200_000
    nested = b"[" * depth + b"]" * depth
    data = build_pdf([
        b"<< /Type /Catalog /Pages 2 0 R /Junk " + nested + b" >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] >>",
    ])
    refused(data, PdfLimits(parse_seconds=20))
    assert children() == []


def test_limits_are_checked():
    with pytest.raises(ValueError):
        PdfLimits(max_pages=0)
    with pytest.raises(ValueError):
        PdfLimits(parse_seconds=0)


def test_a_child_killed_for_cpu_time_or_otherwise_is_a_refusal():
    import signal

    from deployments.documents.pdf import _crashed

    limits = PdfLimits(parse_seconds=5, memory_bytes=256 << 20)
    assert "5 s of CPU time" in _crashed(-signal.SIGXCPU, limits).message
    assert "at most 256 MiB of memory and 5 s" in _crashed(-signal.SIGKILL, limits).message
