"""Create a hospital and its admin non-interactively, for a first user or automation.

An existing hospital is refused unless --existing is given: otherwise anyone who signed up
under a hospital's name first would receive the admin the operator meant for the real one
(and see that hospital's studies). With --existing the command names the hospital's current
admins, so the operator can tell whether the hospital is the one they meant.
"""

from __future__ import annotations

import os
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from backend.accounts.models import Hospital, User
from backend.accounts.services import token_issue, user_create


def admins_of(hospital: Hospital) -> str:
    names = list(hospital.members.filter(role=User.Role.ADMIN).order_by("username")
                 .values_list("username", flat=True))
    return ", ".join(names) if names else "none"


class Command(BaseCommand):
    help = (
        "Create a hospital and an admin user for it (an existing hospital needs --existing). "
        "Password from --password or $PNEUMO_ADMIN_PASSWORD."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--hospital", required=True)
        parser.add_argument("--username", required=True)
        parser.add_argument("--email", default="")
        parser.add_argument("--password", default=os.environ.get("PNEUMO_ADMIN_PASSWORD"))
        parser.add_argument(
            "--existing", action="store_true",
            help="add the admin to a hospital that already exists (its admins are listed)",
        )
        parser.add_argument("--print-token", action="store_true",
                            help="print a new API token (shown once)")

    @transaction.atomic
    def handle(self, *args: Any, **options: Any) -> None:
        password = options["password"]
        if not password:
            raise CommandError("Give --password or set PNEUMO_ADMIN_PASSWORD.")
        name = options["hospital"].strip()
        if not name:
            raise CommandError("--hospital must not be empty.")
        # Sign-up compares names case-insensitively; so does this.
        hospital = Hospital.objects.filter(name__iexact=name).first()
        if hospital is not None and not options["existing"]:
            raise CommandError(
                f"Hospital {hospital.name!r} already exists (id {hospital.id}, created "
                f"{hospital.created_at:%Y-%m-%d %H:%M} UTC; admins: {admins_of(hospital)}). "
                "If it is the hospital you mean, run again with --existing; otherwise choose "
                "another name."
            )
        if hospital is None:
            if options["existing"]:
                raise CommandError(f"No hospital named {name!r} exists (--existing given).")
            hospital = Hospital.objects.create(name=name)
            self.stdout.write(f"Created hospital {hospital.name}.")
        else:
            self.stdout.write(f"Hospital {hospital.name} exists; its admins: "
                              f"{admins_of(hospital)}.")
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
            self.stdout.write(token_issue(user=user).key)
