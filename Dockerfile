# Onramp: one image for both processes (docs/deploy.md).
#   web   the default command: gunicorn config.wsgi on port 8000
#   pool  docker run IMAGE python manage.py runpool --host NAME   (one per host)
#   migrate once per release: docker run IMAGE python manage.py migrate --no-input
# Configuration is the environment only; docs/settings.md lists every variable.

# --- builder: the pinned dependencies, installed into a virtualenv ---------------------
FROM python:3.11-slim AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# pyproject.toml declares no packages (packages = []), so installing it installs exactly
# the pinned dependencies; copying it alone keeps this layer cached across code edits.
COPY pyproject.toml ./
RUN pip install .

# --- runtime: slim Python, the virtualenv, the code, no build tools ----------------------
FROM python:3.11-slim AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DJANGO_SETTINGS_MODULE=config.settings \
    VAR_DIR=/var/lib/onramp \
    CACHE_DIR=/var/lib/onramp/cache \
    PORT=8000 \
    WEB_CONCURRENCY=3 \
    GUNICORN_TIMEOUT=30

# A fixed numeric id so orchestrators can verify runAsNonRoot and volumes can be chowned.
RUN groupadd --system --gid 10001 onramp \
    && useradd --system --uid 10001 --gid onramp --home-dir /var/lib/onramp \
        --no-create-home --shell /usr/sbin/nologin onramp \
    && mkdir -p /var/lib/onramp/cache \
    && chown -R onramp:onramp /var/lib/onramp

COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
# The code stays owned by root: the app user can read it but not change it.
COPY . .
# The throwaway SECRET_KEY exists only for this command (settings refuse to load without
# one); DEBUG=0 selects the manifest storage, so the hashed, compressed files ship in the
# image and whitenoise serves them.
RUN DEBUG=0 SECRET_KEY=collectstatic-at-build-time-only-not-a-secret \
    python manage.py collectstatic --no-input -v0 \
    && python -m compileall -q config onboarding pool

USER 10001:10001
EXPOSE 8000
# urllib, since slim has no curl. The Host header is the first ALLOWED_HOSTS entry, so the
# probe passes host validation whatever the deployment allows; /healthz is exempt from
# the HTTPS redirect (settings.SECURE_REDIRECT_EXEMPT).
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as r; hosts = [h.strip().lstrip('.') for h in os.environ.get('ALLOWED_HOSTS', 'localhost').split(',') if h.strip() not in ('', '*')]; r.urlopen(r.Request('http://127.0.0.1:%s/healthz?scope=web' % os.environ.get('PORT', '8000'), headers={'Host': (hosts or ['localhost'])[0]}), timeout=4)"]
# sh -c so the defaults above can be overridden per container; exec so gunicorn is PID 1
# and gets SIGTERM directly (graceful stop). /dev/shm: worker heartbeats off the overlay fs.
CMD ["sh", "-c", "exec gunicorn config.wsgi --bind 0.0.0.0:${PORT:-8000} --workers ${WEB_CONCURRENCY:-3} --timeout ${GUNICORN_TIMEOUT:-30} --worker-tmp-dir /dev/shm --access-logfile -"]
