"""The response envelope every generation and status route answers with."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

TaskStatus = Literal["PENDING", "STARTED", "SUCCESS", "FAILURE", "REVOKED"]


class ImageMeta(BaseModel):
    """Extra facts about generated images (an addition to the seed contract)."""

    seeds: list[int] = Field(description="The seed that made each image, in `output` order.")
    width: int
    height: int
    expires_at: float | None = Field(
        None, description="Unix time after which the URLs in `output` stop working (null for base64)."
    )


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
    meta: ImageMeta | None = Field(None, description="Seeds and size of the images in `output`.")
    progress: float | None = Field(None, description="Async tasks: 0..1 while running (denoising steps done).")
    reference_id: str | None = Field(None, description="Async tasks: the submit's reference_id.")
    track_id: str | None = Field(None, description="Webhook calls: the submit's track_id.")
