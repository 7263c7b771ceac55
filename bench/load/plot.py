"""``replicas.png``: replicas per deployment over time (top) and the load (bottom), with
stage boundaries and fault times marked. Matplotlib's Agg backend: no display needed."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from bench.load.profiles import MIN_REPLICAS  # noqa: E402
from bench.load.report import outcome  # noqa: E402


def users_over_time(history_csv: Path, start: float) -> tuple[list[float], list[int]]:
    """(seconds since the load began, users) from locust's ``_stats_history.csv``."""
    ts: list[float] = []
    users: list[int] = []
    if not history_csv.exists():
        return ts, users
    with history_csv.open() as f:
        for row in csv.DictReader(f):
            if row.get("Name") == "Aggregated":
                ts.append(float(row["Timestamp"]) - start)
                users.append(int(row["User Count"]))
    return ts, users


def per_second(rows: list[dict[str, Any]], start: float, kinds: set[str]) -> tuple[list[int], list[int]]:
    counts = Counter(int(r["t"] - start) for r in rows if outcome(r) in kinds)
    if not counts:
        return [], []
    xs = list(range(min(counts), max(counts) + 1))
    return xs, [counts.get(x, 0) for x in xs]


def _nan(values: list[Any]) -> list[float]:
    return [float("nan") if v is None else float(v) for v in values]


def plot(path: Path, *, monitor, rows: list[dict[str, Any]], history_csv: Path, start: float,
         stages: list[dict[str, Any]], faults: list[dict[str, Any]], title: str) -> None:
    fig, (top, mid, bottom) = plt.subplots(3, 1, figsize=(13, 8.5), sharex=True,
                                           gridspec_kw={"height_ratios": [3, 1, 2]})
    colors = {"sd15-a10g": "tab:blue", "sdxl-a100": "tab:orange"}
    for name, color in colors.items():
        ts, running, targets = monitor.api_series(name)
        xs = [t - start for t in ts]
        if monitor.api_seen:
            top.step(xs, _nan(running), where="post", color=color, lw=2.2, label=f"{name} running (get-status)")
            top.step(xs, _nan(targets), where="post", color=color, lw=1, ls="--", label=f"{name} target")
        pts, procs = monitor.process_series(name)
        top.step([t - start for t in pts], procs, where="post", color=color, lw=1, ls=":",
                 label=f"{name} processes (min {MIN_REPLICAS[name]})")
    top.set_ylabel("family replicas")
    top.set_ylim(-0.2, 4.2)
    top.legend(loc="upper left", bbox_to_anchor=(1.005, 1), fontsize=7)
    top.set_title(title, fontsize=10)

    for name, color, lift in (("ingress", "tab:green", 0.0), ("proxy", "tab:gray", 0.08)):
        pts, procs = monitor.process_series(name)
        mid.step([t - start for t in pts], [p + lift for p in procs], where="post", color=color, lw=1.5,
                 label=f"{name} processes")
    mid.set_ylim(-0.3, 1.5)
    mid.set_yticks([0, 1])
    mid.legend(loc="upper left", bbox_to_anchor=(1.005, 1), fontsize=7)

    ux, uy = users_over_time(history_csv, start)
    bottom.step(ux, uy, where="post", color="black", lw=1.5, label="users")
    for kinds, label, color in (({"ok"}, "ok/s", "tab:green"), ({"503"}, "503/s", "tab:red"),
                                ({"504", "5xx-envelope", "5xx-other"}, "other 5xx/s", "tab:purple"),
                                ({"connection", "timeout", "transport"}, "conn. errors + timeouts/s", "tab:brown")):
        xs, ys = per_second(rows, start, kinds)
        if xs:
            bottom.plot(xs, ys, color=color, lw=1, label=label)
    bottom.set_ylabel("users, requests/s")
    bottom.set_xlabel("seconds since the load began")
    bottom.legend(loc="upper left", bbox_to_anchor=(1.005, 1), fontsize=7)

    for ax in (top, mid, bottom):
        for st in stages:
            ax.axvline(st["offset"], color="0.6", ls="--", lw=0.8)
        for f in faults:
            ax.axvline(f["offset"], color="red", lw=1.2)
    for st in stages:
        top.text(st["offset"] + 0.5, 4.1, st["name"], fontsize=8, va="top", color="0.3")
    for f in faults:
        top.text(f["offset"] + 0.5, 3.4, f"kill {f['target']}", fontsize=8, color="red", rotation=90, va="top")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
