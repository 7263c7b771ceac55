"""Checks that depend on the loaded model, run in the ingress before a job is dispatched
or stored, so that an async submit refuses with a 422 what the family would refuse: the
scheduler and its options, ``clip_skip`` against the text encoder's depth, and
``strength × num_inference_steps``.

The facts come from each family deployment's ``info()`` (plain JSON, see
``deployments.schedulers.scheduler_capabilities``); the checks are the family's own
functions, so both say the same words, and the ingress never imports diffusers. Facts
are fetched in the background, retried with backoff, refreshed every
``refresh_seconds``, and used only when they have the expected shape. A synchronous
call never waits for them (its family checks the job anyway); an async submit waits at
most ``wait_seconds`` for a deployment the ingress has not heard from yet. A fact that
is missing or malformed means: no pre-check; the family still refuses the job.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from deployments.errors import InvalidJobError
from deployments.job_rules import check_clip_skip, check_strength
from deployments.pipelines.lora import LoraLibrary
from deployments.pipelines.vae import VaeLibrary
from deployments.schedulers import check_scheduler_options
from deployments.types import ImageJob
from ingress.contract.errors import ValidationFailed

log = logging.getLogger(__name__)


def _well_formed(facts: Any) -> bool:
    if not isinstance(facts, dict):
        return False
    caps, default, layers = facts.get("schedulers"), facts.get("default_scheduler"), facts.get("text_encoder_layers")
    return (
        isinstance(caps, dict)
        and all(isinstance(v, dict) and isinstance(v.get("usable"), bool) for v in caps.values())
        and isinstance(default, str)
        and isinstance(layers, int)
    )


class ModelFacts:
    """``info()`` of each family deployment, kept fresh in the background."""

    def __init__(self, handles: dict[str, Any], wait_seconds: float = 3.0, refresh_seconds: float = 60.0):
        self._handles = handles
        self._wait = wait_seconds
        self._refresh = refresh_seconds
        self._facts: dict[str, tuple[float, dict[str, Any]]] = {}  # deployment -> (monotonic fetched, facts)
        self._ready: dict[str, asyncio.Event] = {}
        self._fetchers: dict[str, asyncio.Task] = {}

    def start(self) -> None:
        """Start fetching every deployment's facts (idempotent; needs a running loop)."""
        for deployment in self._handles:
            task = self._fetchers.get(deployment)
            if task is None or task.done():
                self._ready.setdefault(deployment, asyncio.Event())
                self._fetchers[deployment] = asyncio.get_running_loop().create_task(self._keep(deployment))

    async def get(self, deployment: str, wait: bool = False) -> dict[str, Any] | None:
        """The facts if known; with ``wait``, wait a little for a first answer."""
        self.start()
        if deployment not in self._facts and wait and deployment in self._ready:
            try:
                await asyncio.wait_for(self._ready[deployment].wait(), self._wait)
            except TimeoutError:
                pass
        known = self._facts.get(deployment)
        return known[1] if known is not None else None

    async def _keep(self, deployment: str) -> None:
        delay = 1.0
        while True:
            try:
                facts = await asyncio.wait_for(self._handles[deployment].info.remote(), 30)
                if isinstance(facts, dict) and facts.get("kind") not in (None, "diffusion"):
                    self._ready[deployment].set()  # other kinds' jobs are checked in full at the ingress
                    return
                if _well_formed(facts):
                    self._facts[deployment] = (time.monotonic(), facts)
                    self._ready[deployment].set()
                    delay = 1.0
                    await asyncio.sleep(self._refresh)
                    continue
                log.warning("facts of %s are not in the expected shape; its jobs are checked by it alone", deployment)
                self._facts.pop(deployment, None)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # loading, busy, or gone: try again later
                log.debug("facts of %s not available yet (%s)", deployment, type(exc).__name__)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 60.0)


class _ListedLoras(LoraLibrary):
    """The family's LoRAs as its ``info()`` lists them: the family's own parser and words."""

    def __init__(self, names: list[str]):
        self._listed = sorted(str(n) for n in names)
        self.directory = Path()  # names only: no file is ever opened here

    def names(self) -> list[str]:
        return self._listed


class _ListedVaes(VaeLibrary):
    """The family's VAEs as its ``info()`` lists them: the family's own parser and words."""

    def __init__(self, names: list[str]):
        self._listed = sorted(str(n) for n in names)

    def names(self) -> list[str]:
        return self._listed


def _check_options(job: ImageJob, facts: dict[str, Any]) -> None:
    """The family's option checks (``DiffusionModel.check_options``) on the names it listed."""
    if job.lora_model or job.lora_strength:
        if not facts.get("loras"):
            raise InvalidJobError("lora_model", "this app has no LoRAs; omit lora_model")
        _ListedLoras(facts["loras"]).parse(job.lora_model, job.lora_strength)
    if job.vae:
        if not facts.get("vaes"):
            raise InvalidJobError("vae", "this app has no custom VAEs; omit vae")
        _ListedVaes(facts["vaes"]).parse(job.vae)
    if job.safety_checker and facts.get("safety_checker") is False:
        raise InvalidJobError("safety_checker", "this app has no safety checker; send false")


def check_job(job: ImageJob, facts: dict[str, Any] | None) -> None:
    """Refuse what the family would refuse: a 422 naming the field, in the family's words."""
    try:
        check_strength(job.task, job.strength, job.num_inference_steps)
        if facts is None:
            return
        _check_options(job, facts)
        try:
            if job.scheduler is not None or job.use_karras_sigmas is not None or job.algorithm_type is not None:
                check_scheduler_options(job.scheduler, facts["default_scheduler"], facts["schedulers"],
                                        use_karras_sigmas=job.use_karras_sigmas, algorithm_type=job.algorithm_type)
            check_clip_skip(job.clip_skip, facts["text_encoder_layers"])
        except InvalidJobError:
            raise
        except Exception:  # facts we do not understand: the family decides
            log.warning("model facts could not be applied; leaving the checks to the family", exc_info=True)
    except InvalidJobError as exc:
        raise ValidationFailed(f"{exc.field}: {exc.message}") from None
