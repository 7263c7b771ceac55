"""The document lifecycle's small rules, shared by the ingress (where a value enters) and the
document store (where it is used, and checked again): a document's name, a listing's page size,
and the listing's opaque cursor.

A **name** is 1..:data:`NAME_MAX_CHARS` characters after surrounding spaces are stripped, with no
control characters (Unicode ``Cc``) and no bidirectional embedding, override or isolate marks
(which make a name display as something else). Without one, the store names a document after
the last segment of its URL's path (percent-decoded, the refused characters dropped, cut to the
limit), or :data:`DEFAULT_NAME` (a ``data:`` URI, or a URL ending in ``/``).

A **cursor** is where the next page of ``listDocuments`` starts: the Qdrant point id of the next
ledger record, as 22 characters of unpadded base64url. It is opaque to clients and carries nothing
but a position: the listing's own filter (the caller's tenant, unexpired, ready) is applied to
every page, so a cursor from anywhere can only start a scroll within the caller's own documents.
"""

from __future__ import annotations

import base64
import binascii
import unicodedata
import uuid
from urllib.parse import unquote, urlsplit

from deployments.errors import InvalidJobError

NAME_MAX_CHARS = 200
DEFAULT_NAME = "document.pdf"
#: Documents per ``listDocuments`` page: at most, and by default.
LIST_MAX = 100
LIST_DEFAULT = 20
CURSOR_CHARS = 22
_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def refused_character(char: str) -> bool:
    """A character no name may hold: a control character or a bidirectional control."""
    return unicodedata.category(char) == "Cc" or char in _BIDI


def check_name(name: object, field: str = "name") -> str:
    """``name`` stripped, or a 422 on ``field`` naming the rule it breaks (None: :data:`DEFAULT_NAME`)."""
    if name is None:
        return DEFAULT_NAME
    if not isinstance(name, str):
        raise InvalidJobError(field, f"must be a string of 1..{NAME_MAX_CHARS} characters")
    text = name.strip()
    if not 1 <= len(text) <= NAME_MAX_CHARS:
        raise InvalidJobError(field, f"has {len(text)} characters; allowed: 1..{NAME_MAX_CHARS} characters")
    if any(refused_character(c) for c in text):
        raise InvalidJobError(field, "holds control characters (or bidirectional controls); allowed: printable text")
    return text


def name_from_url(url: str) -> str:
    """The default name of a document fetched from ``url`` (see the module docstring)."""
    if url[:5].lower() == "data:":
        return DEFAULT_NAME
    try:
        path = urlsplit(url).path
    except ValueError:
        return DEFAULT_NAME
    segment = unquote(path.rsplit("/", 1)[-1], errors="replace")
    text = "".join(c for c in segment if not refused_character(c)).strip()
    return text[:NAME_MAX_CHARS].strip() or DEFAULT_NAME


def encode_cursor(point_id: str) -> str:
    """The cursor of a ledger point id (a UUID)."""
    return base64.urlsafe_b64encode(uuid.UUID(point_id).bytes).decode("ascii").rstrip("=")


def decode_cursor(cursor: object, field: str = "cursor") -> str:
    """The point id a cursor stands for, or a 422 on ``field``."""
    refusal = InvalidJobError(field, "is not a cursor returned by listDocuments; allowed: the previous page's "
                                     "`next_cursor`, or none for the first page")
    if not isinstance(cursor, str) or len(cursor) != CURSOR_CHARS:
        raise refusal
    try:
        raw = base64.urlsafe_b64decode(cursor + "==")
    except (binascii.Error, ValueError):
        raise refusal from None
    if len(raw) != 16 or encode_cursor(str(uuid.UUID(bytes=raw))) != cursor:
        raise refusal
    return str(uuid.UUID(bytes=raw))
