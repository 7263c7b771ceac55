"""User-supplied inputs: the guarded HTTP client (``fetch``) and image decoding and sizing (``images``)."""

from ingress.inputs.fetch import FetchLimits, check_destination, check_url, is_forbidden_address
from ingress.inputs.images import load_image

__all__ = ["FetchLimits", "check_destination", "check_url", "is_forbidden_address", "load_image"]
