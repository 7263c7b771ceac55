"""``GET apps``: the app registry, as clients may see it."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from deployments.catalog import deployment_name
from ingress.contract.auth import Tenant
from ingress.contract.routes.context import Studio
from ingress.contract.routes.docs import responses


class AppList(BaseModel):
    """Every app: its id, task, routes, GPU types, limits and defaults."""

    apps: list[dict[str, Any]] = Field(
        description="One object per app_id (`AppConfig.public()`), with `loras`, `vaes` and `safety_checker` from "
        "its loaded model (null until the model has answered)."
    )


def router(studio: Studio) -> APIRouter:
    api = APIRouter(tags=["registry"])

    @api.get("/apps", response_model=AppList, summary="The app registry",
             responses=responses(studio.settings, 401, 500))
    async def list_apps(_: Tenant):
        apps = studio.registry.public()
        # What the loaded models offer: LoRAs, VAEs, a safety checker (null: not known yet). Each
        # deployment is asked once, all at once, so the wait is bounded by one facts timeout.
        names = list(dict.fromkeys(deployment_name(a["family"], a["default_inference_type"]) for a in apps))
        known: list[dict[str, Any] | None] = [None] * len(names)
        if studio.facts is not None:
            facts = studio.facts
            known = list(await asyncio.gather(*(facts.get(name, wait=True) for name in names)))
        by_name = dict(zip(names, known))
        for app in apps:
            facts_of = by_name[deployment_name(app["family"], app["default_inference_type"])]
            for name in ("loras", "vaes", "safety_checker"):
                app[name] = facts_of.get(name) if facts_of is not None else None
        return {"apps": apps}

    return api
