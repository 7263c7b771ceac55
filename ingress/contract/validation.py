"""Validation beyond the schema: messages that name the allowed range, and the
rules that depend on the app (its route, GPU types, limits and options)."""

from __future__ import annotations

import json
import typing
from typing import Any

from annotated_types import Ge, Gt, Le, Lt, MaxLen, MinLen, MultipleOf
from pydantic import BaseModel, ValidationError

from deployments.catalog import LOCAL_TTS_NEUTRAL, TASKS
from deployments.errors import InvalidJobError
from ingress.contract.errors import ValidationFailed
from ingress.contract.schemas.generation import GenerationRequest
from ingress.wiring.registry import AppConfig, Registry


def allowed(model: type[BaseModel], name: str) -> str | None:
    """Describe a field's allowed values from its schema, e.g. ``256..1536, multiple of 64``."""
    info = model.model_fields.get(name)
    if info is None:
        return None
    lo = hi = step = None
    min_len = max_len = None
    for meta in info.metadata:
        if isinstance(meta, (Ge, Gt)):
            lo = getattr(meta, "ge", None) if isinstance(meta, Ge) else meta.gt
        elif isinstance(meta, (Le, Lt)):
            hi = getattr(meta, "le", None) if isinstance(meta, Le) else meta.lt
        elif isinstance(meta, MultipleOf):
            step = meta.multiple_of
        elif isinstance(meta, MinLen):
            min_len = meta.min_length
        elif isinstance(meta, MaxLen):
            max_len = meta.max_length
    parts: list[str] = []
    if lo is not None or hi is not None:
        parts.append(f"{lo if lo is not None else ''}..{hi if hi is not None else ''}")
    if step is not None:
        parts.append(f"multiple of {step}")
    if max_len is not None:
        parts.append(f"{min_len or 0}..{max_len} characters")
    choices = _literal_choices(info.annotation)
    if choices:
        parts.append("one of " + ", ".join(map(str, choices)))
    return ", ".join(parts) or None


def _literal_choices(annotation: Any) -> list[Any]:
    if typing.get_origin(annotation) is typing.Literal:
        return list(typing.get_args(annotation))
    for arg in typing.get_args(annotation):
        found = _literal_choices(arg)
        if found:
            return found
    return []


def _field_name(model: type[BaseModel], loc: tuple[Any, ...]) -> str:
    name = str(loc[0]) if loc else "body"
    for field, info in model.model_fields.items():
        alias = info.validation_alias
        if alias is not None and name in getattr(alias, "choices", [alias]):
            return field
    return name


def parse(model: type[BaseModel], body: Any) -> Any:
    """Validate ``body``; on failure raise ``ValidationFailed`` naming each field and its range."""
    if not isinstance(body, dict):
        raise ValidationFailed("body: must be a JSON object")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            field = _field_name(model, err["loc"])
            rng = allowed(model, field)
            got = err.get("input")
            got_text = "" if err["type"] == "missing" else f" (got {_short(got)})"
            rule = f"; allowed: {rng}" if rng else ""
            problems.append(f"{field}: {err['msg']}{got_text}{rule}")
        raise ValidationFailed("; ".join(problems)) from None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


#: Request fields only some tasks accept (``TaskSpec.options``): a true value elsewhere is a 422.
_TASK_OPTIONS = sorted({o for spec in TASKS.values() for o in spec.options})


#: Request fields that carry input images (a task takes the ones its spec lists).
_IMAGE_FIELDS = sorted({i.field for spec in TASKS.values() for i in spec.inputs})


def _given(value: Any) -> bool:
    """A field the client set to something (not left out, false or empty)."""
    return value is not None and value is not False and value != ""


def _no_rules(app: AppConfig, req: Any, problems: list[str]) -> None:
    return None


def _hex_problem(value: str) -> str | None:
    from deployments.pipelines.compositing import parse_hex_color

    try:
        parse_hex_color(value)
    except InvalidJobError as exc:
        return exc.public
    return None


def _matting_rules(app: AppConfig, req: Any, problems: list[str]) -> None:
    """Background Removal: one background at most; colour channels ask for a colour background
    (``bg_color: true`` implied)."""
    if not hasattr(req, "bg_color"):
        return
    colour = _given(getattr(req, "bg_color", None)) or any(
        getattr(req, c, None) is not None for c in ("r_color", "g_color", "b_color"))
    chosen = [name for name, on in (("bg_image", _given(getattr(req, "bg_image", None))), ("bg_color", colour),
                                    ("blur", _given(getattr(req, "blur", None)))) if on]
    if len(chosen) > 1:
        problems.append(f"{', '.join(chosen)}: choose one background (bg_image, bg_color or blur); "
                        "none gives a transparent PNG")
    channels = [name for name in ("r_color", "g_color", "b_color") if getattr(req, name, None) is not None]
    if channels and isinstance(req.bg_color, str):
        problems.append(f"{', '.join(channels)}: a hex bg_color already gives the colour; send one or the other")
    if isinstance(req.bg_color, str):
        if (problem := _hex_problem(req.bg_color)) is not None:
            problems.append(problem)


def _avatar_rules(app: AppConfig, req: Any, problems: list[str]) -> None:
    """Face Avatar: ``bg_color`` is a hex colour."""
    if not hasattr(req, "bg_color"):
        return
    if req.bg_color is True:
        problems.append("bg_color: Face Avatar apps take a hex colour such as #FFFFFF; allowed: #RGB or #RRGGBB")
    elif isinstance(req.bg_color, str) and (problem := _hex_problem(req.bg_color)) is not None:
        problems.append(problem)


def _sd_upscale_rules(app: AppConfig, req: Any, problems: list[str]) -> None:
    if getattr(req, "scale", None) not in (None, 4):
        problems.append(f"scale: app {app.app_id} (Stable Diffusion x4) makes 4x only; allowed: 4")


_TASK_RULES = {"remove_background": _matting_rules, "avatar": _avatar_rules, "sd_upscale": _sd_upscale_rules}


def check_for_app(route: str, req: GenerationRequest, registry: Registry) -> tuple[AppConfig, str]:
    """Apply the app's rules; return the app and the GPU type to run on."""
    app = registry.app(req.app_id)
    if app is None:
        raise ValidationFailed(
            f"app_id: unknown app {req.app_id!r}; allowed: one of {', '.join(registry.app_ids())}"
        )
    problems: list[str] = []
    spec = TASKS[app.task]
    if spec.route != route:
        problems.append(f"app_id: {app.app_id} is a {app.task} app; call {spec.route} instead")
    gpu = req.inference_type or app.default_gpu
    if gpu not in app.inference_types:
        problems.append(
            f"inference_type: app {app.app_id} is not deployed on {gpu}; allowed: one of {', '.join(app.inference_types)}"
        )
    lim = app.limits
    for side in ("height", "width"):
        value = getattr(req, side)
        rng = getattr(lim, side)
        if value is not None and not rng.min <= value <= rng.max:
            problems.append(
                f"{side}: {value} is outside app {app.app_id}'s range; allowed: {int(rng.min)}..{int(rng.max)}, multiple of 64"
            )
    if req.batch > lim.batch_max:
        problems.append(f"batch: {req.batch} exceeds app {app.app_id}'s cap; allowed: 1..{lim.batch_max}")
    if req.num_inference_steps is not None and req.num_inference_steps > lim.steps_max:
        problems.append(
            f"num_inference_steps: {req.num_inference_steps} exceeds app {app.app_id}'s cap; allowed: 1..{lim.steps_max}"
        )
    if req.webhook and not req.celery:
        problems.append("webhook: webhooks are sent for async tasks; send celery: true with it")
    if req.reference_id and not req.celery:
        problems.append("reference_id: only async tasks (celery: true) take a reference_id")
    if req.priority is not None and not req.celery:
        problems.append("priority: only async tasks (celery: true) are queued by priority")
    for field in _TASK_OPTIONS:
        if field not in spec.options and _given(getattr(req, field, None)):
            problems.append(f"{field}: app {app.app_id} ({spec.summary}) does not support it; omit it or send false")
    for field in spec.refuses:
        value = getattr(req, field, None)
        if _given(value) and not (field == "batch" and value == 1):
            allowed_value = "; allowed: 1" if field == "batch" else ""
            problems.append(f"{field}: app {app.app_id} ({spec.summary}) does not take it; omit it{allowed_value}")
    if spec.strength is None and getattr(req, "strength", None) is not None:
        problems.append(f"strength: app {app.app_id} ({spec.summary}) does not take it; omit it")
    if spec.route == route:  # the wrong route's body lacks the task's fields: the route problem says it all
        _TASK_RULES.get(app.task, _no_rules)(app, req, problems)
    if req.safety_checker_type is not None and req.safety_checker is False:
        problems.append("safety_checker_type: it applies only with safety_checker: true (or left out)")
    taken = {i.field for i in spec.inputs}
    for item in spec.inputs:
        if item.required and not getattr(req, item.field, None):
            alias = " (alias file_url)" if item.field == "image" else ""
            problems.append(f"{item.field}: required for {spec.summary} apps{alias}; {item.doc}")
    for field in _IMAGE_FIELDS:
        if field not in taken and getattr(req, field, None):
            problems.append(f"{field}: app {app.app_id} ({spec.summary}) does not take it; omit it")
    if problems:
        raise ValidationFailed("; ".join(problems))
    return app, gpu


def check_speech_app(route: str, req: Any, registry: Registry) -> tuple[AppConfig, str]:
    """A Text To Speech request's app rules; return the app and the GPU type to run on."""
    app = registry.app(req.app_id)
    if app is None:
        raise ValidationFailed(
            f"app_id: unknown app {req.app_id!r}; allowed: one of {', '.join(registry.app_ids())}"
        )
    spec = TASKS[app.task]
    if spec.route != route:
        raise ValidationFailed(f"app_id: {app.app_id} is a {app.task} app; call {spec.route} instead")
    problems: list[str] = []
    gpu = req.inference_type or app.default_gpu
    if gpu not in app.inference_types:
        problems.append(
            f"inference_type: app {app.app_id} is not deployed on {gpu}; allowed: one of {', '.join(app.inference_types)}"
        )
    if req.webhook and not req.celery:
        problems.append("webhook: webhooks are sent for async tasks; send celery: true with it")
    if req.reference_id and not req.celery:
        problems.append("reference_id: only async tasks (celery: true) take a reference_id")
    if getattr(req, "priority", None) is not None and not req.celery:
        problems.append("priority: only async tasks (celery: true) are queued by priority")
    params = req.audio_parameters
    if app.task == "tts" and params is not None:  # what a local voice has no control for (checked again there)
        for field, neutral in LOCAL_TTS_NEUTRAL.items():
            value = getattr(params, field, None)
            if value is not None and value != neutral:
                problems.append(f"audio_parameters.{field}: app {app.app_id} ({spec.summary}) cannot honour it; "
                                f"allowed: null or {json.dumps(neutral)}")
    if problems:
        raise ValidationFailed("; ".join(problems))
    return app, gpu
