"""Test runs: a real PostgreSQL by default (override with DATABASE_URL), fast hashing."""

from .base import *  # noqa: F403
from .base import REPO_ROOT, SECRET_KEY, env

SECRET_KEY = SECRET_KEY or "test-key-not-secret"  # noqa: S105
DEBUG = False
DATABASES = {
    "default": env.db_url(
        "DATABASE_URL", default="postgres://postgres@127.0.0.1:5432/pneumoscan"
    )
}
MEDIA_ROOT = REPO_ROOT / "var" / "test-media"
# Argon2 is deliberately slow; tests only need a correct hasher.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
