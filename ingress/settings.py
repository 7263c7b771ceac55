"""Ingress settings, read from the environment (prefix ``STUDIO_``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class IngressSettings(BaseSettings):
    """What the ingress replica reads from its environment."""

    model_config = SettingsConfigDict(env_prefix="STUDIO_", extra="ignore")

    api_keys: dict[str, str] = Field(
        default_factory=dict, description="JSON object: API key -> tenant. Merged with api_keys_file."
    )
    api_keys_file: Path | None = Field(
        None, description="JSON file with an object of API key -> tenant (e.g. a mounted Kubernetes secret)."
    )
    allow_loopback_inputs: bool = Field(
        False, description="Tests only: let input URLs point at 127.0.0.0/8 and ::1. Never in production."
    )
    fetch_timeout_seconds: float = Field(10, gt=0, le=120)
    fetch_max_bytes: int = Field(20 * 1024 * 1024, gt=0)
    sync_timeout_seconds: float = Field(
        300, gt=0, description="A synchronous call that takes longer answers 504 Timeout."
    )
    retry_after_seconds: int = Field(2, ge=1, description="Retry-After sent with 503 Overloaded.")
