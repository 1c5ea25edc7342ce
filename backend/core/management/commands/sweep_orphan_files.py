"""Delete stored files that no row refers to (what the periodic sweep does, on demand)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand

from backend.studies.deletion import storage_sweep_orphans


class Command(BaseCommand):
    help = ("Delete files under studies/ in storage that no study, image or result refers to, "
            "once older than --grace-hours (default ORPHAN_FILE_GRACE_S).")

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--grace-hours", type=float,
                            default=settings.ORPHAN_FILE_GRACE_S / 3600.0)
        parser.add_argument("--dry-run", action="store_true", help="count, delete nothing")

    def handle(self, *args: Any, **options: Any) -> None:
        outcome = storage_sweep_orphans(grace_s=options["grace_hours"] * 3600.0,
                                        dry_run=options["dry_run"])
        verb = "would delete" if options["dry_run"] else "deleted"
        self.stdout.write(f"Orphan files: {verb} {outcome.files_deleted}; "
                          f"{outcome.files_kept_young} younger than the grace period kept.")
