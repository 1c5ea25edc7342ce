"""Celery application and the inference side (`celery -A worker worker -Q inference`)."""

from .celery_app import app

__all__ = ["app"]
