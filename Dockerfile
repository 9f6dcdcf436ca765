# marrowdx front service (CPU). Research use only.
# The GPU deployment pairs this image with NVIDIA's Triton image: deploy/docker-compose.yml.
FROM python:3.11-slim-bookworm AS base

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    MARROWDX_HOST=0.0.0.0 MARROWDX_PORT=50051 MARROWDX_STATE_DIR=/var/lib/marrowdx

RUN useradd --system --uid 10001 --home /app marrowdx
WORKDIR /app

# CPU torch first so the resolver does not pull a CUDA build.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
COPY pyproject.toml README.md ./
COPY server ./server
COPY clients ./clients
COPY proto ./proto
RUN pip install .

COPY model_repository ./model_repository
COPY samples ./samples
RUN mkdir -p /var/lib/marrowdx && chown 10001 /var/lib/marrowdx

USER 10001
EXPOSE 50051
# TLS for the check comes from MARROWDX_CLIENT_CA (set it when the service runs with TLS).
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s \
  CMD ["marrowdx", "health", "--server", "localhost:50051"]
ENTRYPOINT ["marrowdx"]
# With MARROWDX_TRITON_URL set (compose), no tritonserver is started inside this container.
CMD ["serve"]
