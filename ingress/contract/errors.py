"""The error hierarchy of the public contract, mapped to the envelope once.

Each error carries its envelope ``error`` type and its HTTP status; the
handlers installed by :func:`install_handlers` turn any of them (and anything
unexpected) into the contract's JSON envelope. A traceback never reaches a client.
"""

from __future__ import annotations


class StudioError(Exception):
    """Base of every error the API reports in its envelope."""

    error_type = "InternalError"
    status_code = 500
    headers: dict[str, str] | None = None

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class ValidationFailed(StudioError):
    """The request is invalid; ``message`` names each bad field and its allowed range."""

    error_type = "ValidationError"
    status_code = 422


class NoFaceInImage(ValidationFailed):
    """A face app's input image holds no face the detector finds."""

    error_type = "NoFaceDetected"


class InputFetchError(StudioError):
    """A user-supplied input (URL, data URI, base64) could not be fetched or decoded."""

    error_type = "InputFetchError"
    status_code = 422

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


class Unauthorized(StudioError):
    error_type = "Unauthorized"
    status_code = 401


class NotFound(StudioError):
    error_type = "NotFound"
    status_code = 404


class Overloaded(StudioError):
    """The cluster is shedding load; the client should retry after ``retry_after`` seconds."""

    error_type = "Overloaded"
    status_code = 503

    def __init__(self, message: str, retry_after: int = 1):
        super().__init__(message)
        self.retry_after = retry_after
        self.headers = {"Retry-After": str(retry_after)}


class ModelFailure(StudioError):
    error_type = "ModelError"
    status_code = 500


class Timeout(StudioError):
    error_type = "Timeout"
    status_code = 504


class PayloadTooLarge(StudioError):
    """The request body is larger than the route accepts."""

    error_type = "PayloadTooLarge"
    status_code = 413


class RequestTimeout(StudioError):
    """The client did not send its body in time."""

    error_type = "RequestTimeout"
    status_code = 408


class QuotaExceeded(StudioError):
    """The tenant is over one of its quotas; retry after ``retry_after`` seconds."""

    error_type = "QuotaExceeded"
    status_code = 429

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after
        self.headers = {"Retry-After": str(retry_after)}


class VendorRateLimited(StudioError):
    """A vendor we call (LLM, search, speech) is rate limiting us; retry after ``retry_after`` seconds."""

    error_type = "VendorRateLimited"
    status_code = 429

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after
        self.headers = {"Retry-After": str(retry_after)}


class VendorUnavailable(Overloaded):
    """A vendor we call is down or overloaded (a 503 with ``Retry-After``)."""

    error_type = "VendorUnavailable"


class UpstreamError(StudioError):
    """A vendor refused this service's own credentials, or answered something we cannot use."""

    error_type = "UpstreamError"
    status_code = 502
