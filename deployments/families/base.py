"""What every family deployment shares, so a family module holds its model code and little else.

:class:`FamilyBase` owns the object store, the sync call (``run``), async task
attempts under a lease (``run_task``: claim, load the job captured at submit,
progress, cancellation, publish or fail), storing outputs, metrics, the
stall-aware health check and ``info()``. A family subclass sets ``kind`` and
implements three hooks:

* ``prepare(job)`` — optional, async, under the replica's job lock before the model
  runs (e.g. fetching a multiplexed LoRA stack); its result goes to ``produce``;
* ``produce(job, on_step, prepared)`` — blocking model code (run in a thread, one job
  at a time per replica): returns whatever ``package`` needs;
* ``finish(job, produced, prepared)`` — optional, async, after the model lock is released
  (e.g. post-processing through another family's deployment): returns what ``package`` gets;
* ``package(job, produced)`` — blocking, outside the model lock: the output files
  as :class:`Packaged` (bytes, content type, per-output meta) and the result meta;
* ``facts()`` / ``loaded()`` — what ``info()`` and the health check add.

Errors: a job this model cannot do raises ``InvalidJobError``; a failure of the
model on a valid job becomes a ``ModelError`` logged under an incident id; another
family this one calls (``call_helper``) being busy or gone is ``HelperUnavailable``
(a 503 for a sync call, a later attempt for a task). All carry their envelope type;
the ingress maps them once (``ingress.dispatch``).

Abandoned work stops: ``produce`` runs in a thread that no cancellation can leave
behind (:func:`run_to_end`). When Serve cancels ``run`` (the client disconnected,
or the ingress gave up at its sync timeout and called ``response.cancel()``), the
job's :class:`StopSignal` is set, the thread raises ``TaskStopped("abandoned")`` at
its next step (every ``on_step`` call: a denoising step, an upscaler tile, a
sentence), and ``run`` returns — re-raising the cancellation — only once the
thread has ended. Serve counts a request in ``max_ongoing_requests`` (and in the
autoscaler's ongoing requests) until the replica method returns, so the slot stays
busy exactly as long as the model is; the job lock is held as long, so the next job
starts when the model is free. ``run_task`` does the same when its call is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import secrets
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from deployments.errors import (
    HelperUnavailable,
    InvalidJobError,
    JobError,
    ModelError,
    TaskStopped,
    VendorError,
    new_incident,
)
from deployments.metrics import STUDIO_METRICS
from deployments.types import Job, Output, Result, TaskRef, job_from_payload, payload_images

if TYPE_CHECKING:
    from storage.base import ObjectStore
    from storage.settings import StorageSettings

logger = logging.getLogger("deployments.families")

OnStep = Callable[[int, int], None]
J = TypeVar("J", bound=Job)
T = TypeVar("T")
ABANDONED = "abandoned"  # TaskStopped's reason when the job's caller went away
STALL_SECONDS = 300.0  # a job without a finished step for this long fails the health check
HELPER_SECONDS = 120.0  # how long a call to another family's deployment may take


@dataclass
class Packaged:
    """One output file before it is stored."""

    data: bytes
    content_type: str
    ext: str
    meta: dict[str, Any] = field(default_factory=dict)


def short_error(exc: BaseException, limit: int = 200) -> str:
    text = f"{type(exc).__name__}: {exc}".splitlines()[0] if str(exc) else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def model_error(exc: BaseException, job: Job) -> ModelError:
    """Log the failure with a new incident id; the error carries only the id to clients."""
    incident = new_incident()
    logger.error("job failed (incident %s)", incident, exc_info=exc,
                 extra={"task": job.task, "studio_task_id": job.request_id, "incident": incident})
    return ModelError(short_error(exc), incident)


def replica_id() -> str:
    """This Serve replica's id (a random id outside Serve)."""
    try:
        from ray import serve

        return serve.get_replica_context().replica_id.unique_id
    except Exception:
        return "local-" + secrets.token_hex(4)


class StopSignal(threading.Event):
    """Set by the event loop when a job's caller went away (its request was cancelled); the
    job's thread checks it at every step and stops there. ``steps`` counts the steps it finished."""

    def __init__(self) -> None:
        super().__init__()
        self.steps = 0


async def run_to_end(fn: Callable[..., T], *args: Any, stop: threading.Event | None = None) -> T:
    """``fn(*args)`` in a worker thread, awaited so that cancelling the caller never leaves the
    thread running on its own: on cancellation ``stop`` is set (model code stops at its next
    step), the wait goes on, shielded, until the thread has returned, and only then does the
    cancellation propagate.

    Why: Serve cancels a request by cancelling the task that runs the replica method (client
    disconnect, or the caller's ``response.cancel()``), and counts it against
    ``max_ongoing_requests`` until that method returns (``_start_request`` in
    ``ray/serve/_private/replica.py``). ``asyncio.to_thread`` alone returns at once on
    cancellation while its thread keeps the CPU/GPU busy, so the slot would look free.

    Serve holds the slot through this wait when it runs user code on the replica's own event
    loop (``RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD=0``, implied by
    ``RAY_SERVE_THROUGHPUT_OPTIMIZED=1``, which the launcher and the cluster set): the
    cancellation is thrown into this coroutine and the method returns only after it. With
    user code on a separate loop, Serve awaits it through ``asyncio.wrap_future``, whose
    cancellation returns at once, so the slot is released early; the job lock still keeps
    the next job from starting before the thread has ended.
    """
    work = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        if stop is not None:
            stop.set()
        while not work.done():
            with contextlib.suppress(asyncio.CancelledError, Exception):  # cancelled again, or the thread's own end
                await asyncio.shield(work)
        if not work.cancelled():
            work.exception()  # retrieved: its outcome (often the stop itself) is not the caller's
        raise


def helper_unavailable(exc: BaseException) -> str | None:
    """Why a call to another family deployment failed for a reason that may pass — Serve refused
    it (queue full, deployment unavailable) or the replica died or cannot be reached — else None."""
    from ray import exceptions as ray_errors
    from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError

    gone = (ray_errors.RayActorError, ray_errors.WorkerCrashedError, ray_errors.NodeDiedError,
            ray_errors.OutOfMemoryError, ray_errors.LocalRayletDiedError, ReplicaUnavailableError)
    for error in (exc, getattr(exc, "cause", None)):  # as raised, or wrapped in Ray's RayTaskError
        if isinstance(error, BackPressureError):
            return "busy"
        if isinstance(error, DeploymentUnavailableError):
            return "unavailable"
        if isinstance(error, gone):
            return "its replica stopped or cannot be reached"
    return None


class StepClock:
    """When the job under way last finished a step: the health check's view of progress."""

    def __init__(self) -> None:
        self.busy_since: float | None = None
        self.last_step = 0.0

    def begin(self) -> None:
        self.last_step = time.monotonic()  # first: a health check in between must see it fresh
        self.busy_since = self.last_step

    def step(self) -> None:
        self.last_step = time.monotonic()

    def end(self) -> None:
        self.busy_since = None

    def stalled_for(self) -> float:
        """Seconds the job under way has gone without finishing a step (0 when idle)."""
        return 0.0 if self.busy_since is None else time.monotonic() - self.last_step


class FamilyBase(ABC, Generic[J]):
    """Serve deployment base for one model family on one GPU type.

    Plain class on purpose: ``ingress.wiring.builder`` applies ``serve.deployment``
    with options from config. ``store`` lets tests inject an object store.
    """

    kind: ClassVar[str] = ""
    output_folder: ClassVar[str] = "images"

    def __init__(
        self,
        *,
        family: str = "",
        gpu: str = "",
        storage: StorageSettings | None = None,
        store: ObjectStore | None = None,
        stall_seconds: float = STALL_SECONDS,
    ):
        from deployments.replica import prepare_replica

        prepare_replica()
        self.family = family
        self.gpu = gpu
        self.stall_seconds = stall_seconds
        if store is None:
            from storage.factory import open_store

            store = open_store(storage, signing=False)  # families store objects; they never sign URLs
        self.store = store
        from storage.tasks import TaskStore

        self.tasks = TaskStore(store)
        self.owner = replica_id()
        self.helpers: dict[str, Any] = {}  # other families' deployment handles, by kind (set by a subclass)
        self.clock = StepClock()
        self._lock = asyncio.Lock()  # one job at a time on the event loop (waiting costs no thread)
        self._model_lock = threading.RLock()  # and in threads: a cancelled request's thread may still run

    # -- hooks ------------------------------------------------------------
    async def prepare(self, job: J) -> Any:
        """Async work before the model runs, under the job lock (default: none)."""
        return None

    @abstractmethod
    def produce(self, job: J, on_step: OnStep | None, prepared: Any = None) -> Any:
        """Run the model on ``job`` (blocking, under the model lock)."""

    async def finish(self, job: J, produced: Any, prepared: Any = None) -> Any:
        """Async work after the model ran, outside the job lock (default: none)."""
        return produced

    @abstractmethod
    def package(self, job: J, produced: Any) -> tuple[list[Packaged], dict[str, Any]]:
        """Encode what ``produce`` returned: output files and the result's meta."""

    def loaded(self) -> bool:
        """Whether the model is in place (the health check)."""
        return True

    def describe(self, prepared: Any) -> dict[str, str]:
        """How this replica ran a job, beyond its id (e.g. a warm or freshly loaded LoRA stack)."""
        return {}

    def facts(self) -> dict[str, Any]:
        """Kind-specific facts for ``info()`` (plain JSON)."""
        return {}

    async def call_helper(self, kind: str, method: str, *args: Any, timeout: float = HELPER_SECONDS) -> Any:
        """Call ``method`` on the ``kind`` family deployment this one was bound with (e.g. the
        background-removal family's ``mask``). Its job errors (a 422) come back as they were raised;
        a helper that is busy, unavailable, dead or does not answer within ``timeout`` is
        ``HelperUnavailable`` (a 503 with ``Retry-After``; an async task tries again later);
        anything else fails this job as a model error."""
        handle = self.helpers.get(kind)
        if handle is None:
            raise RuntimeError(f"no {kind} family is wired to this deployment")
        response = None
        try:
            response = getattr(handle, method).remote(*args)
            return await asyncio.wait_for(response, timeout)
        except TimeoutError:
            if response is not None:
                response.cancel()
            raise HelperUnavailable(kind, f"no answer within {timeout:g} s") from None
        except Exception as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, JobError):
                raise cause from None
            reason = helper_unavailable(exc)
            if reason is not None:
                logger.warning("the %s family could not take a call: %s (%s)", kind, reason, type(exc).__name__,
                               extra={"helper": kind, "reason": reason})
                raise HelperUnavailable(kind, reason, getattr(exc, "retry_after_s", None)) from exc
            raise

    # -- running a job ----------------------------------------------------
    async def _prepare(self, job: J) -> Any:
        """``prepare`` with failures mapped as the model's own: a job error passes through,
        anything else is a logged ``ModelError`` (not mistaken for an object-store outage)."""
        try:
            return await self.prepare(job)
        except JobError:
            raise
        except Exception as exc:
            raise model_error(exc, job) from exc

    async def _finish(self, job: J, produced: Any, prepared: Any) -> Any:
        """``finish`` with failures mapped as ``_prepare`` maps them."""
        try:
            return await self.finish(job, produced, prepared)
        except JobError:
            raise
        except Exception as exc:
            raise model_error(exc, job) from exc

    def _produce(self, job: J, on_step: OnStep | None = None, prepared: Any = None,
                 stop: StopSignal | None = None) -> Any:
        """``produce`` under the model lock, with the step clock running; any failure
        other than the job's own errors becomes a logged ``ModelError``. Once ``stop`` is set,
        the next step raises ``TaskStopped("abandoned")``."""

        def step(done: int, total: int) -> None:
            self.clock.step()
            if stop is not None:
                stop.steps += 1
                if stop.is_set():
                    raise TaskStopped(ABANDONED)
            if on_step is not None:
                on_step(done, total)

        with self._model_lock:
            if stop is not None and stop.is_set():  # gone before the model started
                raise TaskStopped(ABANDONED)
            self.clock.begin()
            try:
                return self.produce(job, step, prepared)
            except JobError:
                raise
            except Exception as exc:
                raise model_error(exc, job) from exc
            finally:
                self.clock.end()

    def _store(self, job: J, produced: Any) -> tuple[list[Output], dict[str, Any]]:
        from storage.keys import output_key

        files, meta = self.package(job, produced)
        if getattr(job, "original_prompt", None) is not None:  # enhance_prompt: what the model was given
            meta = {**meta, "enhanced_prompt": job.prompt, "original_prompt": job.original_prompt}  # type: ignore[attr-defined]
        outputs = []
        for index, item in enumerate(files):
            key = output_key(job.tenant, job.request_id, index, ext=item.ext, attempt=job.attempt,
                             kind=self.output_folder)
            self.store.put(key, item.data, item.content_type)
            outputs.append(Output(key=key, content_type=item.content_type, meta=item.meta,
                                  data=item.data if job.return_bytes else None))
        return outputs, meta

    async def run(self, job: J) -> Result:
        """Run ``job`` now, store its outputs under the tenant, return where they are."""
        start = time.perf_counter()
        stop = StopSignal()
        try:
            async with self._lock:
                gen_start = time.perf_counter()
                prepared = await self._prepare(job)
                produced = await run_to_end(self._produce, job, None, prepared, stop, stop=stop)
        except asyncio.CancelledError:
            # Serve cancelled the call (client gone, or the caller's timeout): the thread has ended.
            logger.info("job abandoned request_id=%s task=%s stopped=%s steps_done=%d seconds=%.3f",
                        job.request_id, job.task, stop.is_set(), stop.steps, time.perf_counter() - start,
                        extra={"studio_task_id": job.request_id, "tenant": job.tenant, "task": job.task,
                               "outcome": "abandoned", "steps_done": stop.steps,
                               "seconds": round(time.perf_counter() - start, 4)})
            raise
        produced = await self._finish(job, produced, prepared)
        gen_seconds = time.perf_counter() - gen_start
        outputs, meta = await run_to_end(self._store, job, produced)
        run_seconds = time.perf_counter() - start
        STUDIO_METRICS.run(self.family, self.gpu, job.task, gen_seconds)
        logger.info(
            "job done request_id=%s task=%s outputs=%d generation_seconds=%.3f run_seconds=%.3f",
            job.request_id, job.task, len(outputs), gen_seconds, run_seconds,
            extra={"studio_task_id": job.request_id, "tenant": job.tenant, "task": job.task, "outputs": len(outputs),
                   "generation_seconds": round(gen_seconds, 4), "run_seconds": round(run_seconds, 4)},
        )
        return Result(outputs=outputs, meta=meta, run_seconds=run_seconds,
                      served_by={"replica": self.owner, **self.describe(prepared)})

    # -- async tasks ------------------------------------------------------
    async def run_task(self, ref: TaskRef) -> str:
        """Run one attempt of an async task; the outcome goes to the task record.

        Claims the attempt, loads the job captured at submit from the store, runs
        it under a lease, and publishes the outputs (stored under per-attempt keys)
        in the final compare-and-swap. Returns what happened: the status this
        worker wrote, ``"skipped"`` (not ours to run), ``"superseded"``/``"lost"``
        (another attempt owns the task now), or ``"retry"`` (the object store
        failed under us for a reason that may pass: the task is handed back, after
        a backoff, for another attempt; so is a task whose helper family was busy,
        ``HelperUnavailable``). Anything else that fails — the job, or the worker's own
        code — ends the task as FAILURE with its reason, without a retry. A cancelled call
        (the coordinator went away) stops the job at its next step and returns only once its
        thread has ended.
        """
        from deployments.tasks import TaskLease
        from storage.base import is_transient

        lease = TaskLease(self.tasks, ref, self.owner)
        try:
            if not await asyncio.to_thread(lease.claim):
                return "skipped"
        except Exception as exc:
            if not is_transient(exc):
                raise
            logger.warning("task %s: could not claim attempt %d; its dispatch lease decides", ref.task_id,
                           ref.attempt, exc_info=True)
            return "retry"
        lease.start()
        record = lease.record
        assert record is not None  # a won claim holds the record it wrote
        STUDIO_METRICS.queue_wait(record.app_id, self.family, self.gpu, record.tenant,
                                  (record.started_at or time.time()) - record.created_at)
        outcome = "lost"
        try:
            outcome = await self._run_claimed(ref, lease)
            return outcome
        except asyncio.CancelledError:
            lease.stop_reason = lease.stop_reason or "lost"  # the call went away; the thread has already ended
            raise
        except Exception as exc:
            incident = new_incident()
            if is_transient(exc):
                logger.error("task %s attempt %d: the object store failed (incident %s)", ref.task_id, ref.attempt,
                             incident, exc_info=exc)
                await asyncio.to_thread(lease.give_up, f"attempt {ref.attempt} could not reach the object store "
                                                       f"(incident {incident}); retrying")
                outcome = "retry"
                return outcome
            logger.error("task %s attempt %d failed in the worker (incident %s)", ref.task_id, ref.attempt, incident,
                         exc_info=exc)
            await asyncio.to_thread(lease.fail, "InternalError", f"the task failed on its worker (incident {incident})")
            outcome = "FAILURE"
            return outcome
        finally:
            lease.stop()
            ended = {"SUCCESS": "SUCCESS", "FAILURE": "FAILURE", "revoked": "REVOKED"}.get(outcome)
            if ended is not None:
                final = lease.record
                STUDIO_METRICS.task_result(record.app_id, self.family, self.gpu, record.tenant, ended,
                                           final.error if final is not None else None)
                if ended == "SUCCESS" and final is not None:
                    STUDIO_METRICS.images({"app_id": record.app_id, "family": self.family, "gpu": self.gpu,
                                           "tenant": record.tenant}, len(final.output_keys))

    async def _run_claimed(self, ref: TaskRef, lease) -> str:
        job = await asyncio.to_thread(self._load_job, lease.record, ref.attempt)
        if job is None:
            incident = new_incident()
            logger.error("task %s: its payload is missing (incident %s)", ref.task_id, incident)
            await asyncio.to_thread(lease.fail, "InternalError", f"the task's input is gone (incident {incident})")
            return "FAILURE"
        stop = StopSignal()  # set if this call is cancelled; the lease's own stops come through on_step
        try:
            async with self._lock:
                lease.check()
                prepared = await self._prepare(job)
                produced = await run_to_end(self._produce, job, lease.on_step, prepared, stop, stop=stop)
            lease.check()
            produced = await self._finish(job, produced, prepared)
            lease.check()
        except TaskStopped:
            await asyncio.to_thread(lease.revoked)
            return lease.stop_reason or "stopped"
        except HelperUnavailable as exc:  # another family was busy: nothing wrong with the task
            logger.warning("task %s attempt %d: %s; handing it back", ref.task_id, ref.attempt, exc.public)
            await asyncio.to_thread(lease.give_up, f"attempt {ref.attempt}: {exc.public}")
            return "retry"
        except (InvalidJobError, ModelError, VendorError) as exc:
            await asyncio.to_thread(lease.fail, exc.error_type, exc.public)
            return "FAILURE"
        outputs, meta = await asyncio.to_thread(self._store, job, produced)
        if await asyncio.to_thread(lease.succeed, outputs, meta):
            return "SUCCESS"
        current = await asyncio.to_thread(self.tasks.get, ref.tenant, ref.task_id)
        published = set(current.output_keys) if current is not None else set()
        if published & {o.key for o in outputs}:
            return "SUCCESS"  # our write did land: never delete what a record publishes
        await asyncio.to_thread(self._delete, outputs)  # superseded: never visible
        return "superseded"

    def _load_job(self, record, attempt: int) -> J | None:
        """The job stored at submit, with its captured input images, for ``attempt``."""
        from PIL import Image

        from storage.base import ObjectNotFound

        payload = self.tasks.payload(record)
        if payload is None:
            return None
        accepted = set(payload_images(payload["job"].get("job_type")))
        images = {}
        for name, key in (payload.get("inputs") or {}).items():
            if name in accepted:
                try:
                    data = self.store.get(key)
                except ObjectNotFound:
                    return None
                with Image.open(io.BytesIO(data), formats=["PNG"]) as img:
                    images[name] = img.convert("L" if img.mode == "L" else "RGB")
        job = job_from_payload(payload["job"], images)
        job.attempt = attempt
        return job  # type: ignore[return-value]  # the payload was made from this family's job type

    def _delete(self, outputs: list[Output]) -> None:
        for output in outputs:
            self.store.delete(output.key)

    # -- Serve hooks ------------------------------------------------------
    async def check_health(self) -> None:
        """Liveness check for Serve: the model and store are in place, and a job under
        way is making progress (a job hung inside one step holds the model for good;
        failing here makes Serve replace the replica)."""
        if not self.loaded():
            raise RuntimeError(f"{self.kind} model is not loaded")
        if self.store is None:
            raise RuntimeError("object store is not open")
        stalled = self.clock.stalled_for()
        if stalled > self.stall_seconds:
            raise RuntimeError(f"the job under way has finished no step for {stalled:.0f} s")

    def info(self) -> dict[str, Any]:
        """Facts about this replica's model, for the ingress's pre-checks
        (``ingress/model_checks.py``). Plain JSON."""
        return {"family": self.family, "gpu": self.gpu, "kind": self.kind, **self.facts()}
