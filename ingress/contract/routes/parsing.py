"""Parsing a generation body so that the server takes exactly what the schema publishes."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

from ingress.contract.errors import ValidationFailed
from ingress.contract.validation import allowed, parse


def parse_strict(model: type[BaseModel], body: Any) -> Any:
    """:func:`~ingress.contract.validation.parse` (its messages name each field and its
    range), then refuse what only pydantic's lax mode takes and the published JSON types
    do not: numbers in strings (``"512"``), ``0``/``1`` as booleans. (``2.0`` is an
    integer in JSON Schema, and stays one here.)"""
    req = parse(model, body)
    probe = {k: int(v) if isinstance(v, float) and v.is_integer() else v for k, v in body.items()}
    try:
        model.model_validate(probe, strict=True)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            field = str(err["loc"][0]) if err["loc"] else "body"
            rule = allowed(model, field)
            got = repr(err.get("input"))
            got = got if len(got) <= 60 else got[:57] + "..."
            problems.append(f"{field}: {err['msg']} (got {got})" + (f"; allowed: {rule}" if rule else ""))
        raise ValidationFailed("; ".join(problems)) from None
    return req
