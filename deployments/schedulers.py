"""Scheduler names of the public contract, and a fresh scheduler per request.

Schedulers keep per-run state (timesteps, step index, multistep history), so
they are never shared between requests: ``build_scheduler`` makes a new
instance every call with ``cls.from_config(base_config, **overrides)``, where
``base_config`` is the loaded model's own scheduler config (beta schedule,
``steps_offset``, ``prediction_type`` ... carry over to the chosen class).

Of the 18 names in the contract, 14 (13 without scipy) work with the latent
text-to-image / image-to-image / inpainting pipelines of diffusers 0.42:

* ``LMSDiscreteScheduler`` needs scipy; diffusers replaces it with a dummy class
  that raises when scipy is absent, so it is usable only where scipy is installed.
* ``DDIMInverseScheduler`` runs the DDIM chain *backwards* (image → noise); it is
  for inversion pipelines, and in a text-to-image pipeline it walks away from the
  image. Refused.
* ``IPNDMScheduler`` is the continuous-time F-PNDM sampler of score-SDE models:
  its timesteps are floats in [0, 1] instead of the 0..999 the SD UNets were
  trained on, and it has no ``add_noise`` (image-to-image and inpainting fail).
  Refused.
* ``KarrasVeScheduler`` (in ``diffusers.schedulers.deprecated``) and
  ``ScoreSdeVeScheduler`` are variance-exploding samplers for pixel-space
  unconditional models; their ``step`` signatures (``step(output, sigma_hat,
  sigma_prev, sample_hat)``, ``step_pred``/``step_correct``) are not the
  ``step(output, t, latents)`` the latent pipelines call, and they have no
  usable ``add_noise``. Refused.

``algorithm_type`` applies to the DPM-Solver schedulers only: multistep takes
``dpmsolver``, ``dpmsolver++``, ``sde-dpmsolver``, ``sde-dpmsolver++``;
singlestep takes ``dpmsolver``, ``dpmsolver++``, ``sde-dpmsolver++``. The seed
documentation spells one value ``dpmsolver+++``: we accept it as an alias of
``dpmsolver++``.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping
from functools import cache
from typing import Any, Literal, get_args

from deployments.errors import InvalidJobError

logger = logging.getLogger(__name__)

#: The contract's scheduler names, as a type (request schemas use it as the field's type).
SchedulerName = Literal[
    "DDPMScheduler",
    "DDIMScheduler",
    "PNDMScheduler",
    "LMSDiscreteScheduler",
    "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "DPMSolverMultistepScheduler",
    "HeunDiscreteScheduler",
    "KDPM2DiscreteScheduler",
    "DPMSolverSinglestepScheduler",
    "KDPM2AncestralDiscreteScheduler",
    "UniPCMultistepScheduler",
    "DDIMInverseScheduler",
    "DEISMultistepScheduler",
    "IPNDMScheduler",
    "KarrasVeScheduler",
    "ScoreSdeVeScheduler",
    "LCMScheduler",
]
SCHEDULER_NAMES: tuple[str, ...] = get_args(SchedulerName)

# Names that exist but do not fit a latent text-to-image pipeline (see module doc).
_INCOMPATIBLE: dict[str, str] = {
    "DDIMInverseScheduler": "an inversion scheduler (image to noise), not a sampler",
    "IPNDMScheduler": "continuous-time timesteps in [0, 1] and no add_noise",
    "KarrasVeScheduler": "a deprecated pixel-space variance-exploding sampler",
    "ScoreSdeVeScheduler": "a pixel-space score-SDE sampler without the standard step()",
}

ALGORITHM_TYPES: dict[str, tuple[str, ...]] = {
    "DPMSolverMultistepScheduler": ("dpmsolver", "dpmsolver++", "sde-dpmsolver", "sde-dpmsolver++"),
    "DPMSolverSinglestepScheduler": ("dpmsolver", "dpmsolver++", "sde-dpmsolver++"),
}
ALGORITHM_ALIASES: dict[str, str] = {"dpmsolver+++": "dpmsolver++"}


def _resolve_class(name: str):
    """The diffusers class for ``name``, or a reason it cannot be used."""
    import diffusers

    if name in _INCOMPATIBLE:
        return None, _INCOMPATIBLE[name]
    cls = getattr(diffusers, name, None)
    if cls is None:
        return None, f"not provided by diffusers {diffusers.__version__}"
    if name == "LMSDiscreteScheduler":
        from diffusers.utils import is_scipy_available

        if not is_scipy_available():
            return None, "needs scipy, which is not installed on this server"
    return cls, None


@cache
def usable_scheduler_names() -> list[str]:
    """Names of the contract that this server can actually run, contract order."""
    return [name for name in SCHEDULER_NAMES if _resolve_class(name)[0] is not None]


def _accepts(cls, parameter: str) -> bool:
    return parameter in inspect.signature(cls.__init__).parameters


@cache
def scheduler_capabilities() -> dict[str, dict[str, Any]]:
    """What each contract name offers here, as plain JSON: ``{name: {"usable", "reason",
    "karras", "algorithms"}}``. A family reports it (``info()``) so that the ingress can
    check a request's scheduler options with :func:`check_scheduler_options` without
    importing diffusers."""
    caps: dict[str, dict[str, Any]] = {}
    for name in SCHEDULER_NAMES:
        cls, reason = _resolve_class(name)
        caps[name] = {
            "usable": cls is not None,
            "reason": reason,
            "karras": cls is not None and _accepts(cls, "use_karras_sigmas"),
            "algorithms": list(ALGORITHM_TYPES.get(name, ())) if cls is not None else [],
        }
    return caps


def check_scheduler_options(
    name: str | None,
    default_name: str | None,
    caps: Mapping[str, Mapping[str, Any]],
    *,
    use_karras_sigmas: bool | None = None,
    algorithm_type: str | None = None,
) -> tuple[str, dict[str, Any]]:
    """Check a request's scheduler options against ``caps`` (see :func:`scheduler_capabilities`).

    Returns the scheduler name (``default_name`` for None) and the config overrides the
    options ask for; raises ``InvalidJobError`` naming the field for anything refused.
    Pure: the family and the ingress run the same checks and say the same words.
    """
    usable = [n for n in SCHEDULER_NAMES if caps.get(n, {}).get("usable")]
    if name is None:
        if default_name is None:
            raise ValueError("no scheduler name and no default_name")
        name = default_name
        cap = caps.get(name) or {"usable": True, "karras": False, "algorithms": list(ALGORITHM_TYPES.get(name, ()))}
    else:
        if name not in SCHEDULER_NAMES:
            raise InvalidJobError("scheduler", f"unknown scheduler {name!r}; use one of: {', '.join(usable)}")
        cap = caps.get(name, {})
        if not cap.get("usable"):
            raise InvalidJobError(
                "scheduler", f"{name} is not usable here ({cap.get('reason')}); use one of: {', '.join(usable)}"
            )
    overrides: dict[str, Any] = {}
    if use_karras_sigmas is not None:
        if not cap.get("karras"):
            with_karras = [n for n in usable if caps[n].get("karras")]
            raise InvalidJobError(
                "use_karras_sigmas", f"{name} has no Karras sigmas option; it applies to: {', '.join(with_karras)}"
            )
        overrides["use_karras_sigmas"] = bool(use_karras_sigmas)
    if algorithm_type is not None:
        allowed = cap.get("algorithms") or []
        if not allowed:
            raise InvalidJobError(
                "algorithm_type", f"algorithm_type applies only to {', '.join(ALGORITHM_TYPES)}, not {name}"
            )
        value = ALGORITHM_ALIASES.get(algorithm_type, algorithm_type)
        if value not in allowed:
            raise InvalidJobError(
                "algorithm_type",
                f"{algorithm_type!r} is not an algorithm of {name}; use one of: {', '.join(allowed)}",
            )
        overrides["algorithm_type"] = value
        if value in ("dpmsolver", "sde-dpmsolver"):
            # final_sigmas_type "zero" (the default) is only defined for the ++ variants.
            overrides["final_sigmas_type"] = "sigma_min"
    return name, overrides


def build_scheduler(
    name: str | None,
    base_config: Mapping[str, Any],
    *,
    use_karras_sigmas: bool | None = None,
    algorithm_type: str | None = None,
):
    """A NEW scheduler instance of ``name`` configured from ``base_config``.

    ``name`` None means the class the base config came from (the model's own
    default). Raises ``InvalidJobError`` for names, options or values this
    server cannot honour.
    """
    import diffusers

    default_name = base_config.get("_class_name")
    if name is None and not default_name:
        raise ValueError("base_config has no _class_name; pass a scheduler name")
    caps = dict(scheduler_capabilities())
    if default_name and default_name not in caps:  # a model default outside the contract's names
        cls = getattr(diffusers, default_name)
        caps[default_name] = {"usable": True, "reason": None, "karras": _accepts(cls, "use_karras_sigmas"),
                              "algorithms": list(ALGORITHM_TYPES.get(default_name, ()))}
    name, overrides = check_scheduler_options(
        name, default_name, caps, use_karras_sigmas=use_karras_sigmas, algorithm_type=algorithm_type
    )
    cls = getattr(diffusers, name)
    if name == "PNDMScheduler" and "skip_prk_steps" not in base_config:
        # PRK warm-up steps need several inference steps and are not what SD
        # checkpoints ship (they set skip_prk_steps=True); a config from another
        # class (SDXL's Euler) would otherwise turn them on.
        overrides["skip_prk_steps"] = True
    try:
        return cls.from_config(dict(base_config), **overrides)
    except (ValueError, NotImplementedError) as exc:  # a config the class refuses
        logger.info("scheduler %s refused this model's config: %s", name, exc)
        raise InvalidJobError(
            "scheduler", f"{name} cannot be configured for this model; use one of: {', '.join(usable_scheduler_names())}"
        ) from exc
