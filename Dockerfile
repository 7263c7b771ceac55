# syntax=docker/dockerfile:1
# Worker image of the studio API: the same image runs the Ray head, every worker group
# and the autoscaler sidecar (k8s/profile.yaml `image`).
#
# Base: NVIDIA's CUDA 12.8 runtime + cuDNN on Ubuntu 22.04 (nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04).
# Python 3.11 comes from uv's standalone builds (Ubuntu 22.04 has no current 3.11 package).
# torch is installed first from PyTorch's CUDA wheel index, pinned to pyproject.toml's range,
# then the project and its pinned dependencies (`pip install .`), which keep that torch.
#
# Weights are NOT baked in: the RayService mounts them read-only at /models (a PVC, see
# k8s/profile.yaml `weights`). To bake them instead, put them in ./weights and build the
# `with-weights` target (bigger image, slower pulls, no volume needed):
#     docker build --target with-weights --build-arg WEIGHTS_SRC=weights -t studio-serve:baked .
#
#     docker build -t registry.example.com/studio-serve:0.1.0 .

ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04

FROM ${CUDA_IMAGE} AS runtime
ARG UV_VERSION=0.8.22
ARG PYTHON_VERSION=3.11
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
# Keep equal to the torch requirement of pyproject.toml (tests/cluster/test_dockerfile.py checks).
ARG TORCH_SPEC="torch>=2.4,<=2.13.0"

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    UV_PYTHON_INSTALL_DIR=/opt/python \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    STUDIO_MODELS_DIR=/models \
    HF_HUB_OFFLINE=1

# wget: KubeRay's default readiness/liveness probes call it; libgl/libglib: OpenCV's runtime needs.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl wget libglib2.0-0 libgl1 tini \
 && rm -rf /var/lib/apt/lists/* \
 && curl -LsSf "https://astral.sh/uv/${UV_VERSION}/install.sh" | env UV_INSTALL_DIR=/usr/local/bin sh \
 && uv python install "${PYTHON_VERSION}" \
 && uv venv --python "${PYTHON_VERSION}" /opt/venv

# torchvision (for spandrel's upscalers) from the same CUDA index, built for that torch.
RUN uv pip install --no-cache --index-url "${TORCH_INDEX_URL}" "${TORCH_SPEC}" torchvision

WORKDIR /app
# Dependencies first (cached while only the source changes), then the source.
# onnxruntime-gpu replaces PyPI's CPU-only onnxruntime: insightface and the background-removal
# model then run on the replica's GPU (CUDA provider), as deployments/pipelines/onnx_runtime.py picks.
COPY pyproject.toml README.md ./
RUN mkdir -p deployments ingress storage client cluster \
 && touch deployments/__init__.py ingress/__init__.py storage/__init__.py client/__init__.py cluster/__init__.py \
 && uv pip install --no-cache ".[upscale]" \
 && uv pip uninstall onnxruntime \
 && uv pip install --no-cache "onnxruntime-gpu>=1.18,<2" \
 && rm -rf build *.egg-info deployments ingress storage client cluster
COPY deployments ./deployments
COPY ingress ./ingress
COPY storage ./storage
COPY client ./client
COPY cluster ./cluster
COPY serve_config.yaml ./
RUN uv pip install --no-cache --no-deps . && rm -rf build *.egg-info

# Non-root: uid/gid 1000, matching the pods' securityContext (cluster/manifests.py).
RUN groupadd --gid 1000 ray && useradd --uid 1000 --gid 1000 --create-home --shell /bin/bash ray \
 && mkdir -p /models && chown ray:ray /models
USER 1000:1000
# KubeRay replaces the command with `ray start ...`; alone, the image prints Ray's version.
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["ray", "--version"]

FROM runtime AS with-weights
ARG WEIGHTS_SRC=weights
COPY --chown=1000:1000 ${WEIGHTS_SRC}/ /models/

# The default target (last stage): weights come from the mounted volume.
FROM runtime AS serve
