"""The Celery application, configured from Django settings (namespace CELERY_)."""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "backend.config.settings.local")
# Before torch is imported: OpenMP threads that wait passively instead of spinning. On a CPU
# shared with other processes, spinning threads made batched inference 2-10x slower
# (docs/benchmarks.md); on a dedicated machine the difference is within noise.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# `include` imports the tasks only in worker processes; the web process sends tasks by name.
# worker.tasks itself imports neither torch nor the model: an inference worker's pool process
# loads them after the fork (worker/signals.py), so CUDA is never initialised in a parent.
app = Celery("pneumoscan", include=["worker.tasks", "backend.dicomnet.tasks"])
app.config_from_object("django.conf:settings", namespace="CELERY")

from . import signals  # noqa: E402,F401  (connects the worker lifecycle handlers)
