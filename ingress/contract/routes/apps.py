"""``GET apps``: the app registry, as clients may see it."""

from __future__ import annotations

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
        for app in apps:  # what the loaded model offers: LoRAs, VAEs, a safety checker (null: not known yet)
            facts = None
            if studio.facts is not None:
                facts = await studio.facts.get(deployment_name(app["family"], app["default_inference_type"]), wait=True)
            for name in ("loras", "vaes", "safety_checker"):
                app[name] = facts.get(name) if facts is not None else None
        return {"apps": apps}

    return api
