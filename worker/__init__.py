"""The worker side: Celery tasks and batched inference (`celery -A worker worker -Q inference`).

The Celery app itself lives in backend/config/celery.py; this package re-exports it so that
`celery -A worker` keeps working, and connects the worker lifecycle handlers.
"""

from .tuning import passive_openmp_threads

# Before torch is imported anywhere in the worker.
passive_openmp_threads()

from backend.config.celery import app  # noqa: E402

from . import signals  # noqa: E402,F401  (connects the worker lifecycle handlers)

__all__ = ["app"]
