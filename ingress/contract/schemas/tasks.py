"""Request schemas of the task routes (status and cancellation)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class StatusRequest(BaseModel):
    """Body of ``POST getImage``: a task id, or the submit's reference id as ``refID``."""

    model_config = ConfigDict(extra="ignore")

    id: str | None = Field(None, min_length=1, max_length=64, description="The task_id returned at submit.")
    refID: str | None = Field(None, min_length=1, max_length=200, description="The reference_id given at submit.")

    @model_validator(mode="after")
    def _one(self) -> StatusRequest:
        if not self.id and not self.refID:
            raise ValueError("give id (a task_id) or refID (a reference_id)")
        return self


class CancelRequest(BaseModel):
    """Body of ``POST cancelTask``."""

    model_config = ConfigDict(extra="ignore")

    id: str = Field(min_length=1, max_length=64, description="The task_id to cancel.")
