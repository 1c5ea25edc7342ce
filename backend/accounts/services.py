"""Writes for accounts and hospitals."""

from __future__ import annotations

from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.db import transaction
from rest_framework.authtoken.models import Token

from .models import Hospital, User


class SignupError(Exception):
    """A sign-up that cannot be honoured; the message is safe to show to the user."""


@transaction.atomic
def user_signup(*, username: str, password: str, email: str, hospital_name: str) -> User:
    """Create a user; a new hospital name creates that hospital with the user as its admin.

    Joining an existing hospital needs that hospital's admin, so it is refused here.
    """
    hospital_name = hospital_name.strip()
    if not hospital_name:
        raise SignupError("A hospital name is required.")
    if User.objects.filter(username__iexact=username).exists():
        raise SignupError("This username is taken.")
    if Hospital.objects.filter(name__iexact=hospital_name).exists():
        raise SignupError(
            "This hospital already exists; ask its admin to create your account."
        )
    candidate = User(username=username, email=email)
    try:
        validate_password(password, user=candidate)
    except ValidationError as exc:
        raise SignupError(" ".join(exc.messages)) from exc
    hospital = Hospital.objects.create(name=hospital_name)
    return user_create(
        username=username, password=password, email=email, hospital=hospital,
        role=User.Role.ADMIN,
    )


def user_create(
    *, username: str, password: str, email: str, hospital: Hospital, role: str
) -> User:
    user = User(username=username, email=email, hospital=hospital, role=role)
    user.set_password(password)
    user.full_clean(exclude=["password"])
    user.save()
    return user


def token_get_or_create(*, user: User) -> str:
    token, _ = Token.objects.get_or_create(user=user)
    return token.key
