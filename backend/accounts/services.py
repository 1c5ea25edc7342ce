"""Writes for accounts and hospitals."""

from __future__ import annotations

from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.db import transaction
from rest_framework.authtoken.models import Token

from .models import Hospital, User


class SignupError(Exception):
    """A sign-up that cannot be honoured; the message is safe to show to the user."""


class AccountError(Exception):
    """An account change that cannot be honoured; the message is safe to show to the user."""


def _check_password(password: str, *, user: User) -> None:
    try:
        validate_password(password, user=user)
    except ValidationError as exc:
        raise AccountError(" ".join(exc.messages)) from exc


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


@transaction.atomic
def member_create(
    *, admin: User, username: str, password: str, email: str, role: str
) -> User:
    """An admin adds an account to their own hospital (the only way to join one)."""
    if User.objects.filter(username__iexact=username).exists():
        raise AccountError("This username is taken.")
    _check_password(password, user=User(username=username, email=email))
    try:
        return user_create(username=username, password=password, email=email,
                           hospital=admin.hospital, role=role)
    except ValidationError as exc:
        raise AccountError(" ".join(exc.messages)) from exc


def member_update(
    *, admin: User, member: User, role: str | None = None, is_active: bool | None = None
) -> User:
    if member.id == admin.id and (is_active is False or role == User.Role.CLINICIAN):
        raise AccountError("You cannot demote or deactivate your own account.")
    if role is not None:
        member.role = role
    if is_active is not None:
        member.is_active = is_active
        if not is_active:
            Token.objects.filter(user=member).delete()
    member.save(update_fields=["role", "is_active"])
    return member


def user_change_password(*, user: User, old_password: str, new_password: str) -> None:
    """Check the current password, validate and set the new one; API tokens are revoked."""
    if not user.check_password(old_password):
        raise AccountError("The current password is not correct.")
    _check_password(new_password, user=user)
    user.set_password(new_password)
    user.save(update_fields=["password"])
    Token.objects.filter(user=user).delete()


def token_get_or_create(*, user: User) -> str:
    token, _ = Token.objects.get_or_create(user=user)
    return token.key


def token_rotate(*, user: User) -> str:
    """Replace the user's token with a new one (the old one stops working)."""
    with transaction.atomic():
        Token.objects.filter(user=user).delete()
        return Token.objects.create(user=user).key


def token_revoke(*, user: User) -> bool:
    deleted, _ = Token.objects.filter(user=user).delete()
    return bool(deleted)


def hospital_settings_update(*, hospital: Hospital, scope_mode: str | None = None
                             ) -> dict[str, dict[str, str]]:
    """Change the hospital's settings; returns what changed as {field: {"from", "to"}}."""
    changes: dict[str, dict[str, str]] = {}
    if scope_mode is not None and scope_mode != hospital.scope_mode:
        if scope_mode not in Hospital.ScopeMode.values:
            raise AccountError(f"Unknown scope mode {scope_mode!r}.")
        changes["scope_mode"] = {"from": hospital.scope_mode, "to": scope_mode}
        hospital.scope_mode = scope_mode
    if changes:
        hospital.save(update_fields=list(changes))
    return changes
