# syntax=docker/dockerfile:1
# The light side: the REST API (`videoscore api`), the producer CLI, schema migrations and the queue-load
# exporter (`videoscore fleet --serve 9109`). No torch, transformers, av or numpy.
# Build from the repository root:  docker build -f docker/producer.Dockerfile -t videoscore-api .

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
RUN pip install '.[api]'

FROM python:3.11-slim-bookworm
RUN useradd --create-home --uid 10001 videoscore
COPY --from=build /opt/venv /opt/venv
# the exporter's /metrics must be reachable from Prometheus in another container (loopback is the default)
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 VIDEOSCORE_METRICS_HOST=0.0.0.0
USER videoscore
EXPOSE 8000 9109
# the API's liveness (/healthz: the process answers; /readyz adds the database and broker). No curl in a slim
# image: the venv's python asks. Other commands from this image (the exporter, `db upgrade`) set their own.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=3)"]
ENTRYPOINT ["videoscore"]
CMD ["api", "--host", "0.0.0.0", "--port", "8000"]
