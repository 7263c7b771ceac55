"""Request and output schemas of the document store routes (``pdfVectorStore``, ``listDocuments``,
``getDocument``, ``deleteDocument``). A document id is what the chat API's ``tools.pdf_references``
takes.

Unknown fields are ignored, as on every route. The name and cursor rules are the document store's
own (:mod:`deployments.documents.rules`), checked here where the value enters and again in the store.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from deployments.documents.rules import CURSOR_CHARS, LIST_DEFAULT, LIST_MAX, NAME_MAX_CHARS, refused_character

#: The shape of a document id (the store's ids are 32 hex characters; UUIDs and similar ids fit too).
DOCUMENT_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
DocumentId = Annotated[str, StringConstraints(pattern=DOCUMENT_ID_PATTERN)]
#: Longest ``url`` accepted: a ``data:`` URI of a PDF of ~70 MB (the route's byte cap is usually lower).
MAX_URL_CHARS = 100_000_000
#: ``url``: an http(s) URL or a base64 ``data:`` URI of a PDF.
PDF_URL_PATTERN = r"^([Hh][Tt][Tt][Pp][Ss]?://|data:application/pdf;base64,)"


_REFUSED = r"\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069"
#: A name as JSON Schema states it (``_printable`` enforces the same rule with a message that names it):
#: no control or bidirectional control character, and something besides spaces. (``(?!\n)``: Python's ``$``,
#: unlike ECMA-262's, also matches before a final newline.)
NAME_PATTERN = rf"^[^{_REFUSED}]*[^\s{_REFUSED}][^{_REFUSED}]*(?!\n)$"


class PdfVectorStoreRequest(BaseModel):
    """Body of ``POST pdfVectorStore``: the PDF to index for the tenant."""

    model_config = ConfigDict(extra="ignore")

    url: str = Field(
        min_length=1, max_length=MAX_URL_CHARS, pattern=PDF_URL_PATTERN,
        description="The PDF: an http(s) URL (fetched under the input rules: public addresses only, size and time "
        "capped) or a `data:application/pdf;base64,...` URI.",
    )
    name: str | None = Field(
        None, min_length=1, max_length=NAME_MAX_CHARS, json_schema_extra={"pattern": NAME_PATTERN},
        description=f"The document's name in `listDocuments` (1..{NAME_MAX_CHARS} characters, surrounding spaces "
        "removed, no control characters). Default: the last segment of the URL's path, or `document.pdf`.",
    )

    @field_validator("name")
    @classmethod
    def _printable(cls, value: str | None) -> str | None:
        if value is None:
            return None
        text = value.strip()
        if not text:
            raise ValueError(f"allowed: 1..{NAME_MAX_CHARS} characters other than spaces")
        if any(refused_character(c) for c in text):
            raise ValueError("control characters (or bidirectional controls) are not allowed")
        return text


class DocumentRef(BaseModel):
    """Body of ``POST getDocument`` and ``POST deleteDocument``: one of the tenant's documents."""

    model_config = ConfigDict(extra="ignore")

    id: DocumentId = Field(description="A document id returned by `pdfVectorStore` (1..64 of A-Z a-z 0-9 _ -).")


#: A cursor: 16 bytes as unpadded base64url (the last character carries 4 unused bits, always zero).
CURSOR_PATTERN = rf"^[A-Za-z0-9_-]{{{CURSOR_CHARS - 1}}}[AQgw]$"


class ListDocumentsRequest(BaseModel):
    """Body of ``POST listDocuments``: one page of the tenant's documents."""

    model_config = ConfigDict(extra="ignore")

    limit: int = Field(LIST_DEFAULT, ge=1, le=LIST_MAX, description=f"Documents per page, 1..{LIST_MAX}.")
    cursor: str | None = Field(
        None, pattern=CURSOR_PATTERN,
        description="The previous page's `next_cursor` (opaque); none for the first page.",
    )


class StoredDocument(BaseModel):
    """``output`` of ``getDocument``, and each item of ``listDocuments``: a stored document."""

    id: str = Field(description="The document's id: pass it in the chat API's `tools.pdf_references`.")
    name: str = Field(description="Its name (`pdfVectorStore`'s `name`, or the URL's last path segment).")
    size: int = Field(ge=0, description="Bytes of the PDF.")
    chunks: int = Field(ge=0, description="Text chunks indexed (each one vector).")
    pages: int = Field(ge=0, description="Pages of the PDF.")
    created: str = Field(description="When it was stored: ISO-8601 UTC, e.g. `2025-01-31T12:00:00Z`. It expires "
                         "(is deleted with its vectors) `usage.retention_days` later.")


class DocumentUsage(BaseModel):
    """What the tenant holds against its caps (stores still running count too)."""

    documents: int = Field(ge=0)
    chunks: int = Field(ge=0)
    max_documents: int = Field(ge=1, description="A store past it is refused (422) before its PDF is parsed.")
    max_chunks: int = Field(ge=1, description="A store past it is refused (422) before it is embedded.")
    retention_days: float = Field(gt=0, description="Documents are deleted this long after they were stored.")


class DocumentPage(BaseModel):
    """``output`` of ``listDocuments``."""

    documents: list[StoredDocument]
    next_cursor: str | None = Field(description="Pass it as `cursor` for the next page; null: this was the last.")
    usage: DocumentUsage


class DeletedDocument(BaseModel):
    """``output`` of ``deleteDocument``: ``deleted`` is false when the tenant had no such document."""

    id: str
    deleted: bool
