"""Serving-overhead benchmark: how much does Ray Serve add around a tiny model?

With the tiny random-weight SD 1.5 pipeline (``deployments.tiny``) and one tiny
job (text2img 256x256, 1 step, batch 1, fixed seed; the same job on every
path), it measures p50 / p99 latency and requests/s of three paths, each at
every ``--concurrency`` level, with a fixed number of requests after a warm-up:

(a) handle  - a direct ``DeploymentHandle`` call to the family deployment
              ``sd15-a10g`` of the running Serve app (a Ray driver in a
              subprocess: ``serve.get_deployment_handle(...).run.remote(job)``).
(b) serve   - the full HTTP path: ``POST /api/v1/studio/getTextToImage`` with a
              Bearer key, through the Serve proxy, the ingress replica and the
              family replica (the real launcher, ``python -m ingress.wiring.local up``).
(c) uvicorn - the same FastAPI app (``create_api(Studio(...))``) served by plain
              uvicorn with the model in process (``InProcessDispatcher``); no Ray.

(b) and (c) are driven by the same load generator: a subprocess with N asyncio
workers speaking minimal keep-alive HTTP/1.1 over loopback (lighter than any
client library, so it steals as little CPU as possible from the server).

Targets (printed with every variant):

* throughput (b)/(c) at concurrency 8 >= 0.5x
* p50 added by (b) over (a) at concurrency 1 <= 5 ms

Ray Serve is measured once per *variant*: a set of ``RAY_SERVE_*`` variables
put in the launcher's environment before ``ray.init`` (so the controller, the
proxy and the replicas all see them). Pick variants with ``--preset`` (see
``PRESETS``) and/or one ad-hoc variant with ``--serve-env KEY=VALUE``.
The plain-uvicorn baseline (c) runs once, before any Ray node is up.

    .venv/bin/python -m bench.overhead --preset default --preset throughput \
        --requests 300 --concurrency 1 8 --out /tmp/overhead.json

Everything is bounded (fixed request counts, timeouts), binds 127.0.0.1 only,
installs nothing, and stops exactly the processes it started.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

KEY = "sk-bench-overhead"
TENANT = "bench"
FAMILY, GPU = "sd15", "a10g"
DEPLOYMENT = f"{FAMILY}-{GPU}"
APP_NAME = "studio"
PATH = "/api/v1/studio/getTextToImage"
# The tiny job: 256x256 (the contract's minimum), one step, one image.
JOB = {"height": 256, "width": 256, "num_inference_steps": 1, "seed": 42, "prompt": "a lighthouse at dusk"}
BODY = {"app_id": "ap-sd15-txt2img", "inference_type": GPU, **JOB}

PRESETS: dict[str, dict[str, str]] = {
    # Ray Serve as shipped (the launcher turns throughput mode on unless told not to).
    "default": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "0"},
    # Ray's bundle: gRPC between proxy and replicas, direct ingress, GC freeze,
    # buffered request-path logs, user code and router on the replica's loop.
    "throughput": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"},
    # The bundle plus HAProxy in front of the direct-ingress replicas.
    # NOTE: HAProxy forces the replicas' direct-ingress HTTP ports onto all
    # interfaces (constants.py: DEFAULT_HTTP_HOST = get_all_interfaces_ip()).
    "haproxy": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ENABLE_HA_PROXY": "1"},
    # Single knobs, to see which part of the bundle helps.
    "no-thread": {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0"},
    "no-router-loop": {"RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0"},
    "no-thread-no-router-loop": {
        "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
        "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
    },
    "log-buffer": {"RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1000"},
    "direct-ingress": {"RAY_SERVE_ENABLE_DIRECT_INGRESS": "1"},
    "grpc": {"RAY_SERVE_USE_GRPC_BY_DEFAULT": "1"},
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def summarize(latencies: list[float], wall: float, errors: int) -> dict[str, Any]:
    lat = sorted(latencies)
    n = len(lat)

    def pct(p: float) -> float:
        if not lat:
            return float("nan")
        return lat[min(n - 1, max(0, math.ceil(p / 100 * n) - 1))] * 1000  # nearest rank

    return {
        "requests": n,
        "errors": errors,
        "seconds": round(wall, 3),
        "rps": round(n / wall, 2) if wall > 0 else 0.0,
        "p50_ms": round(pct(50), 2),
        "p99_ms": round(pct(99), 2),
        "mean_ms": round(statistics.fmean(lat) * 1000, 2) if lat else float("nan"),
    }


async def drive(call, requests: int, concurrency: int, warmup: int) -> dict[str, Any]:
    """Run ``warmup`` then ``requests`` calls of ``call()`` with ``concurrency`` workers."""

    async def run(total: int, record: list[float] | None) -> int:
        remaining = [total]
        errors = [0]

        async def worker():
            while remaining[0] > 0:
                remaining[0] -= 1
                t0 = time.perf_counter()
                ok = await call()
                dt = time.perf_counter() - t0
                if not ok:
                    errors[0] += 1
                elif record is not None:
                    record.append(dt)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return errors[0]

    await run(max(warmup, concurrency), None)
    latencies: list[float] = []
    t0 = time.perf_counter()
    errors = await run(requests, latencies)
    return summarize(latencies, time.perf_counter() - t0, errors)


# --- load generator for (b) and (c): minimal keep-alive HTTP/1.1 ------------------
class Conn:
    def __init__(self, host: str, port: int, request: bytes):
        self.host, self.port, self.request = host, port, request
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def call(self) -> bool:
        try:
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            self.writer.write(self.request)
            head = await self.reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    k, v = line.split(":", 1)
                    headers[k.strip().lower()] = v.strip()
            if "content-length" in headers:
                await self.reader.readexactly(int(headers["content-length"]))
            elif headers.get("transfer-encoding", "").lower() == "chunked":
                while True:
                    size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                    await self.reader.readexactly(size + 2)
                    if size == 0:
                        break
            if headers.get("connection", "").lower() == "close":
                self.close()
            return status == 200
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            self.close()
            return False

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def http_request(port: int) -> bytes:
    body = json.dumps(BODY).encode()
    return (
        f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def http_load(port: int, requests: int, concurrency: int, warmup: int) -> dict[str, Any]:
    return await raw_load(port, http_request(port), requests, concurrency, warmup)


async def raw_load(port: int, request: bytes, requests: int, concurrency: int, warmup: int) -> dict[str, Any]:
    """Send the raw HTTP/1.1 ``request`` over ``concurrency`` keep-alive connections."""
    conns = [Conn("127.0.0.1", port, request) for _ in range(concurrency)]
    free = asyncio.Queue()
    for c in conns:
        free.put_nowait(c)

    async def call() -> bool:
        conn = await free.get()
        try:
            return await conn.call()
        finally:
            free.put_nowait(conn)

    try:
        return await drive(call, requests, concurrency, warmup)
    finally:
        for c in conns:
            c.close()


# --- (a): a Ray driver calling the family deployment's handle -----------------------
async def handle_load(address: str, requests: int, concurrency: int, warmup: int) -> dict[str, Any]:
    # As in ingress.wiring.local: keep Ray on loopback (otherwise it rewrites 127.0.0.1
    # in the address to the machine's routable IP, where the GCS does not listen).
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    # The launcher's ray.init() turns on Ray's token auth for the new local node
    # (token in Ray's default place); a driver joining it must use token mode too.
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    import ray
    from ray import serve

    from deployments.types import ImageJob

    ray.init(address=address, _node_ip_address="127.0.0.1", logging_level="ERROR", log_to_driver=False)
    try:
        handle = serve.get_deployment_handle(DEPLOYMENT, app_name=APP_NAME)
        fields = {k: v for k, v in JOB.items()}

        async def call() -> bool:
            job = ImageJob(task="text2img", tenant=TENANT, request_id=uuid.uuid4().hex, **fields)
            try:
                await handle.run.remote(job)
                return True
            except Exception:
                return False

        return await drive(call, requests, concurrency, warmup)
    finally:
        ray.shutdown()


# --- (c): the FastAPI app on plain uvicorn, model in process ------------------------
def serve_uvicorn(port: int, config: Path, models_dir: Path, data_dir: Path) -> None:
    import uvicorn

    from deployments.families.diffusion import DiffusionFamily
    from deployments.tiny import make_tiny_models
    from ingress.contract.api import Studio, create_api
    from ingress.contract.auth import KeyRing
    from ingress.dispatch import InProcessDispatcher
    from ingress.wiring.local import load_app_config
    from ingress.wiring.registry import Registry, ServiceConfig
    from ingress.wiring.settings import IngressSettings
    from storage.factory import open_store
    from storage.settings import StorageSettings

    make_tiny_models(models_dir)
    app_cfg = load_app_config(config, APP_NAME)
    args = dict(app_cfg["args"], models_dir=str(models_dir))
    service = ServiceConfig.model_validate(args)
    storage = StorageSettings()
    store = open_store(storage)
    family_cfg = service.families[FAMILY]
    family = DiffusionFamily(
        family_cfg.model.resolve(service.models_path()),
        revision=family_cfg.model.revision,
        dtype=family_cfg.model.dtype,
        family=FAMILY,
        gpu=GPU,
        store=store,
    )
    studio = Studio(
        registry=Registry(service),
        keys=KeyRing({KEY: TENANT}),
        dispatcher=InProcessDispatcher({DEPLOYMENT: family}),
        store=store,
        settings=IngressSettings(),
        url_expiry_seconds=storage.url_expiry_seconds,
    )
    app = create_api(studio)

    @app.on_event("startup")
    async def _ready():  # noqa: ANN202
        print("READY", flush=True)

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


# --- orchestration ---------------------------------------------------------------------
def run_child(args: list[str], timeout: float) -> dict[str, Any]:
    """Run a worker subcommand of this module; it prints one JSON line."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.overhead", *args],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise RuntimeError(f"worker {args[0]} timed out after {timeout:.0f}s") from None
    if proc.returncode != 0:
        raise RuntimeError(f"worker {args[0]} failed ({proc.returncode}):\n{err[-3000:]}")
    return json.loads(out.strip().splitlines()[-1])


def scenarios(kind: str, target: str, opts, extra_timeout: float = 240) -> dict[str, Any]:
    results = {}
    for c in opts.concurrency:
        res = run_child(
            [kind, target, "--requests", str(opts.requests), "--concurrency", str(c), "--warmup", str(opts.warmup)],
            timeout=extra_timeout,
        )
        results[str(c)] = res
        log(f"  {kind[1:]:<8} c={c:<3} {res['rps']:8.1f} req/s  p50 {res['p50_ms']:7.1f} ms  "
            f"p99 {res['p99_ms']:7.1f} ms  errors {res['errors']}")
    return results


def baseline(opts, workdir: Path) -> dict[str, Any]:
    port = free_port()
    env = dict(os.environ)
    # What serve_config.yaml's runtime_env gives every replica, plus local storage.
    from ingress.wiring.local import load_app_config

    env.update({k: str(v) for k, v in (load_app_config(opts.config).get("runtime_env", {}).get("env_vars") or {}).items()})
    env.update({
        "STUDIO_STORAGE_LOCAL_ROOT": str(workdir / "data" / "objects"),
        "STUDIO_STORAGE_PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
        "PYTHONUNBUFFERED": "1",
    })
    env = {k: v for k, v in env.items() if k not in ("STUDIO_API_KEYS", "STUDIO_API_KEYS_FILE")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.overhead", "_uvicorn", str(port), "--config", str(opts.config),
         "--models-dir", str(workdir / "models"), "--data-dir", str(workdir / "data")],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        for line in proc.stdout:
            if line.startswith("READY"):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("uvicorn baseline did not start")
        else:
            raise RuntimeError("uvicorn baseline exited before READY")
        log(f"(c) uvicorn baseline on 127.0.0.1:{port}")
        return scenarios("_http", str(port), opts)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def gcs_address(launcher_pid: int) -> str:
    """The GCS address of the Ray node the launcher started (found in its session)."""
    from tests.support.service import session_members

    # Like ray._private.services.find_gcs_addresses, but only within the launcher's
    # session (other Ray nodes may run on this machine): the raylet and the agents
    # carry ``--gcs-address=host:port`` (the GCS itself may show port 0).
    for pid in session_members(launcher_pid):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        for i, a in enumerate(argv):
            if a.startswith(b"--gcs-address=") or a.startswith(b"--gcs_address="):
                return a.split(b"=", 1)[1].decode()
            if a in (b"--gcs-address", b"--gcs_address") and i + 1 < len(argv):
                return argv[i + 1].decode()
    raise RuntimeError("could not find the launcher's gcs_server")


def listening_sockets(pids: list[int]) -> list[str]:
    """TCP listening sockets (addr:port) held by ``pids`` (Linux /proc)."""
    inodes = set()
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                try:
                    target = os.readlink(fd)
                except OSError:
                    continue
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    found = []
    for table, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            f = row.split()
            if f[3] != "0A" or f[9] not in inodes:  # 0A = LISTEN
                continue
            addr_hex, port_hex = f[1].split(":")
            if v6:
                raw = bytes.fromhex(addr_hex)
                raw = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))  # per-word host order
                if raw[:12] == b"\0" * 10 + b"\xff\xff":
                    addr = socket.inet_ntoa(raw[12:])
                else:
                    addr = socket.inet_ntop(socket.AF_INET6, raw)
            else:
                addr = socket.inet_ntoa(bytes.fromhex(addr_hex)[::-1])
            found.append(f"[{addr}]:{int(port_hex, 16)}" if ":" in addr else f"{addr}:{int(port_hex, 16)}")
    return sorted(set(found))


def measure_variant(name: str, env: dict[str, str], opts, workdir: Path) -> dict[str, Any]:
    from tests.support.service import LocalService, session_members

    log(f"[{name}] starting Ray Serve with {env or 'no extra env'}")
    svc = LocalService(workdir, opts.config, keys={KEY: TENANT}, env=env)
    t0 = time.monotonic()
    svc.start()
    result: dict[str, Any] = {"env": env, "startup_s": round(time.monotonic() - t0, 1)}
    try:
        result["listening"] = [s for s in listening_sockets(session_members(svc.proc.pid))]
        exposed = [s for s in result["listening"] if not s.startswith(("127.", "[::1]:"))]
        if exposed:
            log(f"  WARNING: listening beyond loopback: {', '.join(exposed)}")
        result["exposed"] = exposed
        log(f"(a) handle -> {DEPLOYMENT}")
        result["handle"] = scenarios("_handle", gcs_address(svc.proc.pid), opts)
        log(f"(b) HTTP via Serve on 127.0.0.1:{svc.port}")
        result["serve"] = scenarios("_http", str(svc.port), opts)
    finally:
        svc.stop()
    return result


def ratios(variant: dict[str, Any], base: dict[str, Any], opts) -> dict[str, Any]:
    hi, lo = str(max(opts.concurrency)), str(min(opts.concurrency))
    out = {}
    if hi in variant["serve"] and hi in base:
        out[f"rps_b_over_c_c{hi}"] = round(variant["serve"][hi]["rps"] / base[hi]["rps"], 3)
    if lo in variant["serve"] and lo in variant["handle"]:
        out[f"p50_added_b_over_a_c{lo}_ms"] = round(variant["serve"][lo]["p50_ms"] - variant["handle"][lo]["p50_ms"], 2)
    if lo in variant["serve"] and lo in base:
        out[f"p50_added_b_over_c_c{lo}_ms"] = round(variant["serve"][lo]["p50_ms"] - base[lo]["p50_ms"], 2)
    return out


def print_report(report: dict[str, Any], opts) -> None:
    base = report["uvicorn"]
    print(f"\nJob: text2img {JOB['width']}x{JOB['height']}, {JOB['num_inference_steps']} step, batch 1; "
          f"{opts.requests} requests per scenario after {opts.warmup} warm-up\n")
    header = f"{'variant':<26} {'path':<12} {'conc':>4} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}"
    print(header)
    print("-" * len(header))

    def rows(variant: str, path: str, res: dict[str, Any]) -> None:
        for c, r in res.items():
            print(f"{variant:<26} {path:<12} {c:>4} {r['rps']:>8.1f} {r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f} {r['errors']:>6}")

    rows("-", "(c) uvicorn", base)
    for name, v in report["variants"].items():
        if "error" in v:
            print(f"{name:<26} FAILED: {v['error'].splitlines()[0]}")
            continue
        rows(name, "(a) handle", v["handle"])
        rows(name, "(b) serve", v["serve"])
    hi, lo = max(opts.concurrency), min(opts.concurrency)
    print(f"\nRatios (targets: req/s (b)/(c) at c={hi} >= 0.5x; p50 added by (b) over (a) at c={lo} <= 5 ms)")
    print(f"{'variant':<26} {'(b)/(c) req/s':>14} {'p50 (b)-(a)':>12} {'p50 (b)-(c)':>12}  verdict   exposed")
    for name, v in report["variants"].items():
        if "error" in v:
            continue
        r = v["ratios"]
        rps = r.get(f"rps_b_over_c_c{hi}", float("nan"))
        add = r.get(f"p50_added_b_over_a_c{lo}_ms", float("nan"))
        addc = r.get(f"p50_added_b_over_c_c{lo}_ms", float("nan"))
        # (a) slower than (b) means the handle run was disturbed (noise, CPU contention): no verdict.
        verdict = "check" if add < 0 else ("PASS" if rps >= 0.5 and add <= 5 else "miss")
        print(f"{name:<26} {rps:>13.2f}x {add:>9.1f} ms {addc:>9.1f} ms  {verdict:<8}  "
              f"{', '.join(v.get('exposed') or []) or '-'}")


def parse_env(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--serve-env wants KEY=VALUE, got {pair!r}")
        env[key] = value
    return env


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("_http", "_handle"):
        p = argparse.ArgumentParser()
        p.add_argument("kind")
        p.add_argument("target")
        p.add_argument("--requests", type=int, required=True)
        p.add_argument("--concurrency", type=int, required=True)
        p.add_argument("--warmup", type=int, required=True)
        a = p.parse_args(argv)
        if a.kind == "_http":
            try:
                import uvloop

                uvloop.install()
            except ImportError:
                pass
            res = asyncio.run(http_load(int(a.target), a.requests, a.concurrency, a.warmup))
        else:
            res = asyncio.run(handle_load(a.target, a.requests, a.concurrency, a.warmup))
        print(json.dumps(res), flush=True)
        return 0
    if argv and argv[0] == "_uvicorn":
        p = argparse.ArgumentParser()
        p.add_argument("kind")
        p.add_argument("port", type=int)
        p.add_argument("--config", type=Path, required=True)
        p.add_argument("--models-dir", type=Path, required=True)
        p.add_argument("--data-dir", type=Path, required=True)
        a = p.parse_args(argv)
        serve_uvicorn(a.port, a.config, a.models_dir, a.data_dir)
        return 0

    parser = argparse.ArgumentParser(prog="python -m bench.overhead", description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300, help="measured requests per scenario (default 300)")
    parser.add_argument("--warmup", type=int, default=30, help="warm-up requests per scenario (default 30)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8], help="concurrency levels (default 1 8)")
    parser.add_argument("--preset", action="append", choices=sorted(PRESETS),
                        help="Serve env variant to measure; repeatable (default: default, throughput)")
    parser.add_argument("--serve-env", action="append", default=[], metavar="KEY=VALUE",
                        help="env of one extra variant named 'custom'; repeatable")
    parser.add_argument("--config", type=Path, default=ROOT / "serve_config.yaml")
    parser.add_argument("--out", type=Path, help="also write all results as JSON here")
    opts = parser.parse_args(argv)
    opts.config = opts.config.resolve()

    variants = {name: PRESETS[name] for name in (opts.preset or ([] if opts.serve_env else ["default", "throughput"]))}
    if opts.serve_env:
        variants["custom"] = parse_env(opts.serve_env)
    # Our own RAY_SERVE_* vars would leak into every variant through the launcher.
    leaked = sorted(k for k in os.environ if k.startswith("RAY_SERVE_"))
    if leaked:
        raise SystemExit(f"unset {', '.join(leaked)} first: variants set RAY_SERVE_* themselves")

    report: dict[str, Any] = {"job": JOB, "requests": opts.requests, "warmup": opts.warmup,
                              "concurrency": opts.concurrency, "variants": {}}
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp:
        workdir = Path(tmp)
        from deployments.tiny import make_tiny_models

        make_tiny_models(workdir / "models")
        report["uvicorn"] = baseline(opts, workdir)
        for name, env in variants.items():
            try:
                v = measure_variant(name, env, opts, workdir)
                v["ratios"] = ratios(v, report["uvicorn"], opts)
                log(f"[{name}] {v['ratios']}")
            except Exception as exc:  # keep the other variants
                log(f"[{name}] FAILED: {exc}")
                v = {"env": env, "error": str(exc)}
            report["variants"][name] = v
    print_report(report, opts)
    if opts.out:
        opts.out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
