"""``studio``: a command-line client for trying the studio API.

    studio apps                                   # the app registry, as a table
    studio generate --app ap-sd15-txt2img --prompt "a lighthouse" --steps 4

stdout carries only results (the table, saved file paths); progress and messages go
to stderr. Exit codes: 0 success; 1 task failure, server error (5xx) or no answer;
2 usage or validation error (4xx, or a task that failed validation); 130 Ctrl-C.
"""

from __future__ import annotations

import argparse
import base64
import json
import mimetypes
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any, TextIO

from client.api import TERMINAL, ApiError, StudioClient, TransportError

DEFAULT_URL = "http://127.0.0.1:8000"
MAX_IMAGE_BYTES = 20 * 1024 * 1024  # the server's input image cap
POLL_FIRST, POLL_MAX, POLL_GROWTH = 0.5, 2.0, 1.5
CANCEL_WAIT_SECONDS = 15.0
VALIDATION_ERRORS = frozenset({"ValidationError", "InputFetchError"})

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(Exception):
    """A problem with the command line or local inputs (exit code 2)."""


# --- arguments -------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="studio", description="Try the studio generation API.")
    p.add_argument("--url", default=os.environ.get("STUDIO_URL") or DEFAULT_URL,
                   help="service base URL (env STUDIO_URL; default %(default)s)")
    p.add_argument("--key", default=os.environ.get("STUDIO_API_KEY"),
                   help="API key (env STUDIO_API_KEY)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per HTTP request (default %(default)s)")
    sub = p.add_subparsers(dest="command", required=True)

    a = sub.add_parser("apps", help="list the app registry")
    a.add_argument("--json", action="store_true", help="print the registry as JSON instead of a table")

    g = sub.add_parser("generate", help="run an app and save its images")
    g.add_argument("--app", required=True, dest="app_id", help="app_id (see `studio apps`)")
    g.add_argument("--prompt")
    g.add_argument("--negative-prompt")
    g.add_argument("--image", help="reference image: a local file (sent inline) or an http(s) URL")
    g.add_argument("--mask", help="inpainting mask: a local file or an http(s) URL (sent as mask_url)")
    g.add_argument("--width", type=int)
    g.add_argument("--height", type=int)
    g.add_argument("--steps", type=int, help="num_inference_steps")
    g.add_argument("--guidance", type=float, help="guidance_scale")
    g.add_argument("--strength", type=float)
    g.add_argument("--batch", type=int)
    g.add_argument("--seed", type=int)
    g.add_argument("--inference-type", help="GPU type, e.g. a10g, a100, h100")
    g.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="any other body field; VALUE is parsed as JSON when it parses, else taken as a string")
    g.add_argument("--sync", action="store_true", help="one synchronous call instead of submit-and-poll")
    g.add_argument("--out", type=Path, default=Path("studio-out"), help="directory for the images (default %(default)s)")
    return p


FIELDS = {  # argparse dest -> body field
    "prompt": "prompt", "negative_prompt": "negative_prompt", "width": "width", "height": "height",
    "steps": "num_inference_steps", "guidance": "guidance_scale", "strength": "strength",
    "batch": "batch", "seed": "seed", "inference_type": "inference_type",
}


def parse_option(text: str) -> tuple[str, Any]:
    """``key=value`` → (key, JSON value, or the raw string when it is not JSON)."""
    key, eq, raw = text.partition("=")
    key = key.strip()
    if not eq or not key:
        raise UsageError(f"--option {text!r}: expected KEY=VALUE")
    try:
        return key, json.loads(raw)
    except ValueError:
        return key, raw


def image_field(name: str, value: str) -> str:
    """A URL (or data: URI) as it is; a local file as a ``data:image/...;base64,`` URI."""
    if value.startswith(("http://", "https://", "data:")):
        return value
    path = Path(value).expanduser()
    if not path.is_file():
        raise UsageError(f"--{name} {value!r}: not an http(s) URL and no such file")
    size = path.stat().st_size
    if size > MAX_IMAGE_BYTES:
        raise UsageError(f"--{name} {value!r}: {size} bytes is over the {MAX_IMAGE_BYTES // (1024 * 1024)} MiB "
                         "input image limit; resize or recompress it")
    data = path.read_bytes()
    mime = _sniff(data) or mimetypes.guess_type(path.name)[0]
    if not mime or not mime.startswith("image/"):
        raise UsageError(f"--{name} {value!r}: not a PNG, JPEG or WEBP image")
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def _sniff(data: bytes) -> str | None:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def request_body(args: argparse.Namespace) -> dict[str, Any]:
    """The JSON body of a generate call (without ``celery``)."""
    body: dict[str, Any] = {"app_id": args.app_id}
    for dest, field in FIELDS.items():
        if (value := getattr(args, dest)) is not None:
            body[field] = value
    if args.image is not None:
        body["image"] = image_field("image", args.image)
    if args.mask is not None:
        body["mask_url"] = image_field("mask", args.mask)
    for text in args.option:
        key, value = parse_option(text)
        if key == "celery":
            raise UsageError("--option celery=...: the client sets celery itself; use --sync for a synchronous call")
        body[key] = value
    return body


# --- output ------------------------------------------------------------------------


def err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Progress:
    """A one-line progress bar on a terminal; plain lines (on change) otherwise."""

    WIDTH = 30

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.last: str | None = None
        self.started = time.monotonic()

    def update(self, status: str, progress: float | None) -> None:
        frac = min(max(progress or 0.0, 0.0), 1.0)
        filled = int(frac * self.WIDTH)
        bar = "#" * filled + "-" * (self.WIDTH - filled)
        line = f"[{bar}] {frac * 100:3.0f}% {status}"
        if self.tty:
            elapsed = time.monotonic() - self.started
            self.stream.write(f"\r{line} {elapsed:6.1f}s")
            self.stream.flush()
        elif line != self.last:
            self.stream.write(line + "\n")
            self.stream.flush()
        self.last = line

    def close(self) -> None:
        if self.tty and self.last is not None:
            self.stream.write("\n")
            self.stream.flush()
        self.last = None


def apps_table(apps: list[dict[str, Any]]) -> str:
    """app_id, name, task and GPU types (the default marked with ``*``), aligned."""
    rows = [("APP_ID", "NAME", "TASK", "GPU_TYPES")]
    for app in apps:
        default = app.get("default_inference_type")
        gpus = ",".join(f"{g}*" if g == default else g for g in app.get("inference_types") or [])
        rows.append((str(app.get("app_id", "")), str(app.get("name", "")), str(app.get("task", "")), gpus or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:3], widths, strict=True)) + "  " + r[3] for r in rows)


def error_code(status_code: int | None, error: str | None) -> int:
    if status_code is not None and 400 <= status_code < 500 and status_code != 429:
        return EXIT_USAGE
    if status_code is None and error in VALIDATION_ERRORS:
        return EXIT_USAGE
    return EXIT_FAILURE


def report(env: dict[str, Any], status_code: int | None = None) -> int:
    error = env.get("error") or env.get("status") or "error"
    detail = env.get("error_data")
    err(f"error: {error}: {detail}" if detail else f"error: {error}")
    return error_code(status_code, env.get("error"))


# --- commands --------------------------------------------------------------------


def cmd_apps(client: StudioClient, args: argparse.Namespace) -> int:
    apps = client.apps()
    print(json.dumps({"apps": apps}, indent=2) if args.json else apps_table(apps))
    return EXIT_OK


def pick_route(apps: list[dict[str, Any]], app_id: str) -> str:
    for app in apps:
        if app.get("app_id") == app_id:
            routes = app.get("routes") or []
            if not routes:
                raise UsageError(f"app {app_id!r} lists no routes")
            return routes[0]
    known = ", ".join(sorted(str(a.get("app_id")) for a in apps)) or "(none)"
    raise UsageError(f"unknown app {app_id!r}; known apps: {known}")


def cmd_generate(client: StudioClient, args: argparse.Namespace) -> int:
    body = request_body(args)  # local checks first: no request for a bad file
    route = pick_route(client.apps(), args.app_id)
    if args.sync:
        err(f"{route} {args.app_id} (synchronous)...")
        env = client.generate(route, body)
    else:
        env = client.generate(route, {**body, "celery": True}, idempotency_key=uuid.uuid4().hex)
        task_id = env.get("task_id")
        if not task_id:
            err("error: the submit answer carries no task_id")
            return EXIT_FAILURE
        err(f"task {task_id} submitted ({route} {args.app_id})")
        polled = poll(client, task_id, env)
        if polled is None:
            return EXIT_INTERRUPTED
        env = polled
    if env.get("status") != "SUCCESS":
        return report(env)
    return save_outputs(client, env, args.out)


def poll(client: StudioClient, task_id: str, env: dict[str, Any]) -> dict[str, Any] | None:
    """Poll until a terminal status; on Ctrl-C cancel the task and return None."""
    bar = Progress()
    delay = POLL_FIRST
    try:
        while env.get("status") not in TERMINAL:
            bar.update(str(env.get("status")), env.get("progress"))
            client.pause(delay)
            delay = min(delay * POLL_GROWTH, POLL_MAX)
            env = client.status(task_id)
        bar.update(str(env.get("status")), 1.0 if env.get("status") == "SUCCESS" else env.get("progress"))
    except KeyboardInterrupt:
        bar.close()
        err(f"interrupted: cancelling task {task_id}...")
        cancel(client, task_id)
        return None
    finally:
        bar.close()
    return env


def cancel(client: StudioClient, task_id: str) -> None:
    """POST cancelTask, then wait (bounded) for the task's final status and report it."""
    try:
        env = client.cancel(task_id)
        deadline = time.monotonic() + CANCEL_WAIT_SECONDS
        while env.get("status") not in TERMINAL and time.monotonic() < deadline:
            client.pause(POLL_FIRST)
            env = client.status(task_id)
        status = env.get("status")
        suffix = "" if status in TERMINAL else " (still stopping; it ends at its next step)"
        err(f"task {task_id}: {status}{suffix}")
    except (ApiError, TransportError) as exc:
        err(f"error: cancelling task {task_id} failed: {exc}")
    except KeyboardInterrupt:
        err(f"task {task_id}: cancel requested; not waiting for its final status")


def save_outputs(client: StudioClient, env: dict[str, Any], out: Path) -> int:
    output = env.get("output")
    if isinstance(output, str):
        output = [output]
    if not isinstance(output, list) or not all(isinstance(o, str) for o in output):
        print(json.dumps(output))  # not files (e.g. chat text): print it as JSON
        return EXIT_OK
    task_id = env.get("task_id") or uuid.uuid4().hex
    for i, item in enumerate(output):
        path = client.download(item, out / f"{task_id}-{i}.png")
        print(path)
    return EXIT_OK


# --- entry point -----------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code or 0)
    commands = {"apps": cmd_apps, "generate": cmd_generate}

    def on_wait(seconds: float, error: ApiError) -> None:
        err(f"{error.error} (HTTP {error.status_code}): retrying in {seconds:.1f}s")

    try:
        with StudioClient(args.url, args.key, timeout=args.timeout, on_wait=on_wait) as client:
            return commands[args.command](client, args)
    except UsageError as exc:
        err(f"error: {exc}")
        return EXIT_USAGE
    except ApiError as exc:
        code = report(exc.envelope, exc.status_code)
        if exc.status_code == 401:
            err("hint: pass --key or set STUDIO_API_KEY")
        return code
    except TransportError as exc:
        err(f"error: {exc}")
        return EXIT_FAILURE
    except KeyboardInterrupt:
        err("interrupted")
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
