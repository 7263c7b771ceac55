# syntax=docker/dockerfile:1
# Worker image of the studio API: the same image runs the Ray head, every worker group
# and the autoscaler sidecar (k8s/profile.yaml `image`).
#
# Base: NVIDIA's CUDA 12.8 runtime + cuDNN on Ubuntu 22.04 (nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04),
# pinned by digest: CUDA_DIGEST has no default, so a build without it fails ("invalid reference format")
# rather than take whatever the tag points at today. uv is PyPI's wheel, checked against its SHA-256
# before use (no `curl | sh`); Python 3.11 comes from uv's standalone builds (uv checks their SHA-256
# against the hashes it ships; Ubuntu 22.04 has no current 3.11 package).
# torch is installed first from PyTorch's CUDA wheel index, pinned to pyproject.toml's range,
# then the project and its pinned dependencies (`pip install .`), which keep that torch.
#
# Weights are NOT baked in: the RayService mounts them read-only at /models (a PVC, see
# k8s/profile.yaml `weights`). To bake them instead, put them in ./weights and build the
# `with-weights` target (bigger image, slower pulls, no volume needed):
#     docker build --target with-weights --build-arg WEIGHTS_SRC=weights -t studio-serve:baked .
#
#     CUDA_DIGEST=$(docker buildx imagetools inspect nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04 \
#                   --format '{{json .Manifest.Digest}}' | tr -d '"')
#     docker build --build-arg CUDA_DIGEST="$CUDA_DIGEST" -t registry.example.com/studio-serve:0.1.0 .
#
# then pin the pushed image by its digest in k8s/profile.yaml (`image: <repo>@sha256:...`).

ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04
# sha256:<64 hex> of CUDA_IMAGE's manifest list (required).
ARG CUDA_DIGEST

FROM ${CUDA_IMAGE}@${CUDA_DIGEST} AS runtime
# uv from PyPI: the x86_64 manylinux wheel of UV_VERSION and its SHA-256 (PyPI's "Download files");
# another architecture: pass that wheel's URL and hash.
ARG UV_VERSION=0.8.22
ARG UV_WHEEL_URL=https://files.pythonhosted.org/packages/3a/a9/a83cee9b8cf63e57ce64ba27c77777cc66410e144fd178368f55af1fa18d/uv-0.8.22-py3-none-manylinux_2_17_x86_64.manylinux2014_x86_64.whl
ARG UV_WHEEL_SHA256=8efec4ef5acddc35f0867998c44e0b15fc4dace1e4c26d01443871a2fbb04bf6
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

# wget: KubeRay's default readiness/liveness probes call it; libgl/libglib: OpenCV's runtime needs;
# unzip only to take uv's binary out of its wheel (removed after).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates wget unzip libglib2.0-0 libgl1 tini \
 && wget -q -O /tmp/uv.whl "${UV_WHEEL_URL}" \
 && echo "${UV_WHEEL_SHA256}  /tmp/uv.whl" | sha256sum --check --strict - \
 && unzip -j /tmp/uv.whl "uv-${UV_VERSION}.data/scripts/uv" -d /usr/local/bin \
 && rm /tmp/uv.whl \
 && apt-get purge -y unzip && apt-get autoremove -y && rm -rf /var/lib/apt/lists/* \
 && uv --version \
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

# Non-root: uid/gid 1000, matching the pods' securityContext (cluster/pods.py). The pods run it on a
# read-only root filesystem: Ray, Python and the libraries write to /tmp, /tmp/ray and $HOME only
# (emptyDirs there), so nothing below needs to be writable at run time.
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
