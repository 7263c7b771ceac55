"""Ingress settings, read from the environment (prefix ``STUDIO_``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

#: The per-minute costs a tenant is limited in (cluster-wide, counted by the coordinator).
RATES = ("requests", "images", "chat_tokens", "document_pages")


class TenantQuota(BaseModel):
    """One tenant's overrides of the default quotas and limits (left out: the default), and its share of the GPUs."""

    model_config = ConfigDict(extra="forbid")

    max_tasks: int | None = Field(None, ge=0, description="Unfinished async tasks at once; 0: no limit.")
    images_per_minute: int | None = Field(None, ge=0, description="Images requested per minute; 0: no limit.")
    requests_per_minute: int | None = Field(None, ge=0, description="Requests per minute, every route; 0: no limit.")
    chat_tokens_per_minute: int | None = Field(None, ge=0, description="Chat tokens per minute; 0: no limit.")
    document_pages_per_minute: int | None = Field(None, ge=0, description="PDF pages stored per minute; 0: no limit.")
    concurrent_requests: int | None = Field(None, ge=0, description="Requests in flight on one ingress replica.")
    open_uploads: int | None = Field(None, ge=0, description="Bodies being received at once on one ingress replica.")
    weight: float = Field(1.0, gt=0, le=1000, description="Share of each family's queue against other tenants.")


@dataclass(frozen=True)
class TenantLimits:
    """What applies to one tenant (0: no limit). ``per_minute`` maps each of :data:`RATES` to its limit."""

    max_tasks: int
    per_minute: dict[str, int]
    concurrent_requests: int
    open_uploads: int
    weight: float = 1.0


class IngressSettings(BaseSettings):
    """What the ingress replica reads from its environment."""

    model_config = SettingsConfigDict(env_prefix="STUDIO_", extra="ignore")

    api_keys: dict[str, str] = Field(
        default_factory=dict, description="JSON object: API key -> tenant. Merged with api_keys_file."
    )
    api_keys_file: Path | None = Field(
        None, description="JSON file with an object of API key -> tenant (e.g. a mounted Kubernetes secret)."
    )
    api_key_digests: dict[str, str] = Field(
        default_factory=dict,
        description="JSON object: SHA-256 hex of an API key -> tenant. What the builder hands the ingress.",
    )
    allow_loopback_inputs: bool = Field(
        False, description="Tests only: let input URLs point at 127.0.0.0/8 and ::1. Never in production."
    )
    fetch_timeout_seconds: float = Field(10, gt=0, le=120)
    fetch_max_bytes: int = Field(20 * 1024 * 1024, gt=0)
    max_body_bytes: int = Field(
        1024 * 1024, ge=1024, description="Largest request body of a route without inline images (413 beyond)."
    )
    max_image_body_bytes: int = Field(
        64 * 1024 * 1024, ge=1024,
        description="Largest body of a route that takes images (two inline images at the 20 MiB cap fit).",
    )
    max_buffered_body_bytes: int = Field(
        256 * 1024 * 1024, ge=1024, description="Body bytes one ingress replica holds at once (503 beyond)."
    )
    body_read_seconds: float = Field(60, gt=0, description="A body not received within this long is a 408.")
    sync_timeout_seconds: float = Field(
        300, gt=0, description="A synchronous call that takes longer answers 504 Timeout."
    )
    retry_after_seconds: int = Field(2, ge=1, description="Retry-After sent with 503 Overloaded.")
    task_max_attempts: int = Field(
        3, ge=1, le=20, description="Dispatches of an async task before it is quarantined as FAILURE."
    )
    task_lease_seconds: float = Field(20, gt=0, description="A worker that stops renewing for this long is lost.")
    task_renew_seconds: float = Field(1, gt=0, description="How often a worker renews its lease and reports progress.")
    task_deadline_seconds: float = Field(
        3600, ge=1, description="An async task not finished this long after submit fails with Timeout (per app: "
        "limits.task_deadline_seconds).",
    )
    coordinator_poll_seconds: float = Field(1, gt=0, description="How often the coordinator scans unfinished tasks.")
    retention_seconds: int = Field(
        7 * 24 * 3600, ge=60, description="Task records and generated files are deleted after this long."
    )
    webhook_secrets: dict[str, str] = Field(
        default_factory=dict, description="JSON object: tenant -> Standard Webhooks secret (whsec_...)."
    )
    webhook_secrets_file: Path | None = Field(None, description="JSON file of the same shape.")
    webhook_tenants: list[str] = Field(
        default_factory=list, description="Tenants that have a webhook secret (what the ingress is told)."
    )
    webhook_concurrency: int = Field(64, ge=1, le=1024, description="Webhook deliveries in flight at once.")
    webhook_tenant_concurrency: int = Field(
        4, ge=1, le=256, description="Webhook deliveries in flight at once for one tenant."
    )
    webhook_max_attempts: int = Field(6, ge=1, le=20, description="Deliveries tried before a dead letter.")
    webhook_base_delay_seconds: float = Field(2, gt=0, description="First retry delay; doubles, with jitter.")
    webhook_max_delay_seconds: float = Field(300, gt=0)

    tenant_max_tasks: int = Field(
        1000, ge=0, description="Unfinished async tasks one tenant may have at once (429 beyond); 0: no limit."
    )
    tenant_images_per_minute: int = Field(
        0, ge=0, description="Images one tenant may request per minute, sync and async (429 beyond); 0: no limit."
    )
    tenant_quotas: dict[str, TenantQuota] = Field(
        default_factory=dict, description="JSON object: tenant -> {max_tasks, images_per_minute, weight}."
    )
    tenant_requests_per_minute: int = Field(
        0, ge=0, description="Requests one tenant may make per minute on every route, cluster-wide (429 beyond); 0: no limit."
    )
    tenant_chat_tokens_per_minute: int = Field(
        0, ge=0, description="Chat tokens (prompt estimate + max_tokens, settled with the usage) per tenant per minute."
    )
    tenant_document_pages_per_minute: int = Field(
        0, ge=0, description="PDF pages one tenant may store per minute (charged once parsed; over it, the next waits)."
    )
    tenant_concurrent_requests: int = Field(
        16, ge=0, description="Requests of one tenant in flight at once on one ingress replica (429 beyond); 0: no limit."
    )
    tenant_open_uploads: int = Field(
        4, ge=0, description="Request bodies of one tenant being received at once on one ingress replica; 0: no limit."
    )
    body_idle_seconds: float = Field(
        10, gt=0, le=300, description="A request body that sends nothing for this long is cut (408)."
    )
    decode_budget_bytes: int | None = Field(
        None, ge=64 * 1024 * 1024, description="Decoded image bytes one ingress replica holds at once; default: a "
        "sixteenth of its memory limit, within 512 MiB..2 GiB."
    )
    decode_wait_seconds: float = Field(
        3, gt=0, le=60, description="How long a request waits for its share of the decode budget (503 after)."
    )
    max_inline_bytes: int = Field(
        32 * 1024 * 1024, ge=1024 * 1024, description="Largest total of output files returned inline (`base64: true`)."
    )
    quota_check_seconds: float = Field(
        1.0, gt=0, le=30, description="How long the ingress waits for the coordinator's quota answer (admits after)."
    )

    @model_validator(mode="after")
    def _consistent(self) -> IngressSettings:
        if self.max_buffered_body_bytes < self.max_image_body_bytes:
            raise ValueError("STUDIO_MAX_BUFFERED_BODY_BYTES must be at least STUDIO_MAX_IMAGE_BODY_BYTES")
        return self

    def quota(self, tenant: str) -> TenantLimits:
        """What applies to ``tenant``: its overrides (``tenant_quotas``) over the defaults."""
        own = self.tenant_quotas.get(tenant) or TenantQuota()

        def pick(name: str) -> int:
            value = getattr(own, name)
            return getattr(self, f"tenant_{name}") if value is None else value

        return TenantLimits(
            max_tasks=pick("max_tasks"),
            per_minute={rate: pick(f"{rate}_per_minute") for rate in RATES},
            concurrent_requests=pick("concurrent_requests"),
            open_uploads=pick("open_uploads"),
            weight=own.weight,
        )

    def has_webhook_secret(self, tenant: str) -> bool:
        return tenant in self.webhook_tenants or self.webhook_secret(tenant) is not None

    def webhook_secret(self, tenant: str) -> str | None:
        secrets = dict(self.webhook_secrets)
        if self.webhook_secrets_file is not None and self.webhook_secrets_file.exists():
            import json

            secrets.update(json.loads(self.webhook_secrets_file.read_text()))
        return secrets.get(tenant)
