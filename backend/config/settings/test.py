"""Test runs: a real PostgreSQL by default (override with DATABASE_URL), fast hashing."""

import tempfile
from pathlib import Path

from .base import *  # noqa: F403
from .base import SECRET_KEY, STORAGES, env

SECRET_KEY = SECRET_KEY or "test-key-not-secret"
DEBUG = False
DATABASES = {
    "default": env.db_url(
        "DATABASE_URL", default="postgres://postgres@127.0.0.1:5432/pneumoscan"
    )
}
# The test run's own media folder under pytest's temporary directory (tests/conftest.py sets
# TEST_MEDIA_ROOT for the worker processes it starts).
MEDIA_ROOT = Path(env.str("TEST_MEDIA_ROOT",
                          default=str(Path(tempfile.gettempdir()) / "pneumoscan-test-media")))
# Argon2 is deliberately slow; tests only need a correct hasher.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# The default storage follows STORAGE_BACKEND (filesystem unless a test runs the S3 path).
STORAGES = {
    **STORAGES,
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
# Throttle counters per test process; tests/backend/conftest.py clears them between tests.
CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
# Tests use a Redis database of their own, never the one `make run` uses (see tests/conftest.py).
# TEST_REDIS_URL wins: settings are read before conftest's pytest_configure could set REDIS_URL.
REDIS_URL = env.str("TEST_REDIS_URL", default=env.str("REDIS_URL",
                                                      default="redis://127.0.0.1:6379/9"))
CELERY_BROKER_URL = REDIS_URL
