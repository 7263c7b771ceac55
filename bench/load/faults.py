"""Find and SIGKILL processes of one service's own session (by PID, never by name)."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import psutil

#: Ray's process titles of the fault targets (a replica adds ``.<method>`` while it runs one).
TITLES = {
    "ingress": "ray::ServeReplica:studio:ingress",
    "proxy": "ray::ProxyActor",
}


def family_title(deployment: str) -> str:
    return f"ray::ServeReplica:studio:{deployment}"


def title_of(proc: psutil.Process) -> str:
    """The process title Ray set (the first argv word, as ``ps -o args`` shows it)."""
    cmdline = proc.cmdline()
    return cmdline[0].strip() if cmdline else ""


def session_processes(sid: int) -> list[tuple[int, str]]:
    """(pid, title) of every live process whose session id is ``sid``."""
    found = []
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) != sid:
                continue
            found.append((proc.pid, title_of(proc)))
        except (psutil.Error, OSError):
            continue
    return found


def matches(title: str, prefix: str) -> bool:
    return title == prefix or title.startswith(prefix + ".")


def pids_titled(sid: int, prefix: str) -> list[int]:
    return [pid for pid, title in session_processes(sid) if matches(title, prefix)]


def count_titled(sid: int, prefixes: dict[str, str]) -> dict[str, int]:
    """Live processes per name for ``{name: title prefix}``, from one scan of the session."""
    procs = session_processes(sid)
    return {name: sum(matches(title, prefix) for _, title in procs) for name, prefix in prefixes.items()}


@dataclass
class FaultRecord:
    target: str
    title: str
    at: float  # unix time of the kill
    offset: float  # seconds after the load started
    pids: list[int] = field(default_factory=list)
    process_back_s: float | None = None  # until a new process with the title ran
    serving_back_s: float | None = None  # until GET apps answered 200 again
    note: str = ""


def kill_one(sid: int, title: str) -> list[int]:
    """SIGKILL one process titled ``title`` in session ``sid`` (the lowest PID); return what was killed."""
    pids = sorted(pids_titled(sid, title))
    if not pids:
        return []
    pid = pids[0]
    if os.getsid(pid) != sid:  # re-checked right before the kill: PIDs are reused
        return []
    os.kill(pid, signal.SIGKILL)
    return [pid]


class FaultInjector(threading.Thread):
    """Kills a family replica, the ingress replica and the Serve proxy of one service, one after
    the other, ``start`` + the scheduled offset at the earliest. After each kill it measures how long
    until a new process has the title and until ``probe()`` (the service answering) holds again; the
    next fault waits for both, at most ``grace`` seconds past its own time, so windows do not overlap;
    after the last one it waits at most ``last_wait`` seconds."""

    def __init__(self, sid: int, schedule: list[tuple[float, str]], family: str, start: float,
                 probe: Callable[[], bool], stop: threading.Event, log: Callable[[str], None], grace: float = 15.0,
                 last_wait: float = 90.0):
        super().__init__(daemon=True, name="faults")
        self.sid, self.schedule, self.start_at, self.probe = sid, schedule, start, probe
        self.stop_event, self.log, self.grace, self.last_wait = stop, log, grace, last_wait
        self.titles = {**TITLES, "family": family_title(family)}
        self.records: list[FaultRecord] = []

    def run(self) -> None:
        for i, (offset, target) in enumerate(self.schedule):
            if self.stop_event.wait(max(0.0, self.start_at + offset - time.time())):
                return
            title = self.titles[target]
            before = set(pids_titled(self.sid, title))
            killed = kill_one(self.sid, title)
            now = time.time()
            record = FaultRecord(target, title, now, round(now - self.start_at, 2), killed,
                                 note="" if killed else "no such process to kill")
            self.records.append(record)
            self.log(f"fault: SIGKILL {title} pid {killed} at +{record.offset:.1f}s")
            if killed:
                nxt = self.schedule[i + 1][0] if i + 1 < len(self.schedule) else None
                until = now + self.last_wait if nxt is None else self.start_at + nxt + self.grace
                self._await_back(record, before - set(killed), until)

    def _await_back(self, record: FaultRecord, survivors: set[int], until: float) -> None:
        while not self.stop_event.wait(0.25):
            if record.process_back_s is None and set(pids_titled(self.sid, record.title)) - survivors - set(record.pids):
                record.process_back_s = round(time.time() - record.at, 2)
            if record.serving_back_s is None and time.time() - record.at > 0.5 and self.probe():
                record.serving_back_s = round(time.time() - record.at, 2)
            if record.process_back_s is not None and record.serving_back_s is not None:
                self.log(f"fault: {record.target} back: process after {record.process_back_s:.1f}s, "
                         f"service answering after {record.serving_back_s:.1f}s")
                return
            if time.time() >= until:
                self.log(f"fault: {record.target} not back within {until - record.at:.0f}s")
                return

    def as_dicts(self) -> list[dict]:
        return [asdict(r) for r in self.records]
