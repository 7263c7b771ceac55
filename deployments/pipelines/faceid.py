"""IP-Adapter FaceID on a loaded SDXL base: identity embeddings in, through diffusers' loader.

Weights: ``h94/IP-Adapter-FaceID``'s ``ip-adapter-faceid_sdxl.bin`` at the root of the
configured directory (``subfolder``/``weight_name`` may point elsewhere). It is a
``torch.save`` of ``{"image_proj": …, "ip_adapter": …}``: the projection
(``proj.0``/``proj.2``/``norm`` → diffusers' ``IPAdapterFaceIDImageProjection``, a 512-d
ArcFace embedding → 4 tokens), the cross-attention ``<n>.to_{k,v}_ip`` weights, and a LoRA
over every attention's q/k/v/out (``<n>.to_{q,k,v,out}_lora.{down,up}.weight``, n counting
``unet.attn_processors`` from 0). There is no CLIP image encoder: the identity comes from
insightface (:mod:`deployments.pipelines.faces`) and goes to the pipeline as
``ip_adapter_image_embeds``.

Loading. The file is read with diffusers' own reader (``load_state_dict``: ``torch.load``
with ``weights_only=True``), the projection and IP weights go through
``pipe.load_ip_adapter(<state dict>, …, image_encoder_folder=None)``, and the base UNet is
restored at once, as in :mod:`deployments.pipelines.ip_adapter` (whose docstring says why:
a loaded IP-Adapter makes every other call on the shared UNet fail). The LoRA keys are
taken out first. diffusers would load them as a peft adapter ``faceid_0`` in the shared
UNet and activate it, and that adapter would then be on for text2img/img2img/inpaint
calls too; it would also meet the replica's LoRA stacks (``deployments.pipelines.lora``
switches *all* adapters with ``enable_lora``/``disable_lora``/``set_adapters``). Here each
LoRA pair is a small ``down``/``up`` module kept aside, and :meth:`FaceIDAdapter.attached`
wraps the attention's projection (``base(x) + up(down(x))``, scale 1 as diffusers and the
FaceID authors use) only for the ``with`` body, with the IP processors and projection.
Outside it the UNet holds exactly its own modules and processors. (A user LoRA on the
same projection still applies under the wrapper; the face tasks refuse ``lora_model``.)

Identity embeddings (:func:`identity_embeds`): one ``[1, 1, D]`` tensor per call, with a
zero embedding stacked before it when the call uses classifier-free guidance (as the
FaceID authors and diffusers' docs do); the pipeline repeats it ``num_images_per_prompt``
times itself (``prepare_ip_adapter_image_embeds``), so it is never repeated here.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

#: (subfolder, weight file) per base kind, as laid out in h94/IP-Adapter-FaceID.
FACEID_FILES: dict[str, tuple[str | None, str]] = {"sdxl": (None, "ip-adapter-faceid_sdxl.bin")}
_LORA_PROJECTIONS = ("q", "k", "v", "out")


def _kind(pipe) -> str:
    from diffusers import StableDiffusionXLPipeline

    if isinstance(pipe, StableDiffusionXLPipeline):
        return "sdxl"
    raise ValueError(f"IP-Adapter FaceID here needs an SDXL text2img pipeline, not {type(pipe).__name__}")


def _lora_module(down, up):
    """``up(down(x))`` as a module, from a LoRA pair of weights ``[r, in]`` and ``[out, r]``."""
    import torch

    rank, in_features = down.shape
    out_features = up.shape[0]
    if up.shape[1] != rank:
        raise ValueError(f"LoRA up {tuple(up.shape)} does not follow down {tuple(down.shape)}")
    module = torch.nn.Sequential(torch.nn.Linear(in_features, rank, bias=False), torch.nn.Linear(rank, out_features, bias=False))
    with torch.no_grad():
        module[0].weight.copy_(down)
        module[1].weight.copy_(up)
    return module


def _with_lora_class():
    import torch

    class WithLoRA(torch.nn.Module):
        """A projection plus a LoRA: ``base(x) + lora(x)``; installed only inside ``attached()``."""

        def __init__(self, base: torch.nn.Module, lora: torch.nn.Module):
            super().__init__()
            self.base = base
            self.lora = lora

        def forward(self, x, *args, **kwargs):
            return self.base(x, *args, **kwargs) + self.lora(x)

    return WithLoRA


class FaceIDAdapter:
    """A text2img pipeline over the base's modules plus a detached IP-Adapter FaceID.

    ``processors``: the IP attention processors by name; ``projection``: the
    ``MultiIPAdapterImageProjection``; ``loras``: ``{(attention path, projection): module}``.
    """

    def __init__(self, pipe, processors: dict[str, Any], projection, loras: dict[tuple[str, str], Any]):
        self.pipe = pipe
        self.processors = processors
        self.projection = projection
        self.loras = loras
        self._lock = threading.Lock()

    @property
    def embed_dim(self) -> int:
        """The identity embedding size the projection takes (512 for ArcFace)."""
        return int(self.projection.image_projection_layers[0].ff.net[0].proj.in_features)

    def _install_loras(self) -> list[tuple[Any, str, Any]]:
        """Wrap each LoRA'd projection; return what to put back."""
        with_lora = _with_lora_class()
        unet = self.pipe.unet
        undo: list[tuple[Any, str, Any]] = []
        try:
            for (path, projection), lora in self.loras.items():
                attn = unet.get_submodule(path)
                if projection == "out":
                    base = attn.to_out[0]
                    attn.to_out[0] = with_lora(base, lora)
                    undo.append((attn.to_out, "0", base))
                else:
                    name = f"to_{projection}"
                    base = getattr(attn, name)
                    setattr(attn, name, with_lora(base, lora))
                    undo.append((attn, name, base))
        except BaseException:
            self._restore_loras(undo)
            raise
        return undo

    @staticmethod
    def _restore_loras(undo: list[tuple[Any, str, Any]]) -> None:
        for parent, name, base in reversed(undo):
            if name == "0":
                parent[0] = base
            else:
                setattr(parent, name, base)

    @contextmanager
    def attached(self) -> Iterator[Any]:
        """Install the adapter (IP processors, projection, LoRA) on the shared UNet for the
        ``with`` body; yield the pipeline. Everything is put back on the way out."""
        unet = self.pipe.unet
        with self._lock:
            if unet.encoder_hid_proj is not None:
                raise RuntimeError("the UNet already carries an encoder_hid_proj; refusing to stack adapters")
            previous = dict(unet.attn_processors)
            previous_type = unet.config.encoder_hid_dim_type
            undo: list[tuple[Any, str, Any]] = []
            try:
                unet.set_attn_processor({name: self.processors.get(name, proc) for name, proc in previous.items()})
                unet.encoder_hid_proj = self.projection
                unet.config.encoder_hid_dim_type = "ip_image_proj"  # as diffusers' loader sets it
                undo = self._install_loras()
                yield self.pipe
            finally:
                self._restore_loras(undo)
                unet.set_attn_processor(dict(previous))
                unet.encoder_hid_proj = None
                unet.config.encoder_hid_dim_type = previous_type

    def image_embeds(self, embedding: np.ndarray, guidance_scale: float) -> list[Any]:
        """``ip_adapter_image_embeds`` for one call (see :func:`identity_embeds`)."""
        return identity_embeds(embedding, self.pipe, guidance_scale, embed_dim=self.embed_dim)


def uses_cfg(pipe, guidance_scale: float) -> bool:
    """Whether a call at ``guidance_scale`` runs classifier-free guidance (diffusers' own rule)."""
    return float(guidance_scale) > 1.0 and pipe.unet.config.time_cond_proj_dim is None


def identity_embeds(embedding: np.ndarray, pipe, guidance_scale: float, *, embed_dim: int | None = None) -> list[Any]:
    """The ``ip_adapter_image_embeds`` list for one FaceID call: ``[2, 1, D]`` (zeros, identity)
    with classifier-free guidance, ``[1, 1, D]`` without; on the UNet's device and dtype.
    Not repeated per image: the pipeline does that for ``num_images_per_prompt``."""
    import torch

    vector = np.asarray(embedding, dtype=np.float32).reshape(-1)
    if embed_dim is not None and vector.shape[0] != embed_dim:
        raise ValueError(f"the face embedding has {vector.shape[0]} values; the FaceID adapter takes {embed_dim}")
    if not np.all(np.isfinite(vector)):
        raise ValueError("the face embedding is not finite")
    embeds = torch.from_numpy(vector.copy()).reshape(1, 1, -1)
    if uses_cfg(pipe, guidance_scale):
        embeds = torch.cat([torch.zeros_like(embeds), embeds])
    return [embeds.to(device=pipe.unet.device, dtype=pipe.unet.dtype)]


def _read_state_dict(path: Path) -> dict[str, dict[str, Any]]:
    """The adapter file as ``{"image_proj": {...}, "ip_adapter": {...}}`` (``.bin`` nested, or
    ``.safetensors`` with ``image_proj.``/``ip_adapter.`` prefixes), read as diffusers reads it."""
    from diffusers.models.model_loading_utils import load_state_dict

    raw = load_state_dict(str(path))
    if "image_proj" in raw and "ip_adapter" in raw:
        return {"image_proj": dict(raw["image_proj"]), "ip_adapter": dict(raw["ip_adapter"])}
    nested: dict[str, dict[str, Any]] = {"image_proj": {}, "ip_adapter": {}}
    for key, value in raw.items():
        part, _, rest = key.partition(".")
        if part in nested and rest:
            nested[part][rest] = value
    return nested


def _split_loras(unet, ip_adapter: dict[str, Any]) -> tuple[dict[str, Any], dict[tuple[str, str], Any]]:
    """``ip_adapter`` without its LoRA keys, and the LoRA modules by (attention path, projection)."""
    names = list(unet.attn_processors)
    plain = {k: v for k, v in ip_adapter.items() if "_lora." not in k}
    loras: dict[tuple[str, str], Any] = {}
    lora_keys = {k for k in ip_adapter if "_lora." in k}
    for index, name in enumerate(names):
        path = name[: -len(".processor")]
        attn = unet.get_submodule(path)
        for projection in _LORA_PROJECTIONS:
            down_key, up_key = f"{index}.to_{projection}_lora.down.weight", f"{index}.to_{projection}_lora.up.weight"
            if down_key not in ip_adapter and up_key not in ip_adapter:
                continue
            if down_key not in ip_adapter or up_key not in ip_adapter:
                raise ValueError(f"FaceID LoRA {index}.to_{projection}_lora lacks its down or up weight")
            base = attn.to_out[0] if projection == "out" else getattr(attn, f"to_{projection}")
            down, up = ip_adapter[down_key], ip_adapter[up_key]
            if down.shape[1] != base.in_features or up.shape[0] != base.out_features:
                raise ValueError(f"FaceID LoRA {index}.to_{projection}_lora does not fit {path} "
                                 f"({base.in_features} → {base.out_features})")
            loras[(path, projection)] = _lora_module(down, up).to(device=unet.device, dtype=unet.dtype)
            lora_keys -= {down_key, up_key}
    if lora_keys:
        raise ValueError(f"FaceID LoRA keys match no attention of this UNet: {sorted(lora_keys)[:4]}")
    return plain, loras


def load_face_adapter(
    base,
    directory: str,
    *,
    subfolder: str | None = None,
    weight_name: str | None = None,
) -> FaceIDAdapter:
    """Load the IP-Adapter FaceID in local ``directory`` for SDXL text2img pipeline ``base``.

    ``subfolder``/``weight_name`` default to h94's file at the directory's root. The base
    UNet is left exactly as it was (see the module docstring).
    """
    from diffusers import AutoPipelineForText2Image

    from deployments.pipelines.ip_adapter import _ip_processor_types

    default_subfolder, default_weight = FACEID_FILES[_kind(base)]
    path = Path(directory) / (subfolder or default_subfolder or "") / (weight_name or default_weight)
    if not path.is_file():
        raise FileNotFoundError(f"no IP-Adapter FaceID weights at {path}")
    state = _read_state_dict(path)
    image_proj = state["image_proj"]
    if "norm.weight" not in image_proj or "proj.0.weight" not in image_proj or "proj.weight" in image_proj \
            or any(k.startswith("perceiver_resampler.") for k in image_proj):
        raise ValueError(f"{path.name} is not an IP-Adapter FaceID file (its projection is of another kind)")

    pipe = AutoPipelineForText2Image.from_pipe(base)
    pipe.set_progress_bar_config(disable=True)
    unet = pipe.unet
    if unet.encoder_hid_proj is not None:
        raise RuntimeError("the base UNet already carries an encoder_hid_proj (another adapter?)")
    ip_adapter, loras = _split_loras(unet, state["ip_adapter"])
    previous = dict(unet.attn_processors)
    previous_type = unet.config.encoder_hid_dim_type
    try:
        pipe.load_ip_adapter({"image_proj": image_proj, "ip_adapter": ip_adapter}, subfolder=None, weight_name=None,
                             image_encoder_folder=None)
        ip_types = _ip_processor_types()
        processors = {n: p for n, p in unet.attn_processors.items() if isinstance(p, ip_types)}
        projection = unet.encoder_hid_proj
    finally:
        unet.set_attn_processor(dict(previous))
        unet.encoder_hid_proj = None
        unet.config.encoder_hid_dim_type = previous_type
    if not processors or projection is None:
        raise RuntimeError(f"no IP-Adapter FaceID (processors, projection) loaded from {path}")
    return FaceIDAdapter(pipe, processors, projection, loras)
