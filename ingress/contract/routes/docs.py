"""What the OpenAPI document says about each route: the statuses it can answer, and
request bodies narrowed to the registry this replica serves.

The handlers read raw bodies (capped while they stream, see :mod:`ingress.contract.body`),
so body schemas are published with ``openapi_extra``; they are built once, by
``create_api``, from the request models and the registry: a route's ``app_id`` is one
of the apps whose task that route serves, and each app's own limits, GPU types and
inputs are a branch of the schema.
"""

from __future__ import annotations

import copy
import json
import typing
from typing import Any

from pydantic import BaseModel

from deployments.catalog import LOCAL_TTS_NEUTRAL, TASK_SCALES, TASKS
from ingress.contract.schemas.envelope import Envelope
from ingress.contract.schemas.generation import Flag
from ingress.wiring.registry import AppConfig
from ingress.wiring.settings import IngressSettings

_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before retrying.",
        "required": True,
        "schema": {"type": "integer", "minimum": 1},
    }
}


def responses(settings: IngressSettings, *codes: int, body_bytes: int | None = None) -> dict[int | str, Any]:
    """The error statuses a route can answer, each documented with the envelope. A route that takes a key
    (401) also answers 429: every such route is under the tenant's limits (``ingress.contract.limits``)."""
    if 401 in codes and 429 not in codes:
        codes = (*codes, 429)
    text = {
        401: "`Unauthorized`: the `Authorization: Bearer <api key>` header is missing, malformed or unknown.",
        404: "`NotFound`: no such task, or it belongs to another tenant.",
        408: f"`RequestTimeout`: the body did not arrive within {settings.body_read_seconds:g} s, or nothing of it"
        f" arrived for {settings.body_idle_seconds:g} s.",
        413: f"`PayloadTooLarge`: the body is larger than this route accepts (at most {body_bytes} bytes).",
        422: "`ValidationError`: `error_data` names each bad field and its allowed values"
        " (also: JSON that is not an object, or nested too deeply); `InputFetchError`: an input image could not be"
        " fetched or decoded; `NoFaceDetected`: a face app's image holds no face.",
        500: "`ModelError` (the model failed on a valid job) or `InternalError`; `error_data` names an incident id.",
        429: "`QuotaExceeded`: your tenant is over a limit (requests in flight or per minute, bodies arriving at once,"
        " unfinished async tasks, images, chat tokens or document pages per minute); retry after `Retry-After`"
        " seconds.",
        503: "`Overloaded`: the service is shedding load; retry after `Retry-After` seconds.",
        504: f"`Timeout`: the synchronous call ran past {settings.sync_timeout_seconds:g} s;"
        " send `celery: true` for long jobs.",
    }
    out: dict[int | str, Any] = {}
    for code in codes:
        doc: dict[str, Any] = {"model": Envelope, "description": text[code]}
        if code in (429, 503):
            doc["headers"] = _RETRY_AFTER
        out[code] = doc
    return out


def json_body(schema: dict[str, Any], required: bool = True) -> dict[str, Any]:
    """``openapi_extra`` publishing ``schema`` as the route's JSON body (an empty body reads as ``{}``:
    a body whose every field is optional is not required)."""
    return {"requestBody": {"required": required, "content": {"application/json": {"schema": schema}}}}


def model_body(model: type[BaseModel], required: bool = True) -> dict[str, Any]:
    return json_body(inline_defs(model.model_json_schema()), required)


#: A field that must be absent, null or empty. (Combinators inside the branches are kept
#: to a minimum: generators expand every ``anyOf`` of the rules between fields.)
_EMPTY: dict[str, Any] = {"type": ["null", "string"], "maxLength": 0}


#: What a flag (:data:`ingress.contract.schemas.generation.Flag`) takes: JSON booleans, and the
#: strings yes/true/1 and no/false/0 (any case, surrounding spaces ignored).
_TRUE = {"type": "string", "pattern": r"^\s*([Yy][Ee][Ss]|[Tt][Rr][Uu][Ee]|1)\s*$"}
_FALSE = {"type": "string", "pattern": r"^\s*([Nn][Oo]|[Ff][Aa][Ll][Ss][Ee]|0)\s*$"}
_FLAG_TRUE: dict[str, Any] = {"anyOf": [{"const": True}, _TRUE]}
_FLAG_FALSE: dict[str, Any] = {"anyOf": [{"const": False}, _FALSE]}


def _flags(model: type[BaseModel]) -> list[str]:
    """The model's fields typed :data:`Flag` (or ``Flag | None``)."""
    marker = typing.get_args(Flag)[1]
    return [name for name, info in model.model_fields.items()
            if marker in info.metadata or Flag in typing.get_args(info.annotation)]


def _fold_nullables(properties: dict[str, Any]) -> None:
    """``anyOf: [X, {type: null}]`` (pydantic's ``X | None``) as ``X`` with ``type: [.., "null"]``:
    the same values, one combinator fewer for generators to expand."""
    for name, prop in properties.items():
        branches = prop.get("anyOf")
        if branches and len(branches) > 2 and _plain_types(branches):  # e.g. boolean | string | null
            rest = {k: v for k, v in prop.items() if k != "anyOf"}
            merged: dict[str, Any] = {"type": [b["type"] for b in branches]}
            for branch in branches:
                merged.update((k, v) for k, v in branch.items() if k != "type")
            properties[name] = {**rest, **merged}
            continue
        if not branches or len(branches) != 2 or branches[1] != {"type": "null"}:
            continue
        first = branches[0]
        if not isinstance(first.get("type"), str) or any(k in first for k in ("anyOf", "oneOf", "allOf", "not")):
            continue
        rest = {k: v for k, v in prop.items() if k != "anyOf"}
        folded = {**first, "type": [first["type"], "null"]}
        if "enum" in folded:
            folded["enum"] = [*folded["enum"], None]
        properties[name] = {**rest, **folded}


def _plain_types(branches: list[dict[str, Any]]) -> bool:
    """Branches that differ only by type (keywords of one type apply to it alone), so a type list says the same."""
    types = [b.get("type") for b in branches]
    keyed = [b for b in branches if set(b) - {"type"}]
    return (all(isinstance(t, str) for t in types) and len(set(types)) == len(types) and len(keyed) <= 1
            and all(set(b) <= {"type", "minLength", "maxLength", "pattern"} for b in branches))


def _publish_flags(model: type[BaseModel], properties: dict[str, Any]) -> None:
    for name in _flags(model):
        prop = properties[name]
        flag = {"anyOf": [{"type": "boolean"}, _TRUE, _FALSE]}
        if "anyOf" in prop:  # Flag | None
            prop["anyOf"] = [flag if branch == {"type": "boolean"} else branch for branch in prop["anyOf"]]
        else:
            prop.pop("type", None)
            prop.update(flag)


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` or null, without a combinator (type keywords ignore other types)."""
    if "enum" in schema:
        return {"enum": [*schema["enum"], None]}
    return {**schema, "type": [schema["type"], "null"]}


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def _app_rules(app: AppConfig, properties: dict[str, Any]) -> dict[str, Any]:
    """What one app accepts beyond the route's common fields (the rules of
    :func:`ingress.contract.validation.check_for_app` that the registry decides)."""
    spec = TASKS[app.task]
    lim = app.limits
    props: dict[str, Any] = {
        "inference_type": _nullable({"enum": list(app.inference_types)}),
        "batch": {"type": "integer", "minimum": 1, "maximum": lim.batch_max},
        "num_inference_steps": _nullable({"type": "integer", "minimum": 1, "maximum": lim.steps_max}),
    }
    for side in ("height", "width"):
        rng = getattr(lim, side)
        props[side] = _nullable(
            {"type": "integer", "minimum": _number(rng.min), "maximum": _number(rng.max), "multipleOf": 64}
        )
    taken = {i.field: i for i in spec.inputs}
    required = ["app_id"]
    for field in sorted({i.field for s in TASKS.values() for i in s.inputs} & set(properties)):
        item = taken.get(field)
        if item is not None and item.required:
            props[field] = {"type": "string", "minLength": 1}
            required.append(field)
        elif item is None:  # not this app's input: absent, null or empty
            props[field] = _EMPTY
    for option in sorted({o for s in TASKS.values() for o in s.options} & set(properties)):
        if option not in spec.options:
            props[option] = _absent(option, properties[option])
    for field in spec.refuses:
        if field in properties:
            props[field] = _absent(field, properties[field])
    if spec.strength is None and "strength" in properties:
        props["strength"] = {"type": "null"}
    if app.task in TASK_SCALES and "scale" in properties:
        props["scale"] = {"enum": [*TASK_SCALES[app.task], None]}
    return {"properties": props, "required": required}


def _absent(name: str, prop: dict[str, Any]) -> dict[str, Any]:
    """What a field an app does not take may be: left out, null, false or empty (batch: 1)."""
    if name == "batch":
        return {"type": "integer", "minimum": 1, "maximum": 1}
    text = json.dumps(prop)
    if '"boolean"' in text:  # no combinator here: generators expand every anyOf of every branch
        return {"enum": [False, None]}
    if '"string"' in text:
        return _EMPTY
    return {"type": "null"}


def _app_branches(apps: list[AppConfig], properties: dict[str, Any]) -> list[dict[str, Any]]:
    """One branch per distinct set of rules, naming the apps that share it (fewer branches
    keep the schema readable, and small enough for generators that expand it)."""
    groups: dict[str, tuple[dict[str, Any], list[AppConfig]]] = {}
    for app in apps:
        rules = _app_rules(app, properties)
        groups.setdefault(json.dumps(rules, sort_keys=True), (rules, []))[1].append(app)
    branches = []
    for rules, members in groups.values():
        ids = [a.app_id for a in members]
        branches.append({
            "title": ", ".join(ids),
            "description": "; ".join(f"{a.name} ({TASKS[a.task].summary})" for a in members),
            "properties": {"app_id": {"enum": ids}, **rules["properties"]},
            "required": rules["required"],
        })
    return branches


#: Fields that only an async task takes (``celery: true``): absent, null or empty otherwise.
_ASYNC_ONLY = ("webhook", "reference_id", "priority")


def generation_body(model: type[BaseModel], apps: list[AppConfig], async_tasks: bool = True,
                    enhance: bool = True) -> dict[str, Any]:
    """The request schema of a generation route serving ``apps``: ``app_id`` one of
    theirs, each app's rules a ``oneOf`` branch (apps with the same rules share one),
    and the rules between fields.
    ``async_tasks`` False: this deployment refuses ``celery: true``; ``enhance`` False: it has no
    prompt model, and refuses ``enhance_prompt: true``."""
    schema = copy.deepcopy(model.model_json_schema())
    properties = schema["properties"]
    _publish_flags(model, properties)
    _fold_nullables(properties)
    if not enhance and "enhance_prompt" in properties:
        properties["enhance_prompt"] = {"anyOf": [{"enum": [False, None]}, _FALSE],
                                        "description": "No prompt model is configured on this deployment: false only."}
    if not async_tasks:
        properties["celery"] = {**properties["celery"], **_FLAG_FALSE,
                                "description": "Async tasks are not enabled on this deployment: false only."}
    properties["app_id"] = {
        **properties["app_id"], "enum": [a.app_id for a in apps],
        "description": "Which app to run (`GET apps` describes each); its branch below says what it accepts.",
    }
    rules: list[dict[str, Any]] = [{"oneOf": _app_branches(apps, properties)}]
    # Async-only fields are empty, or celery is true (one rule for both keeps the schema small
    # enough for generators that distribute allOf over anyOf).
    async_only = {"properties": {f: {"type": "null"} if f == "priority" else _EMPTY
                                 for f in _ASYNC_ONLY if f in properties}}
    if async_only["properties"]:
        celery = {"required": ["celery"], "properties": {"celery": _FLAG_TRUE}}
        rules.append({"anyOf": [async_only, celery]} if async_tasks else async_only)
    if "safety_checker_type" in properties:
        rules.append({"anyOf": [
            {"properties": {"safety_checker_type": {"type": "null"}}},
            {"properties": {"safety_checker": {"anyOf": [{"enum": [True, None]}, _TRUE]}}},
        ]})
    if "blur" in properties:  # Background Removal: one background at most (bg_image, a colour, blur)
        no_image = {"bg_image": _EMPTY}
        no_colour = {"bg_color": {"enum": [False, None]}, **{c: {"type": "null"} for c in _CHANNELS}}
        no_blur = {"blur": {"enum": [False, None]}}
        rules.append({"anyOf": [{"properties": {**no_image, **no_blur}}, {"properties": {**no_colour, **no_image}},
                                {"properties": {**no_colour, **no_blur}}]})
    schema["allOf"] = rules
    return schema


_CHANNELS = ("r_color", "g_color", "b_color")


def speech_body(model: type[BaseModel], apps: list[AppConfig], async_tasks: bool = True) -> dict[str, Any]:
    """The request schema of ``getTextToSpeech``: ``app_id`` one of its apps, each app's GPU types
    and the voice settings a local voice takes (``LOCAL_TTS_NEUTRAL``) in its branch, the async rule."""
    schema = inline_defs(copy.deepcopy(model.model_json_schema()))
    properties = schema["properties"]
    _publish_flags(model, properties)
    _fold_nullables(properties)
    properties["generate_audio"] = {**_FLAG_TRUE, "description": properties["generate_audio"].get("description", "")}
    if not async_tasks:
        properties["celery"] = {**properties["celery"], **_FLAG_FALSE,
                                "description": "Async tasks are not enabled on this deployment: false only."}
    properties["app_id"] = {**properties["app_id"], "enum": [a.app_id for a in apps],
                            "description": "Which Text To Speech app (`GET apps`); its branch says what it takes."}
    branches = []
    for app in apps:
        props: dict[str, Any] = {"app_id": {"enum": [app.app_id]},
                                 "inference_type": _nullable({"enum": list(app.inference_types)})}
        if app.task == "tts":
            fixed = {name: {"enum": [value, None]} for name, value in LOCAL_TTS_NEUTRAL.items()}
            props["audio_parameters"] = {"anyOf": [{"type": "null"}, {"type": "object", "properties": fixed}]}
        branches.append({"title": app.app_id, "description": f"{app.name} ({TASKS[app.task].summary})",
                         "properties": props})
    rules: list[dict[str, Any]] = [{"oneOf": branches}]
    async_only = {"properties": {f: {"type": "null"} if f == "priority" else _EMPTY
                                 for f in _ASYNC_ONLY if f in properties}}
    celery = {"required": ["celery"], "properties": {"celery": _FLAG_TRUE}}
    rules.append({"anyOf": [async_only, celery]} if async_tasks else async_only)
    schema["allOf"] = rules
    return schema


def inline_defs(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with its local ``#/$defs/...`` references replaced by their definitions (a body
    schema published inline has no ``$defs`` to point into for every tool). Recursive models stay
    as they are."""
    defs = schema.pop("$defs", {})

    def walk(node: Any, seen: tuple[str, ...] = ()) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/") and (name := ref.removeprefix("#/$defs/")) in defs and name not in seen:
                rest = {k: v for k, v in node.items() if k != "$ref"}
                return {**walk(copy.deepcopy(defs[name]), (*seen, name)), **rest}
            return {k: walk(v, seen) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, seen) for v in node]
        return node

    return walk(schema)
