"""The chat tests' vendors: one local fake of every vendor's wire format per test module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.fakes.llm_vendors import FakeVendors


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeVendors]:
    with FakeVendors() as vendors:
        yield vendors
