# syntax=docker/dockerfile:1
# The GPU worker: `videoscore worker`, one process per GPU (one GPU per container, or `--gpus 0,1,…`).
# torch's CUDA wheels bring the CUDA runtime; the host (NVIDIA Container Toolkit) provides the driver.
# Build from the repository root:  docker build -f docker/worker.Dockerfile -t videoscore-worker .

FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY core core
COPY db db
COPY producer producer
COPY worker worker
COPY api api
# the namespace root: its own modules, and links to the rooms copied above
COPY videoscore videoscore
RUN pip install '.[worker]'

FROM python:3.11-slim-bookworm
RUN useradd --create-home --uid 10001 videoscore && mkdir -p /models /scratch && chown videoscore /models /scratch
COPY --from=build /opt/venv /opt/venv
# HF_HOME is the model cache: mount a volume there so weights are downloaded once per host, not per start.
ENV PATH=/opt/venv/bin:$PATH \
    HF_HOME=/models \
    VIDEOSCORE_WORK_DIR=/scratch \
    VIDEOSCORE_METRICS_PORT=9108 \
    VIDEOSCORE_METRICS_HOST=0.0.0.0 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    PYTHONUNBUFFERED=1
VOLUME ["/models"]
USER videoscore
EXPOSE 9108
# liveness: the worker's own /metrics answers on VIDEOSCORE_METRICS_PORT (served by the worker process from the
# moment its runtime is built, before the model loads; a dead or wedged process stops answering). No curl in
# a slim image: the venv's python asks.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/metrics' % os.environ.get('VIDEOSCORE_METRICS_PORT', '9108'), timeout=5)"]
# SIGTERM is Celery's warm shutdown: jobs in flight finish before the process exits. Give it time
# (compose: stop_grace_period; Kubernetes: terminationGracePeriodSeconds).
STOPSIGNAL SIGTERM
ENTRYPOINT ["videoscore"]
CMD ["worker"]
