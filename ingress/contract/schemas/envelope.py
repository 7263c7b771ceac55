"""The response envelope every generation and status route answers with."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from storage.tasks import Status as TaskStatus


class OutputMeta(BaseModel):
    """Facts about the outputs; each family may add its own."""

    model_config = ConfigDict(extra="allow")

    seeds: list[int] | None = Field(None, description="Images: the seed that made each image, in `output` order.")
    width: int | None = Field(None, description="Images: width in pixels.")
    height: int | None = Field(None, description="Images: height in pixels.")
    expires_at: float | None = Field(
        None, description="Unix time after which the URLs in `output` stop working (null for base64)."
    )


def output_meta(meta: dict[str, Any], expires_at: float | None) -> OutputMeta:
    """The envelope's ``meta`` from what the family reported."""
    return OutputMeta(**{**meta, "expires_at": expires_at})


class Envelope(BaseModel):
    """The contract's JSON envelope."""

    time_required: float | None = Field(None, description="Seconds: queueing + model start-up + run.")
    error: str | None = Field(None, description="Short error type, e.g. ValidationError.")
    error_data: str | None = Field(None, description="Human-readable detail of the error.")
    input: dict[str, Any] | None = Field(None, description="The validated request, secrets removed.")
    output: Any = Field(None, description="Image endpoints: a list of image URLs, one per image.")
    app_id: str | None = None
    task_id: str | None = None
    status: TaskStatus | None = None
    meta: OutputMeta | None = Field(None, description="Facts about `output`: seeds and size of images.")
    progress: float | None = Field(None, description="Async tasks: 0..1 while running (denoising steps done).")
    reference_id: str | None = Field(None, description="Async tasks: the submit's reference_id.")
    track_id: str | None = Field(None, description="Webhook calls: the submit's track_id.")


class ChatEnvelope(Envelope):
    """``POST chat``'s envelope: ``output`` is the assistant's text, plus the token usage."""

    promptTokens: int | None = Field(None, description="Tokens the model read (the provider's count).")  # noqa: N815
    completionTokens: int | None = Field(None, description="Tokens the model wrote.")  # noqa: N815
