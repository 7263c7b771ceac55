"""Errors a family deployment raises. Each carries its envelope ``error`` type and
the ``public`` text a client may see; the ingress maps them once."""

import uuid
from typing import Literal


def new_incident() -> str:
    """A short id that ties a client-facing message to the detail in the server log."""
    return uuid.uuid4().hex[:12]


class JobError(Exception):
    """Base class for errors about one job."""

    error_type = "InternalError"

    @property
    def public(self) -> str:
        return "the job failed"


class InvalidJobError(JobError):
    """The job asks for something this model cannot do (a 422 for the client)."""

    error_type = "ValidationError"

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message

    def __reduce__(self):  # picklable across Ray (the default would call __init__ with one argument)
        return type(self), (self.field, self.message)

    @property
    def public(self) -> str:
        return f"{self.field}: {self.message}"


class NoFaceDetected(InvalidJobError):
    """The input image holds no face the face detector finds (a 422 of its own type)."""

    error_type = "NoFaceDetected"

    def __init__(self, field: str = "image", message: str = "no face was detected in the image; send a photo "
                 "where a face is clearly visible (frontal, not too small)"):
        super().__init__(field, message)


class ModelError(JobError):
    """The model failed while running a valid job.

    ``str(exc)`` is the internal detail, for the log only; clients see
    :attr:`public`, which names the incident under which the detail was logged.
    """

    error_type = "ModelError"

    def __init__(self, detail: str, incident: str | None = None):
        super().__init__(detail)
        self.incident = incident or new_incident()

    def __reduce__(self):
        return type(self), (str(self), self.incident)

    @property
    def public(self) -> str:
        return f"the model failed on this job (incident {self.incident})"


class TaskStopped(JobError):
    """A job stopped early at a step: an async task cancelled (``revoked``) or whose lease was lost
    (``lost``), or a job whose caller went away (``abandoned``: the client disconnected or the
    sync call timed out, and Serve cancelled the request)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class HelperUnavailable(JobError):
    """Another family deployment this job needs (e.g. the background remover for Replace
    Background and Face Avatar) is busy or not available right now: Serve refused the call
    (``BackPressureError``, ``DeploymentUnavailableError``), its replica died or could not be
    reached, or it did not answer in time. Nothing is wrong with the job: a sync call answers
    503 ``Overloaded`` with ``Retry-After`` (the ingress maps it once), an async task is handed
    back for a later attempt. ``retry_after`` is Serve's hint in seconds, when it gave one."""

    error_type = "Overloaded"

    def __init__(self, kind: str, reason: str = "busy", retry_after: float | None = None):
        super().__init__(f"{kind}: {reason}")
        self.kind = kind
        self.reason = reason
        self.retry_after = retry_after

    def __reduce__(self):
        return type(self), (self.kind, self.reason, self.retry_after)

    @property
    def public(self) -> str:
        return f"the {self.kind} model this app needs is busy or unavailable; retry later"


class DocumentNotFound(InvalidJobError):
    """A document id the tenant does not have (another tenant's id is unknown too)."""

    error_type = "NotFound"

    def __init__(self, field: str, message: str = "no such document"):
        super().__init__(field, message)


VendorReason = Literal["rate_limited", "unavailable", "timeout", "credentials", "rejected"]


class VendorError(JobError):
    """A vendor we call (an LLM, web search, speech) failed or refused the call.

    ``reason`` decides the client's answer (the ingress maps it once): ``rate_limited`` → 429 and
    ``unavailable`` → 503, both with ``Retry-After`` (the vendor's when it gave one); ``timeout`` → 504;
    ``credentials`` (the service's own key was refused) → 502; ``rejected`` (the vendor refused this
    request, e.g. too long for the model) → 422. ``detail`` is a short, already-sanitised reason
    (no keys, no URLs of ours); the full error goes to the log only.
    """

    #: The envelope's ``error`` per reason (what the ingress answers; an async task's record says the same).
    ERROR_TYPES = {"rate_limited": "VendorRateLimited", "unavailable": "VendorUnavailable", "timeout": "Timeout",
                   "credentials": "UpstreamError", "rejected": "ValidationError"}

    def __init__(self, vendor: str, reason: VendorReason, detail: str = "", retry_after: float | None = None):
        super().__init__(f"{vendor}: {reason}: {detail}")
        self.vendor = vendor
        self.reason = reason
        self.detail = detail
        self.retry_after = retry_after

    def __reduce__(self):
        return type(self), (self.vendor, self.reason, self.detail, self.retry_after)

    @property
    def error_type(self) -> str:  # type: ignore[override]
        return self.ERROR_TYPES[self.reason]

    @property
    def public(self) -> str:
        what = {
            "rate_limited": "is rate limiting this service; retry later",
            "unavailable": "is unavailable; retry later",
            "timeout": "did not answer in time",
            "credentials": "did not accept this service's credentials, or none are configured (our configuration)",
            "rejected": "refused the request",
        }[self.reason]
        return f"{self.vendor} {what}" + (f": {self.detail}" if self.detail else "")
