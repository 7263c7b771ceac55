"""Errors a family deployment raises; the ingress maps each to the envelope."""


class JobError(Exception):
    """Base class for errors about one job."""


class InvalidJobError(JobError):
    """The job asks for something this model cannot do (a 422 for the client)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class ModelError(JobError):
    """The model failed while running a valid job."""


class TaskStopped(JobError):
    """An async task stopped early: cancelled (``revoked``) or its lease was lost (``lost``)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason
