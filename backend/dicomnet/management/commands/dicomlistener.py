"""`manage.py dicomlistener`: the DICOM listener (C-ECHO, C-STORE), until stopped."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Listen for DICOM associations (C-ECHO, C-STORE of CR, DX, SC) from hospitals."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--port", type=int, default=None, help="default: DICOM_PORT")
        parser.add_argument("--bind", default=None, help="default: DICOM_BIND")

    def handle(self, *args: Any, **options: Any) -> None:
        from backend.dicomnet.listener import serve

        port = options["port"] or settings.DICOM_PORT
        bind = options["bind"] or settings.DICOM_BIND
        # pynetdicom logs every PDU at DEBUG; its INFO lines (associations) are enough.
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
        self.stdout.write(f"DICOM listener {settings.DICOM_AE_TITLE} on {bind}:{port} "
                          f"(studies close after {settings.DICOM_STUDY_QUIET_S:g} s quiet)")
        self.stdout.flush()
        with contextlib.suppress(KeyboardInterrupt):
            serve(bind, port, settings.DICOM_STUDY_QUIET_S)
