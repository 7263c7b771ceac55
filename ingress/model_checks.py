"""Checks that depend on the loaded model, run in the ingress before a job is dispatched
or stored, so that an async submit refuses with a 422 exactly what a synchronous call
would: the scheduler and its options against the model's own scheduler config, and
``clip_skip`` against its text encoder's depth.

The facts are asked once of each family deployment (its ``info()``) and kept; the
first request for a deployment waits for them at most ``timeout_seconds`` (a family
still loading, or busy). Without them the request goes on, and the family replica
refuses the job itself (a synchronous 422, or the task's ``FAILURE``/``ValidationError``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from deployments.errors import InvalidJobError
from deployments.schedulers import build_scheduler
from deployments.types import ImageJob
from ingress.errors import ValidationFailed

log = logging.getLogger(__name__)


class ModelFacts:
    """``info()`` of each family deployment, fetched once through its handle."""

    def __init__(self, handles: dict[str, Any], timeout_seconds: float = 3.0):
        self._handles = handles
        self._timeout = timeout_seconds
        self._facts: dict[str, dict[str, Any]] = {}
        self._fetching: dict[str, asyncio.Task] = {}

    async def get(self, deployment: str) -> dict[str, Any] | None:
        if deployment in self._facts or deployment not in self._handles:
            return self._facts.get(deployment)
        task = self._fetching.get(deployment)
        if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
            task = self._fetching[deployment] = asyncio.create_task(self._fetch(deployment))
        try:
            return await asyncio.wait_for(asyncio.shield(task), self._timeout)
        except Exception:  # slow or failing: the family checks the job itself
            return None

    async def _fetch(self, deployment: str) -> dict[str, Any]:
        facts = await self._handles[deployment].info.remote()
        self._facts[deployment] = facts
        return facts


def check_job(job: ImageJob, facts: dict[str, Any] | None) -> None:
    """Refuse what the family would refuse; a 422 naming the field, in the family's words."""
    if job.task in ("img2img", "inpaint") and int(job.num_inference_steps * job.strength) < 1:
        raise ValidationFailed(
            f"strength: strength × num_inference_steps must be at least 1 (got {job.strength:g} × "
            f"{job.num_inference_steps}); raise strength or num_inference_steps"
        )
    if facts is None:
        return
    try:
        if job.scheduler is not None or job.use_karras_sigmas is not None or job.algorithm_type is not None:
            build_scheduler(job.scheduler, facts["scheduler_config"], use_karras_sigmas=job.use_karras_sigmas,
                            algorithm_type=job.algorithm_type)
        layers = facts.get("text_encoder_layers")
        if job.clip_skip is not None and layers is not None and job.clip_skip >= layers:
            raise InvalidJobError(
                "clip_skip", f"this model's text encoder has {layers} layers; allowed: 1..{layers - 1}"
            )
    except InvalidJobError as exc:
        raise ValidationFailed(f"{exc.field}: {exc.message}") from None
