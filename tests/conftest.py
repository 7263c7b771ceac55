"""Fixtures shared across the test tree."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.seaweed import SeaweedS3


@pytest.fixture(scope="session")
def seaweed_s3() -> Iterator[SeaweedS3]:
    """A SeaweedFS S3 server on 127.0.0.1 for the whole session.

    Has ``endpoint_url``, ``access_key``, ``secret_key``, ``client()`` and
    ``storage_settings(**overrides)`` (s3 settings for a fresh bucket).
    """
    with SeaweedS3() as server:
        yield server
