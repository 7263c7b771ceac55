"""Request and output schemas of the document store routes (``pdfVectorStore``, ``getDocument``,
``deleteDocument``). A document id is what the chat API's ``tools.pdf_references`` takes.

Unknown fields are ignored, as on every route.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

#: The shape of a document id (the store's ids are 32 hex characters; UUIDs and similar ids fit too).
DOCUMENT_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
DocumentId = Annotated[str, StringConstraints(pattern=DOCUMENT_ID_PATTERN)]
#: Longest ``url`` accepted: a ``data:`` URI of a PDF of ~70 MB (the route's byte cap is usually lower).
MAX_URL_CHARS = 100_000_000
#: ``url``: an http(s) URL or a base64 ``data:`` URI of a PDF.
PDF_URL_PATTERN = r"^([Hh][Tt][Tt][Pp][Ss]?://|data:application/pdf;base64,)"


class PdfVectorStoreRequest(BaseModel):
    """Body of ``POST pdfVectorStore``: the PDF to index for the tenant."""

    model_config = ConfigDict(extra="ignore")

    url: str = Field(
        min_length=1, max_length=MAX_URL_CHARS, pattern=PDF_URL_PATTERN,
        description="The PDF: an http(s) URL (fetched under the input rules: public addresses only, size and time "
        "capped) or a `data:application/pdf;base64,...` URI.",
    )


class DocumentRef(BaseModel):
    """Body of ``POST getDocument`` and ``POST deleteDocument``: one of the tenant's documents."""

    model_config = ConfigDict(extra="ignore")

    id: DocumentId = Field(description="A document id returned by `pdfVectorStore` (1..64 of A-Z a-z 0-9 _ -).")


class StoredDocument(BaseModel):
    """``output`` of ``pdfVectorStore`` and ``getDocument``: a stored document."""

    id: str = Field(description="The document's id: pass it in the chat API's `tools.pdf_references`.")
    chunks: int = Field(ge=0, description="Text chunks indexed (each one vector).")
    pages: int | None = Field(None, ge=0, description="Pages of the PDF.")
