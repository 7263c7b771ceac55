"""PDF text extraction under hard limits, in a throw-away child process.

A PDF is a program-like format: a few kilobytes can inflate to gigabytes (a Flate bomb),
loop its page tree, claim millions of pages or nest objects until a parser recurses to
death. :func:`extract_pages` therefore never parses in the replica's own process. It runs
pypdf in a fresh child interpreter (``python -I -c ...`` via :mod:`subprocess`) that:

* limits itself before it reads a byte of the PDF: ``RLIMIT_AS`` (``memory_bytes``),
  ``RLIMIT_CPU`` (``parse_seconds`` + 1 s, then SIGXCPU), ``RLIMIT_FSIZE`` 0 (it writes no
  files) and ``RLIMIT_CORE`` 0;
* gets the PDF on stdin and only ``PATH``/``LANG`` as its environment (no service keys),
  and answers one JSON object on stdout;
* is killed by the parent once ``parse_seconds`` of wall-clock time have passed.

A subprocess rather than ``multiprocessing``'s spawn context: spawn re-runs the parent's
``__main__`` (inside Serve, Ray's worker script) in the child and pickles across a pipe; a
``-c`` one-liner imports only this module (stdlib + :mod:`deployments.errors`) and pypdf, so
the child starts in a fraction of a second and never imports torch.

Every refusal is an :class:`~deployments.errors.InvalidJobError` on field ``url`` (a 422)
naming the limit: too many bytes, not a PDF (no ``%PDF-`` header in the first 1024
bytes), encrypted (refused, even with an empty user password: we do not decrypt), too many
pages, too much text, no extractable text (a scanned PDF; no OCR here), a stream or object
past pypdf's own limits (a Flate stream inflates to at most 75 MB), over the memory or the
time limit, nested too deeply, or unreadable.

**Too much text is refused, not truncated**: once the extracted text passes ``max_chars``
the child stops and the document is refused with a message naming the limit. Indexing the
first part of a document silently would answer questions about the rest with nothing.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from deployments.errors import InvalidJobError

logger = logging.getLogger(__name__)

FIELD = "url"  # the request field the PDF came from
MAGIC_WINDOW = 1024  # the %PDF- header may follow up to this many bytes of junk (as readers accept)
MIB = 1024 * 1024
# pypdf's own caps (pypdf.Configuration defaults, named in refusals): an inflated stream, structure sizes.
PYPDF_STREAM_LIMIT_MB = 75
_ROOT = str(Path(__file__).resolve().parents[2])  # the directory holding the ``deployments`` package
_CHILD_CODE = (
    "import sys; sys.path.insert(0, {root!r}); "
    "from deployments.documents.pdf import child_main; sys.exit(child_main())"
)


@dataclass(frozen=True)
class PdfLimits:
    """What one PDF may cost. ``max_bytes`` is checked before the child starts."""

    max_bytes: int = 32 * MIB
    max_pages: int = 500
    max_chars: int = 2_000_000
    parse_seconds: float = 30.0
    memory_bytes: int = 1024 * MIB

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_pages", "max_chars", "memory_bytes"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"PdfLimits.{name} must be a positive integer")
        if not self.parse_seconds > 0:
            raise ValueError("PdfLimits.parse_seconds must be positive")


@dataclass(frozen=True)
class PageText:
    """The text of one page; ``page`` is 1-based."""

    page: int
    text: str


def _refuse(message: str) -> InvalidJobError:
    return InvalidJobError(FIELD, message)


def check_header(data: bytes, limits: PdfLimits) -> None:
    """Cheap checks before any parsing: a non-empty byte string within ``max_bytes`` that
    carries the ``%PDF-`` header."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise _refuse("the document must be PDF bytes")
    size = len(data)
    if size == 0:
        raise _refuse("the file is empty; send a PDF")
    if size > limits.max_bytes:
        raise _refuse(f"the PDF is {size} bytes; allowed: at most {limits.max_bytes} bytes")
    if bytes(data[:MAGIC_WINDOW]).find(b"%PDF-") < 0:
        raise _refuse("the file is not a PDF (no %PDF- header); allowed: PDF documents only")


def extract_pages(data: bytes, limits: PdfLimits) -> list[PageText]:
    """The text of every page of ``data``, in order (a page without text has ``text == ""``).

    Blocking (call it off the event loop): it starts a child process and waits at most
    ``limits.parse_seconds`` for it. Raises ``InvalidJobError("url", ...)`` naming the limit
    or the reason when the PDF is refused (see the module docstring); never returns a
    partial text.
    """
    check_header(data, limits)
    command = [sys.executable, "-I", "-c", _CHILD_CODE.format(root=_ROOT), json.dumps(asdict(limits))]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
    try:
        done = subprocess.run(command, input=bytes(data), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
                              timeout=limits.parse_seconds, check=False, close_fds=True)
    except subprocess.TimeoutExpired:  # run() has killed and reaped the child
        logger.info("pdf parse timed out", extra={"parse_seconds": limits.parse_seconds, "bytes": len(data)})
        raise _refuse(f"parsing the PDF took longer than {limits.parse_seconds:g} s; allowed: at most "
                      f"{limits.parse_seconds:g} s") from None
    answer = _answer(done.stdout)
    if done.returncode != 0 or answer is None:
        raise _crashed(done.returncode, limits)
    if answer.get("error"):
        logger.info("pdf refused reason=%s", answer["error"], extra={"reason": answer["error"],
                                                                      "detail": answer.get("detail", "")})
        raise _refuse(_message(answer, limits))
    return [PageText(int(page), str(text)) for page, text in answer["pages"]]


def _answer(stdout: bytes) -> dict[str, Any] | None:
    try:
        answer = json.loads(stdout.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return answer if isinstance(answer, dict) else None


def _crashed(returncode: int, limits: PdfLimits) -> InvalidJobError:
    """The child died without an answer: killed by its CPU limit, or ran out of memory where
    Python could not turn that into a ``MemoryError``."""
    logger.info("pdf parser child failed returncode=%s", returncode, extra={"returncode": returncode})
    if returncode == -signal.SIGXCPU:
        return _refuse(f"parsing the PDF took longer than {limits.parse_seconds:g} s of CPU time; allowed: at most "
                       f"{limits.parse_seconds:g} s")
    return _refuse(f"the PDF could not be parsed within the limits (at most {limits.memory_bytes // MIB} MiB of "
                   f"memory and {limits.parse_seconds:g} s)")


def _message(answer: dict[str, Any], limits: PdfLimits) -> str:
    reason = answer["error"]
    if reason == "encrypted":
        return "the PDF is encrypted (password-protected); allowed: unencrypted PDFs only"
    if reason == "pages":
        return f"the PDF has {answer.get('pages')} pages; allowed: at most {limits.max_pages} pages"
    if reason == "chars":
        return (f"the PDF holds more than {limits.max_chars} characters of text; allowed: at most {limits.max_chars} "
                "(split the document)")
    if reason == "no_text":
        return ("the PDF has no extractable text (a scanned document or images only?); OCR is not supported, send a "
                "PDF with a text layer")
    detail = str(answer.get("detail", "")).lower()
    if reason == "limit" and "decompress" in detail:
        return f"the PDF holds a compressed stream that inflates past the parser's limit of {PYPDF_STREAM_LIMIT_MB} MB"
    if reason == "limit":
        return ("the PDF exceeds the parser's structure limits (at most 100,000 entries in an array, a dictionary or "
                "the page tree, nested at most 100 deep)")
    if "cyclic" in detail:
        return "the PDF's page tree loops back on itself"
    if reason == "memory":
        return f"parsing the PDF needed more than {limits.memory_bytes // MIB} MiB of memory; allowed: at most " \
               f"{limits.memory_bytes // MIB} MiB"
    if reason == "nesting":
        return "the PDF's objects are nested too deeply to parse"
    return "the PDF could not be read (damaged or not a valid PDF)"


# -- the child ------------------------------------------------------------------
def _limit_self(limits: PdfLimits) -> None:
    import math
    import resource

    cpu = math.ceil(limits.parse_seconds) + 1
    # (soft, hard): at the CPU soft limit the kernel sends SIGXCPU, a second later SIGKILL.
    for which, soft, hard in ((resource.RLIMIT_AS, limits.memory_bytes, limits.memory_bytes),
                              (resource.RLIMIT_CPU, cpu, cpu + 1), (resource.RLIMIT_FSIZE, 0, 0),
                              (resource.RLIMIT_CORE, 0, 0)):
        _, current = resource.getrlimit(which)
        if current != resource.RLIM_INFINITY:
            soft, hard = min(soft, current), min(hard, current)
        resource.setrlimit(which, (soft, hard))


def _extract(data: bytes, limits: PdfLimits) -> dict[str, Any]:
    from pypdf import PdfReader, apply_configuration

    with apply_configuration(jbig2dec_binary=None):  # text only: never run an external image decoder
        import io

        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            return {"error": "encrypted"}
        count = len(reader.pages)  # walks the page tree (pypdf bounds its depth and entries)
        if count > limits.max_pages:
            return {"error": "pages", "pages": count}
        pages: list[tuple[int, str]] = []
        total = 0
        for number, page in enumerate(reader.pages, start=1):
            text = page.extract_text() or ""
            total += len(text)
            if total > limits.max_chars:
                return {"error": "chars"}
            pages.append((number, text))
        if not any(text.strip() for _, text in pages):
            return {"error": "no_text"}
        return {"pages": pages}


def child_main() -> int:
    """Entry point of the parser child: limits in ``argv[1]`` (JSON), the PDF on stdin,
    one JSON answer on stdout (``{"pages": [[n, text], ...]}`` or ``{"error": reason}``)."""
    limits = PdfLimits(**json.loads(sys.argv[1]))
    _limit_self(limits)
    logging.disable(logging.CRITICAL)  # pypdf warns per broken object; nobody reads the child's stderr
    data = sys.stdin.buffer.read(limits.max_bytes + 1)
    try:
        from pypdf.errors import LimitReachedError

        try:
            answer = _extract(data, limits)
        except LimitReachedError as exc:
            answer = {"error": "limit", "detail": str(exc)[:200]}
    except MemoryError:
        answer = {"error": "memory"}
    except RecursionError:
        answer = {"error": "nesting"}
    except Exception as exc:  # a damaged file: pypdf raises many kinds
        answer = {"error": "unreadable", "detail": f"{type(exc).__name__}: {exc}"[:200]}
    try:
        sys.stdout.buffer.write(json.dumps(answer, ensure_ascii=False).encode("utf-8"))
        sys.stdout.buffer.flush()
    except MemoryError:
        return 3
    return 0
