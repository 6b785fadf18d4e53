# Sophia Gateway: slim image, non-root, serving the policy in /app/routing_policies.
# EXTRAS names the optional dependencies to install: by default the Snowflake memory backend
# (memory.backend: snowflake, or MEMORY_URL=snowflake://); --build-arg EXTRAS= builds without it.
FROM python:3.11-slim AS build
ARG EXTRAS=snowflake
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
# DL3013 (pin versions in pip) is about packages named on the command line; this installs the
# project itself, whose dependencies pyproject.toml bounds.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir --prefix=/install ".${EXTRAS:+[$EXTRAS]}"

FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    SOPHIA_HOST=0.0.0.0 SOPHIA_PORT=8080 SOPHIA_POLICY=/app/routing_policies/default.yaml
COPY --from=build /install /usr/local
# Numeric uid and gid 10001: Kubernetes' runAsNonRoot can check a numeric USER (k8s/base sets the same).
RUN groupadd --system --gid 10001 sophia \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin sophia
WORKDIR /app
COPY routing_policies ./routing_policies
# The embedded memory store and its index live in /app/data (mount a volume to keep them;
# replicas that share memories use the Snowflake backend instead).
RUN mkdir -p /app/data && chown 10001:10001 /app/data
USER 10001
EXPOSE 8080
# SIGTERM drains in-flight requests (server.drain_grace_s) before exiting 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["sophia-gateway"]
CMD ["serve"]
