# syntax=docker/dockerfile:1
# Velro auth backend: one image for web (gunicorn), Celery worker and Celery beat.
#
#   docker build --build-arg GIT_COMMIT="$(git rev-parse HEAD)" -t velro .
#
# velro/tests/test_image.py replays this file step by step without Docker (same
# pip install from the shared runtime venv, the build context as .dockerignore
# leaves it, every RUN, the same non-root user): keep RUN paths relative to
# WORKDIR so the replay can run them as written.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

RUN groupadd --system velro \
    && useradd --system --gid velro --home-dir /app --no-create-home --shell /usr/sbin/nologin velro

# Dependencies first: this layer is reused until requirements.txt changes.
# (psycopg[binary], argon2-cffi and bcrypt ship manylinux wheels: no compiler needed.)
COPY requirements.txt .
RUN pip install -r requirements.txt

# The code stays owned by root: the app cannot rewrite itself.
COPY . .

# Static files are collected at build time (served by WhiteNoise). The settings
# need a secret key and a database URL to import; these build-only values never
# reach the runtime environment (docker-compose.yml supplies the real ones).
ARG BUILD_SECRET_KEY=collectstatic-only-build-key-not-used-at-runtime-0123456789
RUN DJANGO_SECRET_KEY="$BUILD_SECRET_KEY" \
    DATABASE_URL="sqlite:///:memory:" \
    REDIS_URL="" \
    CELERY_BROKER_URL="redis://localhost:6379/1" \
    python manage.py collectstatic --noinput

# The only place the app writes: var/ (gunicorn's Prometheus multiprocess files
# in var/prometheus/, Celery beat's schedule in var/celerybeat-schedule). It
# belongs to the runtime user; mount a volume here to keep beat's schedule.
RUN mkdir -p var/prometheus \
    && chown -R velro:velro var \
    && chmod 0750 var

# Last, so a new commit does not invalidate the layers above. /__version shows them.
ARG GIT_COMMIT=unknown
ARG BUILD_TIME=
ENV GIT_COMMIT=$GIT_COMMIT \
    BUILD_TIME=$BUILD_TIME

USER velro

EXPOSE 8000
ENV BIND=0.0.0.0:8000
CMD ["gunicorn", "-c", "gunicorn.conf.py", "velro.wsgi:application"]
