# Privacy gateway container image.
#
#   docker build -t privacy-gateway:0.1.0 .
#   docker run --rm privacy-gateway:0.1.0 --help
#
# Configuration is by GATEWAY_* environment variables (see gateway/config.py).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Unprivileged runtime user; uid 10001 matches runAsUser in k8s/deployment.yaml.
RUN groupadd --system --gid 10001 gateway \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /app \
            --shell /usr/sbin/nologin gateway

WORKDIR /src
# README.md is referenced by pyproject.toml (project.readme), so the build needs it.
COPY pyproject.toml README.md ./
COPY gateway/ ./gateway/
RUN pip install --no-cache-dir . \
 && rm -rf /src

# The default GATEWAY_SCHEMAS ("schemas") resolves against this working directory.
WORKDIR /app
COPY schemas/ /app/schemas/
# /keys is where docker-compose mounts the keyring volume; owning it here lets a fresh
# named volume inherit uid 10001 so the gateway can write its local keyring there.
RUN mkdir -p /keys \
 && chown 10001:10001 /keys \
 && chmod 0700 /keys

USER 10001:10001

# Prometheus /metrics, /healthz and /readyz (enabled with GATEWAY_METRICS_PORT=9108).
EXPOSE 9108

ENTRYPOINT ["gateway"]
CMD ["run"]
