"""``GET files/{key}``: generated files behind the URLs the local store signs.

Not authenticated by key: the signature is the capability (the URL expires).
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import Response

from ingress.contract.errors import NotFound
from ingress.contract.routes.context import Studio
from ingress.contract.routes.docs import responses
from storage.base import ObjectNotFound

_IMAGE = {"schema": {"type": "string", "format": "binary"}}


def router(studio: Studio) -> APIRouter:
    api = APIRouter(tags=["files"])
    docs = responses(studio.settings, 422, 500)
    docs[404] = {**responses(studio.settings, 404)[404], "description": "`NotFound`: no such file, or the link "
                 "is forged or has expired."}
    docs[200] = {"description": "The file.", "content": {"image/png": _IMAGE}}

    @api.get("/files/{key:path}", response_class=Response, responses=docs,
             summary="Download a generated file (signed URL, local store only)")
    async def get_file(key: str, expires: int = 0, signature: str = ""):
        verify = getattr(studio.store, "verify", None)
        if verify is None or not verify(key, expires, signature):
            raise NotFound("no such file, or the link has expired")
        try:
            data = await asyncio.to_thread(studio.store.get, key)
            content_type = await asyncio.to_thread(studio.store.content_type, key)
        except (ObjectNotFound, ValueError):
            raise NotFound("no such file, or the link has expired") from None
        return Response(data, media_type=content_type, headers={"Cache-Control": "private, max-age=300"})

    return api
