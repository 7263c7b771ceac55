"""Run the service on its embedded default: a local Ray node with the three GPU
types emulated as custom resources, the local object store, tiny models.

    python -m ingress.wiring.local up [--port 8000] [--config serve_config.yaml] [--metrics-port N]

SIGHUP redeploys the application from the (re-read) config file. Ctrl-C (SIGINT) or
SIGTERM stops the node at once, without draining replicas: async tasks are durable in
the object store and resume on the next start; synchronous requests in flight lose
their connection. A second Ctrl-C kills what is left immediately.

The same code path serves the end-to-end tests and the benchmarks: it reads
``serve_config.yaml``, applies its runtime_env, and deploys the application
through ``ingress.wiring.builder:build_app`` with ``serve.run``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]  # the repository (ingress/wiring/local.py)
#: Emulated GPUs of each type on the local node: one unit per replica pinned to that type (every
#: family of the embedded registry, the test suite's extra ones and their autoscaled peaks fit).
EMULATED_GPUS: dict[str, float] = {"a10g": 16, "a100": 16, "h100": 16}
#: How long a stop may take before what is left of the node is killed.
STOP_SECONDS = 6.0
#: How often Ray's processes export metrics to the node's metrics agent (Ray's default: 10 s).
METRICS_REPORT_INTERVAL_MS = "2000"
#: Serve's throughput mode (bench/overhead.py: half the added latency), a default the environment may
#: override; and always without the "direct ingress" that mode turns on (each ingress replica serving the
#: whole API on a port of its own, 30000-31000, beside the proxy). cluster/manifests.py sets the same.
THROUGHPUT_MODE = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}
#: Forced whatever the environment says: no direct ingress (each ingress replica serving the whole API on a
#: port of its own); user code on the replica's own event loop, so that a cancelled job's replica slot stays
#: busy until its model thread has ended (deployments/families/base.py, run_to_end).
NO_DIRECT_INGRESS = {"RAY_SERVE_ENABLE_DIRECT_INGRESS": "0", "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0"}
log = logging.getLogger("ingress.wiring.local")


def load_app_config(path: Path, name: str = "studio") -> dict[str, Any]:
    """The application entry ``name`` of a Serve config file."""
    config = yaml.safe_load(Path(path).read_text())
    for app in config.get("applications", []):
        if app.get("name") == name:
            return app
    raise SystemExit(f"{path}: no application named {name!r}")


def dev_keys(data_dir: Path) -> tuple[Path, str]:
    """Create (once) a development API key for tenant ``dev``; return the file and key."""
    path = data_dir / "dev-api-keys.json"
    if path.exists():
        keys = json.loads(path.read_text())
        return path, next(iter(keys))
    key = "sk-dev-" + secrets.token_urlsafe(24)
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({key: "dev"}, f)
    return path, key


def dev_webhook_secret(data_dir: Path) -> Path:
    """Create (once) a webhook signing secret for tenant ``dev``; return its file."""
    from ingress.tasks.webhooks import new_secret

    path = data_dir / "dev-webhook-secrets.json"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"dev": new_secret()}, f)
    return path


def service_env(app: dict[str, Any], *, port: int, models_dir: Path, data_dir: Path) -> dict[str, str]:
    """Environment of the launcher and, minus the secrets, of every replica: the config's
    runtime_env plus local defaults. Values already set in this process's environment
    (e.g. S3 settings or keys) win over the local defaults; without configured API keys
    or webhook secrets, the development ones in ``data_dir`` are used."""
    env = {k: str(v) for k, v in (app.get("runtime_env", {}).get("env_vars") or {}).items()}
    defaults = {
        "STUDIO_MODELS_DIR": str(models_dir),
        "STUDIO_STORAGE_LOCAL_ROOT": str(data_dir / "objects"),
        "STUDIO_QDRANT_PATH": str(data_dir / "qdrant"),
        "STUDIO_STORAGE_PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
        "RAY_SERVE_LOG_TO_STDERR": "0",
    }
    env.update(defaults)
    env.update({k: v for k, v in os.environ.items() if k.startswith(("STUDIO_", "RAY_SERVE_"))})
    if "STUDIO_API_KEYS" not in env and "STUDIO_API_KEYS_FILE" not in env:
        env["STUDIO_API_KEYS_FILE"] = str(dev_keys(data_dir)[0])
    if "STUDIO_WEBHOOK_SECRETS" not in env and "STUDIO_WEBHOOK_SECRETS_FILE" not in env:
        env["STUDIO_WEBHOOK_SECRETS_FILE"] = str(dev_webhook_secret(data_dir))
    return env


def serve_process_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The Serve settings to put in the environment that starts Ray (the proxy and the controller
    read them when they start): throughput mode unless ``environ`` says otherwise, direct ingress off."""
    return {**THROUGHPUT_MODE, **{k: environ[k] for k in THROUGHPUT_MODE if k in environ}, **NO_DIRECT_INGRESS}


def up(
    config_path: Path, port: int, models_dir: Path, data_dir: Path, tiny: bool, name: str = "studio",
    metrics_port: int = 0,
) -> None:
    """Start Ray, deploy the app, print how to call it, and serve until stopped.
    ``metrics_port`` 0: a free port, chosen now."""
    from ingress.wiring.secrets import SECRET_VARS, Secrets

    app = load_app_config(config_path, name)
    # Proxy- and controller-level settings must be in the environment that starts Ray.
    os.environ.update(serve_process_env(os.environ))
    env = service_env(app, port=port, models_dir=models_dir, data_dir=data_dir)
    os.environ.update(env)
    try:
        # Ray's workers inherit this process's environment: the secrets leave it here,
        # and reach only the deployments that need them (ingress/wiring/secrets.py).
        found = Secrets.take(os.environ)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"configuration error: {exc}") from None
    shared_env = {k: v for k, v in env.items() if k not in SECRET_VARS}
    if tiny:
        from deployments.tiny import make_tiny_models

        make_tiny_models(models_dir)
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    # Token authentication on every Ray port, whatever this Ray version's default (Ray reads
    # it when it is imported, so it is set first).
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    if os.environ["RAY_AUTH_MODE"] != "token":
        log.warning("RAY_AUTH_MODE=%s: Ray's ports accept unauthenticated calls", os.environ["RAY_AUTH_MODE"])
    # Serve's and the studio's metrics reach the node's Prometheus endpoint within ~2 s.
    os.environ.setdefault("RAY_metrics_report_interval_ms", METRICS_REPORT_INTERVAL_MS)
    metrics_port = metrics_port or free_port()
    import ray
    from ray import serve

    ray.init(
        num_cpus=int(os.environ.get("STUDIO_RAY_NUM_CPUS", os.cpu_count() or 2)),
        resources=EMULATED_GPUS,
        include_dashboard=False,
        runtime_env={"env_vars": shared_env},
        _node_ip_address="127.0.0.1",  # also binds the metrics endpoint to 127.0.0.1
        _metrics_export_port=metrics_port,
        logging_level=logging.WARNING,
        log_to_driver=os.environ.get("STUDIO_LOG_TO_DRIVER", "0") == "1",
    )
    from ingress.wiring.builder import build_app

    serve.start(http_options={"host": "127.0.0.1", "port": port, "request_timeout_s": 600})

    def deploy() -> None:
        current = load_app_config(config_path, name)
        serve.run(
            build_app(current["args"], secrets=found),
            name=name,
            route_prefix=current.get("route_prefix", "/"),
            logging_config=current.get("logging_config"),
        )

    deploy()
    print_ready(port, found, data_dir, metrics_port)
    serve_until_stopped(deploy)


def serve_until_stopped(deploy: Callable[[], None], stop_seconds: float = STOP_SECONDS) -> None:
    """Serve until SIGINT/SIGTERM; SIGHUP redeploys. The main thread only waits, so a signal
    is handled at once; deploys and the stop run in threads.

    The stop does not drain Serve (``serve.shutdown()`` waits up to 30 s for the controller
    and replicas): ``ray.shutdown()`` ends the node this process started. Past ``stop_seconds``,
    or on a second SIGINT/SIGTERM, every process this launcher started is killed."""
    import ray

    stop, reload = threading.Event(), threading.Event()
    started: dict[int, str] = {}  # what runs when the stop begins: ray.shutdown() may orphan some

    def on_stop(*_: object) -> None:
        if stop.is_set():
            kill_now(started)
        stop.set()

    def on_hup(*_: object) -> None:
        reload.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_stop)
    signal.signal(signal.SIGHUP, on_hup)
    deploying: threading.Thread | None = None
    while not stop.wait(0.2):
        if reload.is_set() and (deploying is None or not deploying.is_alive()):
            reload.clear()
            deploying = threading.Thread(target=_redeploy, args=(deploy, stop), name="redeploy", daemon=True)
            deploying.start()
    print("STOPPING", flush=True)
    started.update(descendants(os.getpid()))
    # A redeploy still running would call ray.init() once the node is gone, and that would
    # start a new local node: point it at this one's (soon dead) address instead.
    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    stopper = threading.Thread(target=ray.shutdown, kwargs={"wait_for_processes": True}, name="stop", daemon=True)
    stopper.start()
    deadline = time.monotonic() + stop_seconds
    while stopper.is_alive() and time.monotonic() < deadline:
        stopper.join(0.1)  # short waits: the main thread stays free to take a second signal
    if stopper.is_alive():
        log.warning("Ray did not stop within %.0f s: killing its processes", stop_seconds)
        kill_now(started)
    _kill({**started, **descendants(os.getpid())})  # a worker whose raylet went first; anything started since
    print("STOPPED", flush=True)


def _redeploy(deploy: Callable[[], None], stop: threading.Event) -> None:
    print("REDEPLOYING", flush=True)
    try:
        deploy()  # a rolling update: every replica is replaced
    except Exception as exc:
        if stop.is_set():
            return  # the node is going away under the deploy
        log.error("redeploy failed: %s", exc)
        print("REDEPLOY FAILED", flush=True)
        return
    print("REDEPLOYED", flush=True)


def kill_now(started: dict[int, str]) -> None:
    """SIGKILL every process this launcher started (Ray's and their workers, also those in
    ``started`` that lost their parent), then exit."""
    _kill({**started, **descendants(os.getpid())})
    print("KILLED", flush=True)
    os._exit(130)


def _kill(processes: dict[int, str]) -> None:
    """SIGKILL each (pid, start time) that still runs; a reused pid has another start time."""
    for pid, start in processes.items():
        if _start_time(pid) == start:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def _stat(pid: int | str) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (Linux), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2:].split()


def _start_time(pid: int) -> str | None:
    fields = _stat(pid)
    return fields[19] if fields is not None and fields[0] != "Z" else None


def descendants(root: int) -> dict[int, str]:
    """Live processes below ``root``, each with its start time (Linux /proc; empty elsewhere)."""
    children: dict[int, list[tuple[int, str]]] = {}
    try:
        entries = [e for e in os.listdir("/proc") if e.isdigit()]
    except OSError:
        return {}
    for entry in entries:
        fields = _stat(entry)
        if fields is not None and fields[0] != "Z":  # a zombie has exited; its parent reaps it
            children.setdefault(int(fields[1]), []).append((int(entry), fields[19]))
    found: dict[int, str] = {}
    todo = [root]
    while todo:
        for pid, start in children.get(todo.pop(), []):
            found[pid] = start
            todo.append(pid)
    return found


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def print_ready(port: int, found: Any, data_dir: Path, metrics_port: int) -> None:
    """Say how to call the service. Secrets are printed only when they are the development
    ones this launcher generated in ``data_dir``, never a configured key or secret."""
    from ingress.wiring.secrets import API_KEYS, API_KEYS_FILE, WEBHOOK_SECRETS, WEBHOOK_SECRETS_FILE

    base = f"http://127.0.0.1:{port}/api/v1/studio"
    key = "<your key>"
    dev_keys_file, dev_secret_file = data_dir / "dev-api-keys.json", data_dir / "dev-webhook-secrets.json"
    if API_KEYS not in found.env and found.env.get(API_KEYS_FILE) == str(dev_keys_file):
        key = next(iter(json.loads(dev_keys_file.read_text())))
    print(f"METRICS http://127.0.0.1:{metrics_port}/metrics", flush=True)  # before READY: parsers stop there
    print(f"READY {base}", flush=True)
    print("Studio API is up (tiny random-weight models: images are noise).")
    if key != "<your key>":
        print(f"Development API key (tenant dev): {key}")
    if WEBHOOK_SECRETS not in found.env and found.env.get(WEBHOOK_SECRETS_FILE) == str(dev_secret_file):
        print(f"Development webhook signing secret (tenant dev): {json.loads(dev_secret_file.read_text()).get('dev')}")
    print(f"OpenAPI docs: http://127.0.0.1:{port}/docs")
    print("Try:")
    print(
        f"  curl -s {base}/getTextToImage -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' "
        "-d '{\"app_id\": \"ap-sd15-txt2img\", \"prompt\": \"a lighthouse at dusk\", \"num_inference_steps\": 4, "
        "\"seed\": 42}'",
        flush=True,
    )
    print(
        f"  curl -sN {base}/streamChat -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' "
        "-d '{\"llm\": \"Local\", \"history\": [{\"role\": \"user\", \"content\": \"hello\"}], \"max_tokens\": 16}'"
    )
    print("  (the Local chat model and the piper voice are tiny random ones too: gibberish and beeps; set "
          "STUDIO_<VENDOR>_API_KEY for OpenAI, ClaudeAI, MistralAI, GeminiAI, Tavily, ElevenLabs)")
    print(f"Health: curl -s {base}/get-status")
    print("Stop with Ctrl-C (a second Ctrl-C kills at once).", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ingress.wiring.local", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("up", help="start Ray, deploy serve_config.yaml, serve until Ctrl-C")
    run.add_argument("--config", type=Path, default=ROOT / "serve_config.yaml")
    run.add_argument("--port", type=int, default=8000)
    run.add_argument("--models-dir", type=Path, default=ROOT / ".models")
    run.add_argument("--data-dir", type=Path, default=ROOT / ".data")
    run.add_argument("--no-tiny", dest="tiny", action="store_false", help="do not write the tiny models")
    run.add_argument("--metrics-port", type=int, default=int(os.environ.get("STUDIO_METRICS_PORT") or 0),
                     help="Prometheus endpoint of the node, on 127.0.0.1 (default: $STUDIO_METRICS_PORT, else a free port)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    up(args.config, args.port, args.models_dir.resolve(), args.data_dir.resolve(), args.tiny, metrics_port=args.metrics_port)
    # Ray is down. A redeploy thread cut short may still hold Ray's locks: exit without
    # waiting on it or on Ray's atexit hook (ray.shutdown() already ran).
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(0)


if __name__ == "__main__":
    main()
