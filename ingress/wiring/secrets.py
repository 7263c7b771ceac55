"""Where each secret goes: every deployment gets only what it needs.

| deployment        | gets                                                                  |
|-------------------|-----------------------------------------------------------------------|
| ingress           | the API keys (hashed before use; locally the builder hands only their |
|                   | SHA-256 digests), storage credentials                                 |
| tasks (coordinator)| the webhook signing secrets (or their file), storage credentials     |
| family replicas   | S3 credentials; the ElevenLabs speech family also the ElevenLabs key  |
| chat              | the LLM vendors' and Tavily's keys (``STUDIO_<VENDOR>_API_KEY``)      |
| documents         | the Qdrant server's key (``STUDIO_QDRANT_API_KEY``)                   |
| proxy, controller | nothing                                                               |

Two ways, chosen by the builder (:func:`routing`):

* **Embedded default** (:class:`Secrets`): the builder reads the secrets once, from the
  environment of the launcher and the files those variables name, and hands each
  deployment its share in ``ray_actor_options.runtime_env.env_vars``. The launcher removes
  every secret variable from its own environment before it starts Ray, because Ray's worker
  processes inherit the environment of the process that started the node.
* **Cluster** (:class:`SecretFiles`, the registry's ``secrets_dir``): the builder runs in
  Serve's controller on the head, which holds no secret. Kubernetes Secrets are mounted as
  files on the worker pods, one directory per role (:data:`ROLE_FILES`); the builder hands
  each deployment only *paths*: ``STUDIO_SECRETS_DIR=<secrets_dir>/<role>`` (and the
  ``*_FILE`` path of its JSON table), so no secret value enters the Serve config (GCS and
  its Redis). The settings classes read the files (:class:`storage.settings.FileSecretsSettings`).
  Files in one pod are readable by every process of that pod (Ray's workers share a uid):
  the split there is by what each deployment is told to read.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Protocol

from deployments.vendors import VENDOR_KEY_VARS
from storage.keys import validate_tenant
from storage.settings import SECRETS_DIR_VAR

#: Storage credentials: what every replica that reads or writes objects needs.
S3_CREDENTIALS = (
    "STUDIO_STORAGE_S3_ACCESS_KEY_ID",
    "STUDIO_STORAGE_S3_SECRET_ACCESS_KEY",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
)
SIGNING_SECRET = "STUDIO_STORAGE_SIGNING_SECRET"
API_KEYS, API_KEYS_FILE = "STUDIO_API_KEYS", "STUDIO_API_KEYS_FILE"
WEBHOOK_SECRETS, WEBHOOK_SECRETS_FILE = "STUDIO_WEBHOOK_SECRETS", "STUDIO_WEBHOOK_SECRETS_FILE"
#: What the ingress and coordinator read instead of the keys and secrets themselves.
API_KEY_DIGESTS, WEBHOOK_TENANTS = "STUDIO_API_KEY_DIGESTS", "STUDIO_WEBHOOK_TENANTS"

QDRANT_API_KEY = "STUDIO_QDRANT_API_KEY"
#: The chat service's vendors (LLMs and web search); ElevenLabs' key goes to its speech family only.
CHAT_VENDOR_KEYS = tuple(v for v in VENDOR_KEY_VARS if "ELEVENLABS" not in v)
SPEECH_VENDOR_KEYS = tuple(v for v in VENDOR_KEY_VARS if "ELEVENLABS" in v)

#: Every variable that is a secret or points at one; never in the shared runtime env.
SECRET_VARS = (*S3_CREDENTIALS, SIGNING_SECRET, API_KEYS, API_KEYS_FILE, WEBHOOK_SECRETS, WEBHOOK_SECRETS_FILE,
               *VENDOR_KEY_VARS, QDRANT_API_KEY)

#: The builder's own key of ``args`` (not the registry's): where a cluster mounts the role directories.
SECRETS_DIR_ARG = "secrets_dir"

#: Cluster mode: the files of each role's directory. A file named after a variable holds that
#: variable's value (pydantic-settings' secrets source reads it); the two JSON tables are read
#: through their ``*_FILE`` variables (the webhook secrets on every delivery, so a rotated
#: Secret takes effect without a restart).
API_KEYS_FILENAME, WEBHOOK_SECRETS_FILENAME = "api-keys.json", "webhook-secrets.json"
S3_FILES = ("STUDIO_STORAGE_S3_ACCESS_KEY_ID", "STUDIO_STORAGE_S3_SECRET_ACCESS_KEY")
ROLE_FILES: dict[str, tuple[str, ...]] = {
    "ingress": (API_KEYS_FILENAME, *S3_FILES),
    "coordinator": (WEBHOOK_SECRETS_FILENAME, *S3_FILES),
    "family": S3_FILES,
    "speech-vendor": (*S3_FILES, *SPEECH_VENDOR_KEYS),
    "chat": CHAT_VENDOR_KEYS,
    "documents": (QDRANT_API_KEY,),
}


def family_role(kind: str) -> str:
    """The secrets role of a family kind: a vendor-backed one (``tts_vendor``) also holds its vendor's key."""
    return "speech-vendor" if kind == "tts_vendor" else "family"


def key_digest(key: str) -> str:
    """The SHA-256 hex digest by which the ingress knows an API key."""
    return hashlib.sha256(key.encode()).hexdigest()


def _json_object(text: str, what: str) -> dict[str, str]:
    try:
        value = json.loads(text)
    except ValueError:
        raise ValueError(f"{what}: not valid JSON") from None
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ValueError(f"{what}: must be a JSON object of strings")
    return value


class SecretRouting(Protocol):
    """What the builder puts in each deployment's ``runtime_env.env_vars`` about secrets."""

    def for_ingress(self) -> dict[str, str]: ...
    def for_coordinator(self) -> dict[str, str]: ...
    def for_family(self, kind: str = "") -> dict[str, str]: ...
    def for_chat(self) -> dict[str, str]: ...
    def for_documents(self) -> dict[str, str]: ...


@dataclass(frozen=True)
class Secrets:
    """Embedded default: the secrets one build of the app hands out, read and checked once."""

    env: dict[str, str] = field(default_factory=dict)  # the secret variables as found

    @classmethod
    def take(cls, environ: MutableMapping[str, str]) -> Secrets:
        """Read the secrets and remove them from ``environ`` (the launcher's own)."""
        found = cls.read(environ)
        for name in SECRET_VARS:
            environ.pop(name, None)
        return found

    @classmethod
    def read(cls, environ: Mapping[str, str] | None = None) -> Secrets:
        environ = os.environ if environ is None else environ
        found = cls({k: environ[k] for k in SECRET_VARS if environ.get(k)})
        found.api_key_digests()  # fail fast on a malformed key table or tenant name
        found.webhook_tenants()
        return found

    def api_key_digests(self) -> dict[str, str]:
        """``{sha256 hex of key: tenant}`` from ``STUDIO_API_KEYS`` and ``STUDIO_API_KEYS_FILE``."""
        keys: dict[str, str] = {}
        if API_KEYS in self.env:
            keys.update(_json_object(self.env[API_KEYS], API_KEYS))
        if API_KEYS_FILE in self.env:
            path = Path(self.env[API_KEYS_FILE])
            keys.update(_json_object(path.read_text(), f"{API_KEYS_FILE} ({path})"))
        for tenant in keys.values():
            try:
                validate_tenant(tenant)
            except ValueError as exc:
                raise ValueError(f"API keys: {exc}") from None
        return {key_digest(k): tenant for k, tenant in keys.items() if k}

    def webhook_secrets(self) -> dict[str, str]:
        """``{tenant: whsec_...}`` from ``STUDIO_WEBHOOK_SECRETS`` and its file."""
        found: dict[str, str] = {}
        if WEBHOOK_SECRETS in self.env:
            found.update(_json_object(self.env[WEBHOOK_SECRETS], WEBHOOK_SECRETS))
        if WEBHOOK_SECRETS_FILE in self.env and Path(self.env[WEBHOOK_SECRETS_FILE]).exists():
            path = Path(self.env[WEBHOOK_SECRETS_FILE])
            found.update(_json_object(path.read_text(), f"{WEBHOOK_SECRETS_FILE} ({path})"))
        return found

    def webhook_tenants(self) -> list[str]:
        """The tenants with a webhook secret, each name and secret checked."""
        from standardwebhooks import Webhook

        found = self.webhook_secrets()
        for tenant, secret in found.items():
            try:
                validate_tenant(tenant)
            except ValueError as exc:
                raise ValueError(f"webhook secrets: {exc}") from None
            try:
                Webhook(secret)
            except Exception:
                raise ValueError(f"webhook secrets: the secret of tenant {tenant!r} is not whsec_<base64>") from None
        return sorted(found)

    def _pick(self, names: tuple[str, ...]) -> dict[str, str]:
        return {k: self.env[k] for k in names if k in self.env}

    def for_ingress(self) -> dict[str, str]:
        return {
            **self._pick((*S3_CREDENTIALS, SIGNING_SECRET)),
            API_KEY_DIGESTS: json.dumps(self.api_key_digests()),
            WEBHOOK_TENANTS: json.dumps(self.webhook_tenants()),
        }

    def for_coordinator(self) -> dict[str, str]:
        return self._pick((*S3_CREDENTIALS, SIGNING_SECRET, WEBHOOK_SECRETS, WEBHOOK_SECRETS_FILE))

    def for_family(self, kind: str = "") -> dict[str, str]:
        """Storage credentials; a vendor-backed family (``tts_vendor``) also its vendor's key."""
        return self._pick((*S3_CREDENTIALS, *(SPEECH_VENDOR_KEYS if kind == "tts_vendor" else ())))

    def for_chat(self) -> dict[str, str]:
        """The chat service: the LLM vendors' and the web search's keys; it stores nothing."""
        return self._pick(CHAT_VENDOR_KEYS)

    def for_documents(self) -> dict[str, str]:
        """The document store: the Qdrant server's key."""
        return self._pick((QDRANT_API_KEY,))


@dataclass(frozen=True)
class SecretFiles:
    """Cluster mode: each deployment is told where its role's secret files are, never a value."""

    root: PurePosixPath

    @classmethod
    def at(cls, secrets_dir: str) -> SecretFiles:
        path = PurePosixPath(secrets_dir)
        if not path.is_absolute() or ".." in path.parts:
            raise ValueError(f"secrets_dir {secrets_dir!r}: must be an absolute path without '..'")
        return cls(path)

    def _role(self, role: str, **files: str) -> dict[str, str]:
        directory = self.root / role
        return {SECRETS_DIR_VAR: str(directory), **{var: str(directory / name) for var, name in files.items()}}

    def for_ingress(self) -> dict[str, str]:
        """The API keys file (the ingress hashes the keys itself) and the storage credentials."""
        return self._role("ingress", **{API_KEYS_FILE: API_KEYS_FILENAME})

    def for_coordinator(self) -> dict[str, str]:
        return self._role("coordinator", **{WEBHOOK_SECRETS_FILE: WEBHOOK_SECRETS_FILENAME})

    def for_family(self, kind: str = "") -> dict[str, str]:
        return self._role(family_role(kind))

    def for_chat(self) -> dict[str, str]:
        return self._role("chat")

    def for_documents(self) -> dict[str, str]:
        return self._role("documents")


def routing(secrets_dir: str | None, secrets: Secrets | None = None,
            environ: Mapping[str, str] | None = None) -> SecretRouting:
    """How this build hands out secrets: files under ``secrets_dir`` (a cluster), else ``secrets``
    or the secrets of ``environ`` (default: this process's environment)."""
    if secrets_dir is None:
        return secrets if secrets is not None else Secrets.read(environ)
    environ = os.environ if environ is None else environ
    stray = sorted({*(name for name in SECRET_VARS if environ.get(name)), *(secrets.env if secrets else ())})
    if stray:
        raise ValueError(f"secrets_dir is set, yet the builder was given {', '.join(stray)}: in a cluster every "
                         "secret is a file in its role's directory on the worker pods, never in the builder's "
                         "environment (the head) or the Serve config")
    return SecretFiles.at(secrets_dir)
