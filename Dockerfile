# context-manager: one image for every role (api, ws, dashboard, migrate), chosen by the command.
#
#   docker build -t context-manager .
#   docker run --rm -p 127.0.0.1:3849:3849 -e SECRET_KEY=… context-manager ws
#
# The package is installed from pyproject.toml. It is installed in place (editable) because
# `context-manager migrate` finds alembic.ini and alembic/ beside the package. Its build includes
# the Python client's package (clients/python/context_manager_client, used by the CLI's tail and
# publish), so nothing unpublished has to be resolved.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    # Inside a container the service listens on every interface; publish ports on 127.0.0.1.
    HOST=0.0.0.0 \
    LOG_FORMAT=json

WORKDIR /app

# Dependencies first, so code changes do not reinstall them.
COPY pyproject.toml README.md ./
COPY app/__init__.py app/__init__.py
COPY clients/python/context_manager_client/__init__.py clients/python/context_manager_client/__init__.py
RUN pip install --upgrade pip \
    && pip install -e . \
    && rm -rf /root/.cache

COPY alembic.ini ./
COPY alembic ./alembic
COPY deploy/healthcheck.py ./deploy/healthcheck.py
COPY app ./app
COPY clients/python/context_manager_client ./clients/python/context_manager_client
RUN pip install --no-deps -e . \
    && groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /app --no-create-home app \
    && mkdir -p /app/data \
    && chown -R app:app /app/data

USER app

EXPOSE 3847 3848 3849

# Ready = database and broker reachable, start-up finished, not draining (/readyz, app/ops.py),
# on whichever port this container's role serves.
HEALTHCHECK --interval=10s --timeout=4s --start-period=30s --retries=3 \
    CMD ["python", "/app/deploy/healthcheck.py"]

ENTRYPOINT ["context-manager"]
CMD ["serve"]
