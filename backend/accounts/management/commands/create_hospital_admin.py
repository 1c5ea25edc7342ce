"""Create (or update) a hospital admin non-interactively, for a first user or automation."""

from __future__ import annotations

import os
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from backend.accounts.models import Hospital, User
from backend.accounts.services import token_get_or_create, user_create


class Command(BaseCommand):
    help = (
        "Create a hospital (if new) and an admin user for it. "
        "Password from --password or $PNEUMO_ADMIN_PASSWORD."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--hospital", required=True)
        parser.add_argument("--username", required=True)
        parser.add_argument("--email", default="")
        parser.add_argument("--password", default=os.environ.get("PNEUMO_ADMIN_PASSWORD"))
        parser.add_argument("--print-token", action="store_true", help="print an API token")

    def handle(self, *args: Any, **options: Any) -> None:
        password = options["password"]
        if not password:
            raise CommandError("Give --password or set PNEUMO_ADMIN_PASSWORD.")
        hospital, _ = Hospital.objects.get_or_create(name=options["hospital"])
        user = User.objects.filter(username=options["username"]).first()
        if user is None:
            user = user_create(
                username=options["username"], password=password, email=options["email"],
                hospital=hospital, role=User.Role.ADMIN,
            )
            self.stdout.write(f"Created admin {user.username} of {hospital.name}.")
        else:
            if user.hospital_id not in (None, hospital.id):
                raise CommandError(f"{user.username} belongs to another hospital.")
            user.hospital, user.role = hospital, User.Role.ADMIN
            user.set_password(password)
            user.save()
            self.stdout.write(f"Updated admin {user.username} of {hospital.name}.")
        if options["print_token"]:
            self.stdout.write(token_get_or_create(user=user))
