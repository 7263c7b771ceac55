"""Local fakes of the external vendors, for tests only (SDKs are pointed at them by base URL)."""

from tests.support.fakes.llm_vendors import FAKE_VENDORS, FakeVendors, RemoteFakeVendors

__all__ = ["FAKE_VENDORS", "FakeVendors", "RemoteFakeVendors"]
