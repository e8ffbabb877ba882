# mystocks-gpu workers (stream workers, job workers, control app): one image per target.
#   docker build --target cpu -t mystocks-gpu:0.1.0 .          (python:3.11-slim, CPU backend)
#   docker build --target gpu -t mystocks-gpu:0.1.0-cuda12 .   (official NVIDIA CUDA 12 runtime + CuPy, NVML)
# The entrypoint is the CLI: `docker run mystocks-gpu:0.1.0 run features --metrics-port 9108`.
# Linted with hadolint (tests/unit/test_k8s_manifests.py); Kubernetes manifests in deploy/k8s.

FROM python:3.11-slim-bookworm AS cpu
ENV PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    MYSTOCKS_CACHE_DIR=/var/cache/mystocks-gpu
WORKDIR /app
COPY pyproject.toml README.md ./
COPY mystocks_gpu ./mystocks_gpu
RUN pip install --no-cache-dir . \
    && useradd --system --uid 10001 --home-dir /app mystocks \
    && mkdir -p /var/cache/mystocks-gpu && chown mystocks /var/cache/mystocks-gpu
USER 10001
EXPOSE 6066 9108 9109 9110
ENTRYPOINT ["mystocks-gpu"]
CMD ["--help"]

FROM nvidia/cuda:12.6.3-runtime-ubuntu24.04 AS gpu
ENV PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    MYSTOCKS_CACHE_DIR=/var/cache/mystocks-gpu PATH=/opt/venv/bin:$PATH
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv
WORKDIR /app
COPY pyproject.toml README.md ./
COPY mystocks_gpu ./mystocks_gpu
# the local package with its gpu extra (versions bounded in pyproject.toml)
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[gpu]" \
    && useradd --system --uid 10001 --home-dir /app mystocks \
    && mkdir -p /var/cache/mystocks-gpu && chown mystocks /var/cache/mystocks-gpu
USER 10001
EXPOSE 6066 9108 9109 9110
ENTRYPOINT ["mystocks-gpu"]
CMD ["--help"]
