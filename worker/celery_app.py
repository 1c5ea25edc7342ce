"""The Celery application, configured from Django settings (namespace CELERY_)."""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "backend.config.settings.local")

# `include` imports the tasks (and so torch) only in worker processes; the web process sends
# tasks by name and never loads the model.
app = Celery("pneumoscan", include=["worker.tasks"])
app.config_from_object("django.conf:settings", namespace="CELERY")
