"""Import spandrel where torchvision cannot be imported.

Why: spandrel 0.4.2 imports torchvision when ``spandrel`` itself is imported (its
architecture registry imports every architecture eagerly), but only two
architectures use it, and only at call time:

* ``LaMa`` (inpainting): ``from torchvision.transforms.functional import InterpolationMode, rotate``;
* ``RestoreFormer`` (face restoration): ``from torchvision.transforms.functional import normalize``.

We load neither (the upscaler refuses anything but a super-resolution image model). On the
CPU test machines the PyPI torchvision wheel is CUDA-linked while torch is the CPU build, so
``import torchvision`` fails ("operator torchvision::nms does not exist") and so would
``import spandrel``. :func:`import_spandrel` first tries the real torchvision; if that import
fails it drops the half-imported ``torchvision*`` modules, puts a placeholder
``torchvision.transforms.functional`` (exactly the three names above) in ``sys.modules``
for the duration of ``import spandrel``, and removes it again, so other libraries keep
seeing the real (failing) torchvision. The placeholders raise a clear ``ImportError`` when
called (or, for ``InterpolationMode``, when an attribute is read), so a LaMa or RestoreFormer
model would fail loudly, never silently. ESRGAN's code path does not touch torchvision:
``spandrel/architectures/ESRGAN`` imports only torch and spandrel's own helpers.

Production images (CUDA torch with its matching torchvision) import the real torchvision
and never see the placeholder.
"""

from __future__ import annotations

import importlib.machinery
import logging
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

logger = logging.getLogger("deployments.pipelines.spandrel_compat")

#: What spandrel 0.4.2 imports from ``torchvision.transforms.functional`` (LaMa, RestoreFormer).
PLACEHOLDER_NAMES = ("InterpolationMode", "normalize", "rotate")
_PACKAGES = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional")
_lock = threading.Lock()


class MissingTorchvision:
    """Stands in for a torchvision name: calling it (or reading an attribute) raises ImportError."""

    def __init__(self, name: str):
        self._name = name

    def _error(self) -> ImportError:
        return ImportError(
            f"torchvision.transforms.functional.{self._name} is unavailable: torchvision could not be imported on "
            "this machine (a torchvision build that does not match torch). Only spandrel's LaMa and RestoreFormer "
            "architectures need it; install the torchvision that matches torch to use them."
        )

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise self._error()

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__") and attr.endswith("__"):
            raise AttributeError(attr)  # keep hasattr()/inspect/copy working
        raise self._error()

    def __repr__(self) -> str:
        return f"<placeholder torchvision.transforms.functional.{self._name}>"


def _drop_torchvision_modules() -> None:
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        del sys.modules[name]


def _placeholder_modules() -> dict[str, ModuleType]:
    modules = {}
    for name in _PACKAGES:
        module = ModuleType(name, "placeholder: the real torchvision could not be imported")
        module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
        module.__path__ = []
        modules[name] = module
    functional = modules["torchvision.transforms.functional"]
    for attr in PLACEHOLDER_NAMES:
        setattr(functional, attr, MissingTorchvision(attr))
    modules["torchvision"].transforms = modules["torchvision.transforms"]  # type: ignore[attr-defined]
    modules["torchvision.transforms"].functional = functional  # type: ignore[attr-defined]
    return modules


@contextmanager
def placeholder_torchvision() -> Iterator[None]:
    """A placeholder ``torchvision.transforms.functional`` in ``sys.modules``, removed afterwards."""
    _drop_torchvision_modules()
    sys.modules.update(_placeholder_modules())
    try:
        yield
    finally:
        for name in _PACKAGES:
            sys.modules.pop(name, None)


def torchvision_importable() -> bool:
    """Whether the real torchvision imports here (a failed attempt leaves no modules behind)."""
    try:
        import torchvision  # noqa: F401
    except Exception:
        _drop_torchvision_modules()
        return False
    return True


def import_spandrel() -> ModuleType:
    """``import spandrel``, with a placeholder for torchvision when the real one cannot be imported."""
    module = sys.modules.get("spandrel")
    if module is not None and hasattr(module, "ModelLoader"):
        return module
    with _lock:
        if torchvision_importable():
            import spandrel
        else:
            logger.debug("torchvision cannot be imported here; importing spandrel with a placeholder "
                         "torchvision.transforms.functional (%s)", ", ".join(PLACEHOLDER_NAMES))
            with placeholder_torchvision():
                import spandrel
    return spandrel
