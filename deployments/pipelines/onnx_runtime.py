"""ONNX Runtime sessions on the replica's GPU when it has one, else on the CPU."""

from __future__ import annotations


def providers(device: str = "auto") -> list[str]:
    """Execution providers for ``device`` (``auto``, ``cuda`` or ``cpu``): CUDA first when
    onnxruntime has it and the replica was given a GPU, always with the CPU as the fallback."""
    import onnxruntime

    available = onnxruntime.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in available:
        if device == "cuda" or _has_gpu():
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "cuda":
        raise RuntimeError("device cuda was asked for, but onnxruntime has no CUDAExecutionProvider here")
    return ["CPUExecutionProvider"]


def _has_gpu() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False
