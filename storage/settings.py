"""Storage configuration, read from ``STUDIO_STORAGE_*`` environment variables, and the
secret-files directory every settings class of a replica reads (:class:`FileSecretsSettings`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SecretsSettingsSource, SettingsConfigDict

MAX_URL_EXPIRY_SECONDS = 7 * 24 * 3600  # the SigV4 presign limit
#: The directory of this process's secret files: one file per secret, named after the variable it
#: stands for (``STUDIO_STORAGE_S3_SECRET_ACCESS_KEY``, ...). A cluster's builder hands each deployment
#: its role's directory (``ingress.wiring.secrets``); the values never pass through the Serve config.
SECRETS_DIR_VAR = "STUDIO_SECRETS_DIR"


def secrets_dir() -> Path | None:
    """``$STUDIO_SECRETS_DIR``, or None when unset. A set path that is not a directory is an error
    (the role's secret volume is not mounted on this pod), raised rather than run without credentials."""
    value = os.environ.get(SECRETS_DIR_VAR)
    if not value:
        return None
    path = Path(value)
    if not path.is_dir():
        raise RuntimeError(f"{SECRETS_DIR_VAR}={value} is not a directory: is this role's secret volume mounted here?")
    return path


class FileSecretsSettings(BaseSettings):
    """Settings that also read secret files from :func:`secrets_dir` (pydantic-settings' secrets
    source; the environment wins over a file, as pydantic-settings orders its sources)."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        given = isinstance(file_secret_settings, SecretsSettingsSource) and file_secret_settings.secrets_dir
        directory = None if given else secrets_dir()
        if directory is not None:
            file_secret_settings = SecretsSettingsSource(settings_cls, secrets_dir=directory)
        return init_settings, env_settings, dotenv_settings, file_secret_settings


class StorageSettings(FileSecretsSettings):
    """Where generated files live and how download URLs are signed.

    Plain data (picklable), so it can be handed to Ray actors, which then
    call ``storage.factory.open_store(settings)`` themselves. The S3 keys and the signing
    secret may also come from files in ``$STUDIO_SECRETS_DIR`` (:class:`FileSecretsSettings`).
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
