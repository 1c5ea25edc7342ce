"""Old import path of the Celery app, which now lives in backend/config/celery.py."""

from backend.config.celery import app

__all__ = ["app"]
