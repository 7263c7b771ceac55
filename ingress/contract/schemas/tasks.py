"""Request schemas of the task routes (status and cancellation)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: What a task id can be: letters and digits (async ids are 32 hex characters).
TASK_ID_PATTERN = r"^[A-Za-z0-9]+$"


class StatusRequest(BaseModel):
    """Body of `POST getImage`: a task id, or the submit's reference id as `refID` (one of them)."""

    model_config = ConfigDict(
        extra="ignore",
        # The rule of ``_one`` for the published schema: ``{}`` or two nulls are not a request.
        json_schema_extra={"anyOf": [
            {"required": ["id"], "properties": {"id": {"type": "string"}}},
            {"required": ["refID"], "properties": {"refID": {"type": "string"}}},
        ]},
    )

    id: str | None = Field(
        None, min_length=1, max_length=64, pattern=TASK_ID_PATTERN, description="The task_id returned at submit."
    )
    refID: str | None = Field(None, min_length=1, max_length=200, description="The reference_id given at submit.")

    @model_validator(mode="after")
    def _one(self) -> StatusRequest:
        if not self.id and not self.refID:
            raise ValueError("give id (a task_id) or refID (a reference_id)")
        return self


class CancelRequest(BaseModel):
    """Body of `POST cancelTask`."""

    model_config = ConfigDict(extra="ignore")

    id: str = Field(min_length=1, max_length=64, pattern=TASK_ID_PATTERN, description="The task_id to cancel.")
