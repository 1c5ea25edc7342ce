"""The Celery application (where cookiecutter-django keeps it), configured from Django settings
(namespace CELERY_).

The web process sends tasks by name through this app (backend/studies/dispatch.py) and never
imports the worker package; `include` names the tasks' module as a string, imported only when
a worker starts (`celery -A worker worker` or `celery -A backend.config worker`).
"""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "backend.config.settings.local")

app = Celery("pneumoscan", include=["worker.tasks", "worker.dicomnet"])
app.config_from_object("django.conf:settings", namespace="CELERY")
