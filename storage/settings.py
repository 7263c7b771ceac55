"""Storage configuration, read from ``STUDIO_STORAGE_*`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MAX_URL_EXPIRY_SECONDS = 7 * 24 * 3600  # the SigV4 presign limit


class StorageSettings(BaseSettings):
    """Where generated files live and how download URLs are signed.

    Plain data (picklable), so it can be handed to Ray actors, which then
    call ``storage.factory.open_store(settings)`` themselves.
    """

    model_config = SettingsConfigDict(env_prefix="STUDIO_STORAGE_", extra="ignore")

    backend: Literal["local", "s3"] = "local"

    # Local backend.
    local_root: Path = Path(".data/objects")
    public_base_url: str = "http://127.0.0.1:8000"
    """Base URL of this service; local signed URLs point at its file route."""
    signing_secret: SecretStr | None = None
    """HMAC key for local signed URLs; if unset, ``<local_root>/.signing-secret`` is read or created."""
    url_expiry_seconds: int = Field(3600, ge=1, le=MAX_URL_EXPIRY_SECONDS)
    """Default lifetime of download URLs."""

    # S3 backend.
    s3_endpoint_url: str | None = None
    """S3 API endpoint; None means AWS."""
    s3_public_endpoint_url: str | None = None
    """Endpoint written into presigned URLs (clients may reach S3 via another host); defaults to ``s3_endpoint_url``."""
    s3_bucket: str = "studio"
    s3_region: str = "us-east-1"
    s3_access_key_id: SecretStr | None = None
    s3_secret_access_key: SecretStr | None = None
    s3_addressing_style: Literal["path", "virtual", "auto"] = "path"
    s3_create_bucket: bool = False
    """Create ``s3_bucket`` at startup if it is missing."""

    @model_validator(mode="after")
    def _default_public_endpoint(self) -> StorageSettings:
        if self.s3_public_endpoint_url is None:
            self.s3_public_endpoint_url = self.s3_endpoint_url
        return self
