"""Writes for accounts and hospitals."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone
from knox.models import AuthToken

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
            token_revoke(user=member)
    member.save(update_fields=["role", "is_active"])
    return member


def user_change_password(*, user: User, old_password: str, new_password: str) -> None:
    """Check the current password, validate and set the new one; API tokens are revoked."""
    if not user.check_password(old_password):
        raise AccountError("The current password is not correct.")
    _check_password(new_password, user=user)
    user.set_password(new_password)
    user.save(update_fields=["password"])
    token_revoke(user=user)


@dataclass(frozen=True)
class IssuedToken:
    """A new API token: `key` is shown once and never stored (only its hash is)."""

    key: str
    expiry: datetime | None


def tokens_active(*, user: User) -> QuerySet[AuthToken]:
    return AuthToken.objects.filter(user=user).filter(
        Q(expiry__isnull=True) | Q(expiry__gt=timezone.now()))


@transaction.atomic
def token_issue(*, user: User) -> IssuedToken:
    """A new API token for the user, stored hashed and expiring after API_TOKEN_TTL_HOURS.

    Each call makes a new token (each script or device has its own). Past
    API_TOKENS_PER_USER the oldest ones are revoked, so repeated calls cannot pile up tokens.
    """
    AuthToken.objects.filter(user=user, expiry__lte=timezone.now()).delete()
    keep = max(0, settings.API_TOKENS_PER_USER - 1)
    stale = list(AuthToken.objects.filter(user=user).order_by("-created")
                 .values_list("digest", flat=True)[keep:])
    if stale:
        AuthToken.objects.filter(digest__in=stale).delete()
    instance, key = AuthToken.objects.create(user=user)
    return IssuedToken(key=key, expiry=instance.expiry)


@transaction.atomic
def token_rotate(*, user: User, current: AuthToken | None = None) -> IssuedToken:
    """A new token replacing `current` (the caller's own), or all of the user's tokens."""
    tokens = AuthToken.objects.filter(user=user)
    if current is not None:
        tokens = tokens.filter(digest=current.digest)
    tokens.delete()
    return token_issue(user=user)


def token_revoke(*, user: User, current: AuthToken | None = None) -> int:
    """Revoke `current` (one token of the user), or every token of the user."""
    tokens = AuthToken.objects.filter(user=user)
    if current is not None:
        tokens = tokens.filter(digest=current.digest)
    deleted, _ = tokens.delete()
    return deleted


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
