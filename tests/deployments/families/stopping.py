"""Cancelling a family's call while its model thread is known to be inside a given step.

No timing: the thread is held inside step ``hold_at`` (in the family's step clock, which the
base calls at every step before it checks the job's stop signal) until the test has cancelled
the call and looked at it; then the step is let go and the test counts the steps that ran.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import Any

import pytest


class HeldStep:
    """Counts the steps a family's model finishes and holds its thread inside step ``hold_at``
    until :meth:`release` (installed on ``family.clock.step`` with ``monkeypatch``)."""

    def __init__(self, family: Any, monkeypatch: pytest.MonkeyPatch, hold_at: int):
        self.steps = 0
        self.hold_at = hold_at
        self.reached = threading.Event()
        self._released = threading.Event()
        real = family.clock.step

        def step() -> None:
            real()
            self.steps += 1
            if self.steps == self.hold_at:
                self.reached.set()
                assert self._released.wait(120), "the test never let the step go"

        monkeypatch.setattr(family.clock, "step", step)

    def release(self) -> None:
        self._released.set()


@dataclass
class Cancelled:
    """What a call cancelled mid-job looked like."""

    returned_while_held: bool  # the call had ended while its thread was still held inside a step
    lock_free_while_held: bool  # the replica's job lock was free while the thread was held
    busy_when_returned: bool  # the model was still marked busy when the call ended
    steps: int  # steps the model finished in all


async def cancel_mid_job(family: Any, call: Any, held: HeldStep) -> Cancelled:
    """Start ``call`` (an awaitable of ``family.run``/``run_task``), cancel it while its thread is held
    in step ``held.hold_at``, then let the step go; the call must end with ``CancelledError``."""
    task = asyncio.ensure_future(call)
    busy_at_end: list[bool] = []
    task.add_done_callback(lambda _: busy_at_end.append(family.clock.busy_since is not None))
    reached = await asyncio.to_thread(held.reached.wait, 120)
    assert reached, "the job never reached the step to hold"
    task.cancel()
    for _ in range(5):  # the cancellation is delivered on the next turn of the loop; give it several
        await asyncio.sleep(0.01)
    returned, lock_free = task.done(), not family._lock.locked()
    held.release()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 120)
    return Cancelled(returned, lock_free, busy_at_end[0], held.steps)
