"""Figures of one load run (from locust's CSVs, the per-request CSV, the async settle
and the replica samples), the checks they must pass, and ``report.md``."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path
from typing import Any

from bench.load.profiles import MIN_REPLICAS, Profile

SYNC_PREFIX = "POST getTextToImage sync"
#: Seconds after a kill that count as that fault's window (cut short by the next fault).
FAULT_WINDOW_S = 45.0


def route_stats(stats_csv: Path) -> dict[str, dict[str, Any]]:
    """Per route (and ``Aggregated``): requests, failures, p50/p90/p99 ms and req/s from locust's ``_stats.csv``."""
    def num(row: dict[str, str], key: str) -> float | None:
        value = row.get(key, "")
        return float(value) if value not in ("", "N/A") else None

    out: dict[str, dict[str, Any]] = {}
    with stats_csv.open() as f:
        for row in csv.DictReader(f):
            out[row["Name"]] = {
                "requests": int(row["Request Count"]),
                "failures": int(row["Failure Count"]),
                "p50_ms": num(row, "50%"),
                "p90_ms": num(row, "90%"),
                "p99_ms": num(row, "99%"),
                "rps": round(num(row, "Requests/s") or 0.0, 2),
            }
    return out


def read_requests(path: Path) -> list[dict[str, Any]]:
    with path.open() as f:
        return [{**row, "t": float(row["t"]), "status": int(row["status"]), "retry_after": row["retry_after"] == "1",
                 "ms": float(row["ms"])} for row in csv.DictReader(f)]


def outcome(row: dict[str, Any]) -> str:
    """One word per request: ok, 503, 504, 5xx-envelope, 5xx-other, 4xx, timeout, connection, transport.

    503/504/5xx-envelope carry the JSON envelope; 5xx-other did not (e.g. an error page of the proxy)."""
    if row["failure"] == "ClientTimeout":
        return "timeout"
    if row["failure"] == "ConnectionError":
        return "connection"
    status = row["status"]
    if status == 0:
        return "transport"
    if status == 200 and not row["failure"]:
        return "ok"
    if status in (503, 504):
        return str(status) if row["error"] not in ("", "non-envelope") else "5xx-other"
    if status >= 500:
        return "5xx-envelope" if row["error"] not in ("", "non-envelope") else "5xx-other"
    return "4xx" if 400 <= status < 500 else f"other-{status}"


def request_figures(rows: list[dict[str, Any]]) -> dict[str, Any]:
    per_route: dict[str, Counter] = {}
    for row in rows:
        per_route.setdefault(row["route"], Counter())[outcome(row)] += 1
    total = Counter(outcome(r) for r in rows)
    sync = Counter(outcome(r) for r in rows if r["route"].startswith(SYNC_PREFIX))
    answered_503 = [r for r in rows if r["status"] == 503]
    return {
        "requests": len(rows),
        "outcomes": dict(total),
        "outcomes_by_route": {k: dict(v) for k, v in sorted(per_route.items())},
        "sync_outcomes": dict(sync),
        "http_503": len(answered_503),
        "http_503_with_retry_after": sum(r["retry_after"] for r in answered_503),
        "client_timeouts": total["timeout"],
        "connection_errors": total["connection"],
        "non_envelope_5xx": total["5xx-other"],
        "non_envelope_answers": [{"status": s, "body": d, "count": n} for (s, d), n in Counter(
            (r["status"], r.get("detail", "")) for r in rows if r["error"] == "non-envelope").most_common(5)],
    }


def answered(row: dict[str, Any]) -> float:
    """When the client had its answer (or its error)."""
    return row["t"] + row["ms"] / 1000


def fault_windows(rows: list[dict[str, Any]], faults: list[dict[str, Any]], load_end: float) -> list[dict[str, Any]]:
    """Each fault with what clients saw from its kill until the next fault (at most FAULT_WINDOW_S),
    by the time each answer arrived, and when a request sent after the kill first succeeded."""
    out = []
    for i, fault in enumerate(faults):
        end = min(fault["at"] + FAULT_WINDOW_S, load_end, *(f["at"] for f in faults[i + 1:]))
        inside = [r for r in rows if fault["at"] <= answered(r) < end]
        seen = Counter(outcome(r) for r in inside)
        first_ok = min((answered(r) for r in rows if r["t"] >= fault["at"] and outcome(r) == "ok"), default=None)
        out.append({**fault, "window_s": round(end - fault["at"], 1), "end": end, "seen": dict(seen),
                    "5xx": sum(n for k, n in seen.items() if k in ("503", "504", "5xx-envelope", "5xx-other")),
                    "first_ok_after_s": None if first_ok is None else round(first_ok - fault["at"], 1)})
    return out


def per_stage(rows: list[dict[str, Any]], start: float, stages: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Outcomes per stage, by when the answer arrived (answers after the last stage count in it)."""
    out: dict[str, Counter] = {st["name"]: Counter() for st in stages}
    for row in rows:
        offset = answered(row) - start
        name = stages[0]["name"]
        for st in stages:
            if offset >= st["offset"]:
                name = st["name"]
        out[name][outcome(row)] += 1
    return {name: dict(c) for name, c in out.items()}


def bare_5xx_outside(rows: list[dict[str, Any]], windows: list[dict[str, Any]]) -> int:
    """5xx answers without the envelope outside the ingress and proxy fault windows (there Serve's proxy
    answers for a dead ingress, not our code)."""
    spans = [(w["at"], w["end"]) for w in windows if w["target"] in ("ingress", "proxy")]
    return sum(1 for r in rows if outcome(r) == "5xx-other" and not any(a <= answered(r) < b for a, b in spans))


def replica_figures(monitor, start: float, end: float) -> dict[str, Any]:
    """Per family deployment during the load: the most replicas get-status called running, its highest
    target, and the most replica processes (starting, running or stopping); then the end of the run."""
    out: dict[str, Any] = {}
    for name, floor in MIN_REPLICAS.items():
        ts, running, targets = monitor.api_series(name)
        pts, procs = monitor.process_series(name)

        def peak(times: list[float], values: list[Any], after: bool = False) -> Any:
            seen = [v for t, v in zip(times, values) if v is not None and ((t > end) if after else (start <= t <= end))]
            return max(seen, default=None)

        r = {"min_replicas": floor, "running_max": peak(ts, running), "target_max": peak(ts, targets),
             "processes_max": peak(pts, procs), "processes_peak_after_load": peak(pts, procs, after=True),
             "running_last": running[-1] if running else None, "processes_last": procs[-1] if procs else None}
        r["scaled_up"] = any(v is not None and v > floor for v in (r["running_max"], r["processes_max"]))
        out[name] = r
    return out


def checks(fig: dict[str, Any]) -> dict[str, bool]:
    """What a run must show (the CI test asserts the same)."""
    req, tasks = fig["requests"], fig["async"]
    out = {
        "no client timeout (no hung request)": req["client_timeouts"] == 0,
        "every async task reached a terminal state": tasks["submitted"] > 0 and not tasks["open"],
        "every SUCCESS has its outputs (non-empty PNG)": tasks["outputs_bad"] == 0,
        "every FAILURE names its error": tasks["failures_without_reason"] == 0,
        "a 503 was answered during overload": fig["per_stage"].get("overload", {}).get("503", 0) > 0,
        "every 503 carried Retry-After": req["http_503"] == req["http_503_with_retry_after"],
        "a deployment scaled above its minimum": any(d["scaled_up"] for d in fig["replicas"].values()),
        "every 5xx outside the ingress/proxy fault windows had the JSON envelope": fig["bare_5xx_outside_faults"] == 0,
    }
    if fig["faults_enabled"]:
        out["every fault found its process"] = all(f["pids"] for f in fig["faults"])
    return out


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.0f}"


def _s(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


#: What the fault windows show, from Ray Serve 2.60's own code (read, not guessed).
NOTES = [
    "Reading the fault windows:",
    "",
    "- *family replica*: Serve routes around the dead replica and starts a new one; calls that were on it are "
    "answered 503 + Retry-After by the ingress (`ingress/dispatch.py` maps the dead actor to Overloaded); "
    "async tasks on it are re-run after their lease expires.",
    "- *ingress replica*: requests in flight on it get a bare `500 Internal Server Error` from the Serve proxy "
    "(`ray.serve._private.http_util.get_http_response_status` maps `RayActorError` to 500 and sends no body "
    "of ours); new requests wait in the proxy until the replacement is up.",
    "- *Serve proxy*: its port refuses connections until the controller replaces it, after 3 failed health "
    "checks 10 s apart (`RAY_SERVE_PROXY_HEALTH_CHECK_PERIOD_S`, threshold 3): about 30 s on one node. "
    "With several nodes (KubeRay) a load balancer sends clients to another node's proxy meanwhile.",
]


def markdown(fig: dict[str, Any]) -> str:
    """report.md of one run."""
    lines = [
        f"# Load test — profile `{fig['profile']}`{' with faults' if fig['faults_enabled'] else ''}",
        "",
        f"{fig['started_utc']} · {fig['load_seconds']:.0f} s of load · {fig['cpus']} CPUs (load average "
        f"{fig['loadavg'][0]} before, {fig['loadavg'][1]} at the end: the machine is shared) · tiny random-weight models "
        "(256x256, 1 step) · service on loopback, started by the run.",
        "",
        "Stages: " + ", ".join(f"{s['name']} {s['seconds']:.0f} s → {s['users']} users" for s in fig["stages"]) + ".",
        "",
        "## Per route (locust)",
        "",
        "| route | requests | failures | p50 ms | p90 ms | p99 ms | req/s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in fig["routes"].items():
        label = f"**{name}**" if name == "Aggregated" else f"`{name}`"
        lines.append(f"| {label} | {r['requests']} | {r['failures']} | {_ms(r['p50_ms'])} | {_ms(r['p90_ms'])} | "
                     f"{_ms(r['p99_ms'])} | {r['rps']:.2f} |")
    req = fig["requests"]
    lines += [
        "",
        "Failures include every 503 the service shed on purpose (Overloaded, with Retry-After).",
        "",
        "## Outcomes",
        "",
        f"- 503 answers: **{req['http_503']}**, with Retry-After: **{req['http_503_with_retry_after']}**",
        f"- client timeouts (a request that hung): **{req['client_timeouts']}**",
        f"- connection refused/reset: **{req['connection_errors']}** (only while the Serve proxy is dead is this expected)",
        f"- 5xx without the JSON envelope: **{req['non_envelope_5xx']}**"
        + "".join(f"; {a['count']}x {a['status']} `{a['body'][:60]}`" for a in req["non_envelope_answers"]),
        "- synchronous calls: " + ", ".join(f"{k} {v}" for k, v in sorted(req["sync_outcomes"].items())),
        "- 503 answers per stage: " + ", ".join(f"{name} {c.get('503', 0)}" for name, c in fig["per_stage"].items()),
        "",
        "| route | " + " | ".join(OUTCOMES) + " |",
        "|---|" + "---:|" * len(OUTCOMES),
    ]
    for route, counts in req["outcomes_by_route"].items():
        lines.append(f"| `{route}` | " + " | ".join(str(counts.get(k, 0)) for k in OUTCOMES) + " |")
    tasks = fig["async"]
    lines += [
        "",
        "## Async tasks",
        "",
        f"- submitted: **{tasks['submitted']}**; terminal: **{tasks['terminal']}** "
        f"({', '.join(f'{k} {v}' for k, v in sorted(tasks['by_status'].items()))}); still open after "
        f"{tasks['settle_limit_s']:.0f} s: **{len(tasks['open'])}**",
        f"- failures by error: {', '.join(f'{k} {v}' for k, v in sorted(tasks['errors'].items())) or 'none'}",
        f"- outputs fetched: **{tasks['outputs_ok']}** non-empty PNGs, **{tasks['outputs_bad']}** missing or broken; "
        f"settled {tasks['settle_s']:.1f} s after the load",
        "",
        "## Replicas",
        "",
        "Sampled every second: *running* and *target* from `GET get-status` (while it answers), *processes* "
        "counted by title in the service's session (starting, running or stopping replicas).",
        "",
        "| deployment | min | running, max | target, max | processes, max | processes after load, max | "
        "running at the end | scaled up |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, r in fig["replicas"].items():
        lines.append(f"| `{name}` | {r['min_replicas']} | {r['running_max']} | {r['target_max']} | {r['processes_max']} | "
                     f"{r['processes_peak_after_load']} | {r['running_last']} | {'yes' if r['scaled_up'] else 'no'} |")
    if fig["faults_enabled"]:
        lines += [
            "",
            "## Faults (SIGKILL under load)",
            "",
            "Each window runs from the kill to the next fault (at most "
            f"{FAULT_WINDOW_S:.0f} s) and counts answers by when they arrived. *Process back*: a new process "
            "with the title ran; *answering*: `GET apps` (the ingress) answered 200 again; *first ok*: the first request "
            "sent after the kill that succeeded.",
            "",
            "| at (s) | target | killed | process back (s) | answering (s) | first ok (s) | window (s) | ok | 503 | 504 "
            "| bare 5xx | conn. errors | timeouts |",
            "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for f in fig["faults"]:
            s = f["seen"]
            lines.append(f"| {f['offset']:.0f} | {f['target']} | `{f['title']}` {f['pids']} | {_s(f['process_back_s'])} | "
                         f"{_s(f['serving_back_s'])} | {_s(f['first_ok_after_s'])} | {f['window_s']:.0f} | {s.get('ok', 0)} | "
                         f"{s.get('503', 0)} | {s.get('504', 0)} | {s.get('5xx-other', 0)} | {s.get('connection', 0)} | "
                         f"{s.get('timeout', 0)} |")
        lines += ["", *NOTES]
    lines += ["", "## Checks", ""]
    lines += [f"- [{'x' if ok else ' '}] {name}" for name, ok in fig["checks"].items()]
    lines += ["", "![replicas over time](replicas.png)", ""]
    return "\n".join(lines)


OUTCOMES = ["ok", "503", "504", "5xx-envelope", "5xx-other", "4xx", "connection", "timeout", "transport"]


def write_markdown(fig: dict[str, Any], path: Path) -> None:
    path.write_text(markdown(fig))


def stage_rows(profile: Profile) -> list[dict[str, Any]]:
    return [{"name": s.name, "seconds": s.seconds, "users": s.users, "offset": off}
            for s, (off, _) in zip(profile.stages, profile.boundaries())]
