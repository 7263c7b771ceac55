"""A per-replica view of task statuses, so that polling costs the object store little.

The contract: a status answer is at most ``max_age`` seconds older than a read of the
task's record in the store (``STUDIO_TASK_RENEW_SECONDS``, 1 s by default: a worker
writes progress that often, so a fresher read would rarely show more). A finished
task never changes: its envelope, with fresh expiring URLs, is reused while the URLs
keep half their lifetime.

* One store read per task per window, however many polls: N concurrent polls of one
  task share one read (single flight), and polls within the window answer from
  memory on the event loop (no thread hop).
* Keyed by ``(tenant, task_id)``: an entry is only ever answered to its own tenant.
* A window starts when its read *starts*, so an answer is never older than the bound,
  however slow the read; an older read never replaces a newer entry, and nothing
  replaces a terminal one. This replica's own writes (a submit, a cancel) replace the
  entry at once; another replica's are seen within the bound.
* "No such task" is remembered for ``MISSING_SECONDS`` only, in a small table of its
  own (a task id is known to a client only once its record exists, so this never
  hides a new task; it only keeps a loop on an unknown id to a few reads a second).
* Bounded: least recently used entries go first.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from ingress.contract.schemas.envelope import Envelope
from storage.tasks import TaskRecord

MISSING_SECONDS = 0.25
MAX_ENTRIES = 10_000
MAX_MISSING = 1_024

T = TypeVar("T")


@dataclass(frozen=True)
class _Entry:
    read_at: float  # monotonic time the read (or write) it comes from started
    fresh_until: float
    terminal: bool
    envelope: Envelope


class _Lru(Generic[T]):
    """An ``OrderedDict`` with a size bound (least recently used out first)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.items: OrderedDict[Hashable, T] = OrderedDict()

    def get(self, key: Hashable) -> T | None:
        item = self.items.get(key)
        if item is not None:
            self.items.move_to_end(key)
        return item

    def put(self, key: Hashable, item: T) -> None:
        self.items[key] = item
        self.items.move_to_end(key)
        while len(self.items) > self.limit:
            self.items.popitem(last=False)

    def pop(self, key: Hashable) -> None:
        self.items.pop(key, None)

    def __len__(self) -> int:
        return len(self.items)


class StatusView:
    """Task envelopes by ``(tenant, task_id)`` with a bounded age. Used from one event loop.

    ``read(tenant, task_id)`` and ``resolve(tenant, reference_id)`` are blocking store
    reads (run in threads); ``envelope(record)`` builds the answer (in the same thread)."""

    def __init__(
        self,
        read: Callable[[str, str], TaskRecord | None],
        resolve: Callable[[str, str], str | None],
        envelope: Callable[[TaskRecord], Envelope],
        *,
        max_age: float,
        finished_age: float,
        max_entries: int = MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._read, self._resolve, self._envelope = read, resolve, envelope
        self.max_age = max_age
        self.finished_age = finished_age
        self.clock = clock
        self._entries: _Lru[_Entry] = _Lru(max_entries)
        self._missing: _Lru[float] = _Lru(MAX_MISSING)  # key -> fresh until
        self._refs: _Lru[tuple[float, str]] = _Lru(max_entries)  # (tenant, reference_id) -> (fresh until, task_id)
        self._flights: dict[Hashable, asyncio.Task] = {}
        self.reads = 0  # store reads made (for tests and the curious)

    # -- answers ------------------------------------------------------------
    def peek(self, tenant: str, task_id: str) -> Envelope | None:
        """The envelope if a fresh one is held (no IO)."""
        entry = self._entries.get((tenant, task_id))
        return entry.envelope if entry is not None and entry.fresh_until > self.clock() else None

    async def get(self, tenant: str, task_id: str) -> Envelope | None:
        """The task's envelope, at most ``max_age`` old; None if there is no such task."""
        key = (tenant, task_id)
        if (env := self.peek(tenant, task_id)) is not None:
            return env
        gone = self._missing.get(key)
        if gone is not None and gone > self.clock():
            return None
        return await self._once(key, lambda: self._refresh(tenant, task_id))

    async def get_by_reference(self, tenant: str, reference_id: str) -> Envelope | None:
        """The envelope of the task ``reference_id`` names now (the mapping is held as long
        as a status, and only when it names a task)."""
        ref = self._refs.get((tenant, reference_id))
        if ref is not None and ref[0] > self.clock():
            return await self.get(tenant, ref[1])
        task_id = await self._once(("ref", tenant, reference_id), lambda: self._resolve_ref(tenant, reference_id))
        return None if task_id is None else await self.get(tenant, task_id)

    # -- writes of this replica ---------------------------------------------
    def put(self, record: TaskRecord, envelope: Envelope, read_at: float) -> None:
        """Hold ``envelope`` of ``record``, which was read or written after ``read_at``
        (this view's clock): a submit's or a cancel's own result."""
        self._hold((record.tenant, record.task_id), record.terminal, envelope, read_at)

    # -- internals ----------------------------------------------------------
    async def _once(self, key: Hashable, start: Callable[[], Any]) -> Any:
        """One flight per key: concurrent callers share its result. A caller that is
        cancelled (its client went away) does not cancel the flight for the others."""
        flight = self._flights.get(key)
        if flight is None:
            flight = asyncio.ensure_future(start())
            self._flights[key] = flight

            def landed(done: asyncio.Task) -> None:
                if self._flights.get(key) is done:
                    del self._flights[key]
                if not done.cancelled():
                    done.exception()  # retrieved, even if every caller went away: no "never retrieved" noise

            flight.add_done_callback(landed)
        return await asyncio.shield(flight)

    async def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        self.reads += 1
        return await asyncio.to_thread(fn, *args)

    async def _resolve_ref(self, tenant: str, reference_id: str) -> str | None:
        started = self.clock()
        task_id = await self._in_thread(self._resolve, tenant, reference_id)
        if task_id is not None:
            self._refs.put((tenant, reference_id), (started + self.max_age, task_id))
        return task_id

    async def _refresh(self, tenant: str, task_id: str) -> Envelope | None:
        started = self.clock()

        def read() -> tuple[TaskRecord, Envelope] | None:
            record = self._read(tenant, task_id)
            return None if record is None else (record, self._envelope(record))

        found = await self._in_thread(read)
        key = (tenant, task_id)
        if found is None:
            held = self._entries.get(key)
            if held is not None and held.read_at > started:
                return held.envelope  # written here (a submit) while the read was out
            self._entries.pop(key)
            self._missing.put(key, started + min(MISSING_SECONDS, self.max_age))
            return None
        record, env = found
        self._missing.pop(key)
        return self._hold(key, record.terminal, env, started)

    def _hold(self, key: Hashable, terminal: bool, env: Envelope, read_at: float) -> Envelope:
        """Keep ``env`` unless what is held is newer or final; return what is held."""
        held = self._entries.get(key)
        if held is not None and (held.terminal, held.read_at) > (terminal, read_at):
            return held.envelope  # final beats unfinished; then the newer read wins
        fresh_until = read_at + (self.finished_age if terminal else self.max_age)
        self._entries.put(key, _Entry(read_at, fresh_until, terminal, env))
        self._missing.pop(key)
        return env
