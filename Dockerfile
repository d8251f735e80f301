# syntax=docker/dockerfile:1
# Build: a virtualenv with the broker and its locked dependencies, no dev tools.
FROM python:3.11-slim AS build
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PROJECT_ENVIRONMENT=/opt/venv
RUN pip install --no-cache-dir uv==0.13.9
WORKDIR /src
COPY pyproject.toml uv.lock README.md ./
# The lock names the client distribution (a dev dependency, not installed here) by path.
COPY clients/python ./clients/python
RUN uv sync --locked --no-dev --no-install-project
COPY service ./service
COPY alembic ./alembic
RUN uv sync --locked --no-dev --no-editable

# Run: the virtualenv only, as an unprivileged user.
FROM python:3.11-slim
# A fixed uid and gid (10001), so an orchestrator can check runAsNonRoot (Kubernetes does).
RUN groupadd --system --gid 10001 broker \
    && useradd --system --uid 10001 --gid broker --home-dir /app broker \
    && mkdir -p /app && chown broker:broker /app
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /app
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"]
CMD ["token-broker", "serve", "--host", "0.0.0.0", "--port", "8000"]
