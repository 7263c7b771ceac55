"""Where each vendor is and the key to use: read from the environment of the deployment
that calls it (the chat service, the speech families), never from the request.

``STUDIO_<VENDOR>_API_KEY`` and ``STUDIO_<VENDOR>_BASE_URL`` (None: the SDK's default, the
vendor's public endpoint), for VENDOR in OPENAI, ANTHROPIC, MISTRAL, GEMINI, TAVILY,
ELEVENLABS; ``STUDIO_VENDOR_TIMEOUT_SECONDS`` bounds every call. Tests point the base URLs
at local fakes of the vendors' wire formats (``tests/support/fakes``). In a cluster the keys
are files named after these variables in the deployment's ``$STUDIO_SECRETS_DIR``
(:class:`storage.settings.FileSecretsSettings`), never environment variables.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from storage.settings import FileSecretsSettings

Vendor = Literal["openai", "anthropic", "mistral", "gemini", "tavily", "elevenlabs"]
VENDORS: tuple[str, ...] = ("openai", "anthropic", "mistral", "gemini", "tavily", "elevenlabs")
#: The variables that hold vendor keys: secrets, handed only to the deployments that call vendors.
VENDOR_KEY_VARS: tuple[str, ...] = tuple(f"STUDIO_{v.upper()}_API_KEY" for v in VENDORS)


@dataclass(frozen=True)
class Endpoint:
    """One vendor as an SDK client is made for it."""

    vendor: str
    api_key: str | None
    base_url: str | None
    timeout_seconds: float


class VendorSettings(FileSecretsSettings):
    """The vendors' keys and base URLs (prefix ``STUDIO_``), and the Qdrant server's key."""

    model_config = SettingsConfigDict(env_prefix="STUDIO_", extra="ignore")

    openai_api_key: str | None = None
    openai_base_url: str | None = None
    anthropic_api_key: str | None = None
    anthropic_base_url: str | None = None
    mistral_api_key: str | None = None
    mistral_base_url: str | None = None
    gemini_api_key: str | None = None
    gemini_base_url: str | None = None
    tavily_api_key: str | None = None
    tavily_base_url: str | None = None
    elevenlabs_api_key: str | None = None
    elevenlabs_base_url: str | None = None
    vendor_timeout_seconds: float = Field(60, gt=0, le=600, description="Bound on one vendor call.")
    qdrant_api_key: str | None = Field(None, description="The document store's Qdrant server key.")

    def endpoint(self, vendor: str) -> Endpoint:
        """``vendor``'s endpoint (one of ``VENDORS``)."""
        if vendor not in VENDORS:
            raise KeyError(vendor)
        return Endpoint(vendor, getattr(self, f"{vendor}_api_key"), getattr(self, f"{vendor}_base_url"),
                        self.vendor_timeout_seconds)

    def configured(self, vendor: str) -> bool:
        """Whether ``vendor`` has a key (an unconfigured vendor is refused before any call)."""
        return bool(self.endpoint(vendor).api_key)
