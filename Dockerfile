# syntax=docker/dockerfile:1
# Velro auth backend: one image for web (gunicorn), Celery worker and Celery beat.
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

COPY . .

# Static files are collected at build time (served by WhiteNoise). The settings
# need a secret key and a database URL to import; these build-only values never
# reach the runtime environment (docker-compose.yml supplies the real ones).
ARG BUILD_SECRET_KEY=collectstatic-only-build-key-not-used-at-runtime-0123456789
ARG BUILD_DATABASE_URL=sqlite:////tmp/build.sqlite3
RUN DJANGO_SECRET_KEY="$BUILD_SECRET_KEY" \
    DATABASE_URL="$BUILD_DATABASE_URL" \
    REDIS_URL="" \
    CELERY_BROKER_URL="redis://localhost:6379/1" \
    python manage.py collectstatic --noinput \
    && rm -f /tmp/build.sqlite3

USER velro

EXPOSE 8000
ENV BIND=0.0.0.0:8000
CMD ["gunicorn", "-c", "gunicorn.conf.py", "velro.wsgi:application"]
