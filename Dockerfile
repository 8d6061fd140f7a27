# syntax=docker/dockerfile:1
# Privacy gateway container image, in two stages:
#   builder  builds the project's wheel and a wheel of every dependency (`pip wheel`);
#   runtime  installs only those wheels (`--no-index`): no source tree, no compiler, no
#            network access, and the wheels themselves never land in an image layer.
#
#   docker build -t privacy-gateway:0.1.0 .
#   docker build -t privacy-gateway:0.1.0-vault --build-arg GATEWAY_EXTRAS=vault .
#   docker run --rm privacy-gateway:0.1.0 --help
#
# GATEWAY_EXTRAS adds optional features (pyproject.toml extras), comma-separated: empty (default:
# the local keyring only), `aws` (boto3: AWS KMS), `vault` (hvac: OpenBao/Vault Transit) and
# `registry` (a Confluent Schema Registry client: "schema_id": "registry" and --schema-registry-url) and
# `protobuf` (protoc from grpcio-tools and the protobuf runtime: .proto policies).
# Configuration is by GATEWAY_* environment variables (see gateway/settings.py).
# BuildKit is required (the default builder since Docker 23) for `RUN --mount`.

# Python 3.11: the version the project is developed and tested on (requires-python >= 3.11).
# Debian bookworm (glibc 2.36): the cryptography wheel needs glibc >= 2.34.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
ARG GATEWAY_EXTRAS=""
# Refuse a misspelt extra here: pip would only warn and build an image without the provider.
RUN set -f; IFS=,; for extra in ${GATEWAY_EXTRAS}; do \
      case "${extra}" in \
        aws|vault|registry|protobuf) ;; \
        *) echo "GATEWAY_EXTRAS: '${extra}' is not one of aws, vault, registry, protobuf (got '${GATEWAY_EXTRAS}')" >&2; exit 1 ;; \
      esac; \
    done
WORKDIR /src
# README.md is the project's readme in pyproject.toml, so the wheel build needs it.
COPY pyproject.toml README.md ./
COPY gateway/ ./gateway/
# Every runtime dependency ships manylinux binary wheels (confluent-kafka bundles librdkafka), so
# the slim image needs no build tools; only the project's own wheel is built here. Versions are
# the pins of pyproject.toml.
RUN pip wheel --wheel-dir /wheels ".${GATEWAY_EXTRAS:+[${GATEWAY_EXTRAS}]}"

FROM ${PYTHON_IMAGE} AS runtime
ARG GATEWAY_EXTRAS=""
LABEL org.opencontainers.image.title="privacy-gateway" \
      org.opencontainers.image.description="Kafka privacy gateway: validate, minimize, tokenize and envelope-encrypt events" \
      org.opencontainers.image.licenses="Apache-2.0"
# GATEWAY_METRICS_HOST: the metrics port binds 127.0.0.1 by default, but in a container the
# kubelet's probes and Prometheus connect from outside the container's loopback.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    GATEWAY_METRICS_HOST=0.0.0.0 \
    GATEWAY_SCHEMAS=/app/schemas \
    GATEWAY_KEYRING=/keys/keyring.json

# Unprivileged runtime user; uid 10001 matches runAsUser in k8s/base/deployment-*.yaml.
RUN groupadd --system --gid 10001 gateway \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /app \
            --shell /usr/sbin/nologin gateway

# Install the gateway from its wheel only. --no-index: nothing is fetched or built here, so the
# runtime stage installs exactly what the builder resolved. pip's version pin is the wheel itself.
# hadolint ignore=DL3013
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels "privacy-gateway${GATEWAY_EXTRAS:+[${GATEWAY_EXTRAS}]}" \
 && gateway --help >/dev/null

WORKDIR /app
# The example policies; a deployment mounts its own over /app/schemas or sets GATEWAY_SCHEMAS.
COPY schemas/ /app/schemas/
# /keys is where docker-compose mounts the keyring volume; owning it here lets a fresh named
# volume inherit uid 10001, so `gateway keys init` can write the keyring there (mode 0600).
RUN mkdir -p /keys \
 && chown 10001:10001 /keys \
 && chmod 0700 /keys

USER 10001:10001

# Prometheus /metrics, /healthz and /readyz (enabled with GATEWAY_METRICS_PORT=9108).
EXPOSE 9108

ENTRYPOINT ["gateway"]
CMD ["run"]
