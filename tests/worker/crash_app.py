"""A worker that dies (SIGKILL, no goodbye) on one marked image: `celery -A tests.worker.crash_app`.

Stands for any image that kills the process classifying it (a native crash in a model
operator, the kernel's OOM killer). Only the test's worker loads this module; the product's
code is unchanged: the marked file is recognised by a byte string inside it.
"""

from __future__ import annotations

import os
import signal
from typing import Any

from celery import signals

from worker import app

CRASH_MARKER = b"CRASH-THE-WORKER"


@signals.worker_process_init.connect
def _crash_on_the_marked_image(**kwargs: object) -> None:
    """In each pool process (Django is set up by then): wrap the pipeline's per-image step."""
    from django.core.files.storage import default_storage

    from worker import inference

    prepare = inference._prepare

    def prepare_or_die(image: Any, *args: Any) -> Any:
        with default_storage.open(image.file, "rb") as handle:
            if CRASH_MARKER in handle.read():
                os.kill(os.getpid(), signal.SIGKILL)
        return prepare(image, *args)

    inference._prepare = prepare_or_die


__all__ = ["app"]
