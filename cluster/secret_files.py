"""The secrets of a cluster as files: one projected volume per role (``ingress.wiring.secrets.ROLE_FILES``)
on the worker pods where that role's deployments run, none on the head; and the Secret templates.

Each file of a role's directory comes from one key of one Kubernetes Secret named in the profile.
"""

from __future__ import annotations

import json
from typing import Any

from cluster.labels import meta
from cluster.profile import Profile
from deployments.catalog import KINDS
from deployments.vendors import VENDOR_KEY_VARS
from ingress.wiring.secrets import (
    API_KEYS_FILENAME,
    QDRANT_API_KEY,
    ROLE_FILES,
    S3_FILES,
    SECRETS_DIR_ARG,
    WEBHOOK_SECRETS_FILENAME,
    family_role,
)

#: Where the role directories are mounted (the registry's ``secrets_dir``).
SECRETS_DIR = "/var/run/secrets/studio"
S3_KEYS = dict(zip(S3_FILES, ("access-key-id", "secret-access-key"), strict=True))
PLACEHOLDER = "REPLACE-ME"
FILE_MODE = 0o440  # read by the pods' group (fsGroup), by nobody else


def source_of(profile: Profile, filename: str) -> tuple[str, str, bool]:
    """(Secret name, key, optional) of one file of a role directory."""
    s = profile.secrets
    if filename == API_KEYS_FILENAME:
        return s.api_keys, API_KEYS_FILENAME, False
    if filename == WEBHOOK_SECRETS_FILENAME:  # a service without webhooks has no such Secret
        return s.webhook_secrets, WEBHOOK_SECRETS_FILENAME, True
    if filename in S3_KEYS:
        return s.s3, S3_KEYS[filename], False
    if filename in (*VENDOR_KEY_VARS, QDRANT_API_KEY):  # each vendor optional: leave out one you do not use
        return s.vendors, filename, True
    raise KeyError(filename)


def roles_by_group(args: dict[str, Any]) -> dict[str, list[str]]:
    """Worker group (``cpu`` or a GPU type) -> the secret roles of the deployments that run there,
    from the registry ``args`` the builder binds (the ingress, coordinator, chat and documents on
    the cpu group with the families that need no GPU; every other family on its GPU type's group)."""
    from ingress.wiring.registry import ServiceConfig

    config = ServiceConfig.model_validate({k: v for k, v in args.items() if k != SECRETS_DIR_ARG})
    groups: dict[str, list[str]] = {"cpu": ["ingress", "coordinator"]}
    groups["cpu"] += [role for role, on in (("chat", config.chat), ("documents", config.documents)) if on is not None]
    for family, gpu in config.deployment_keys():
        kind = config.families[family].kind
        group = groups.setdefault(gpu if KINDS[kind].on_gpu else "cpu", [])
        if family_role(kind) not in group:
            group.append(family_role(kind))
    return groups


def volume_name(role: str) -> str:
    return f"secrets-{role}"


def role_volume(profile: Profile, role: str) -> dict[str, Any]:
    """A projected volume of the role's files, each from its Secret's key."""
    by_secret: dict[tuple[str, bool], list[dict[str, str]]] = {}
    for filename in ROLE_FILES[role]:
        secret, key, optional = source_of(profile, filename)
        by_secret.setdefault((secret, optional), []).append({"key": key, "path": filename})
    sources = [{"secret": {"name": secret, "items": items, **({"optional": True} if optional else {})}}
               for (secret, optional), items in by_secret.items()]
    return {"name": volume_name(role), "projected": {"defaultMode": FILE_MODE, "sources": sources}}


def role_mount(role: str) -> dict[str, Any]:
    return {"name": volume_name(role), "mountPath": f"{SECRETS_DIR}/{role}", "readOnly": True}


def secret_templates(profile: Profile) -> dict[str, dict[str, Any]]:
    """Secrets with placeholder values: the shape to fill in, never real values."""
    s = profile.secrets

    def secret(name: str, data: dict[str, str], what: str) -> dict[str, Any]:
        annotations = {"studio.example.com/template": f"placeholder values: {what}"}
        return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": meta(profile, name, "secret", annotations=annotations), "stringData": data}

    return {
        "api-keys": secret(s.api_keys, {API_KEYS_FILENAME: json.dumps({f"{PLACEHOLDER}-api-key": "tenant-a"})},
                           "a JSON object API key -> tenant; a file of the ingress's directory on the cpu pods"),
        "webhook-secrets": secret(s.webhook_secrets,
                                  {WEBHOOK_SECRETS_FILENAME: json.dumps({"tenant-a": f"whsec_{PLACEHOLDER}"})},
                                  "a JSON object tenant -> whsec_<base64>; a file of the task coordinator's "
                                  "directory on the cpu pods (re-read on every delivery)"),
        "s3": secret(s.s3, {key: PLACEHOLDER for key in S3_KEYS.values()},
                     "S3 credentials; files of the ingress's, the coordinator's and the families' directories"),
        "redis": secret(profile.redis.password_secret.name, {profile.redis.password_secret.key: PLACEHOLDER},
                        "the password of the GCS fault-tolerance Redis (KubeRay puts it in the head's environment)"),
        "vendors": secret(s.vendors, {var: PLACEHOLDER for var in (*VENDOR_KEY_VARS, QDRANT_API_KEY)},
                          "the vendors' API keys (each optional; leave out a vendor you do not use): the LLM and "
                          "Tavily keys are files of the chat service's directory, ElevenLabs' of its speech "
                          "family's, Qdrant's of the document store's"),
    }
