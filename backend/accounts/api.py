"""Account and hospital-member endpoints: one thin view per operation."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth import authenticate, login, logout, update_session_auth_hash
from django.db.models import Count, Q
from django.shortcuts import get_object_or_404
from django.utils import timezone
from django.utils.decorators import method_decorator
from django.views.decorators.csrf import ensure_csrf_cookie
from drf_spectacular.utils import extend_schema
from knox.auth import TokenAuthentication
from knox.models import AuthToken
from rest_framework import status
from rest_framework.authentication import SessionAuthentication
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from backend.audit.models import AuditEvent
from backend.audit.services import audit_record

from .models import User
from .permissions import IsHospitalAdmin
from .serializers import (
    CredentialsSerializer,
    HospitalSettingsSerializer,
    MemberCreateInputSerializer,
    MemberSerializer,
    MemberUpdateInputSerializer,
    MeSerializer,
    PasswordChangeInputSerializer,
    SignupInputSerializer,
    SignupStateSerializer,
    TokenOutputSerializer,
)
from .services import (
    AccountError,
    IssuedToken,
    SignupError,
    hospital_settings_update,
    member_create,
    member_update,
    token_issue,
    token_revoke,
    token_rotate,
    user_change_password,
    user_signup,
)
from .throttles import AuthRateThrottle, LoginFailureLockout

INVALID_CREDENTIALS = "Invalid username or password."


def _detail(message: str) -> dict[str, str]:
    return {"detail": message}


def _token_body(token: IssuedToken) -> dict[str, object]:
    return {"token": token.key, "expiry": token.expiry}


def _authenticate(request: Request) -> User | None:
    """Check credentials; failures count towards the username's lockout and are audited."""
    creds = CredentialsSerializer(data=request.data)
    creds.is_valid(raise_exception=True)
    user = authenticate(request._request, **creds.validated_data)
    lockout = LoginFailureLockout()
    if user is None:
        lockout.record_failure(request)
        known = User.objects.filter(username=creds.validated_data["username"]).first()
        audit_record(
            action=AuditEvent.Action.LOGIN_FAILED, hospital=known.hospital if known else None,
            request=request, object_type="user", object_id=known.id if known else "",
            detail={"username": creds.validated_data["username"][:150]},
        )
        return None
    lockout.reset(request)
    return user


class SignupApi(APIView):
    permission_classes = [AllowAny]
    authentication_classes: list = []
    throttle_classes = [AuthRateThrottle]

    @extend_schema(request=None, responses={200: SignupStateSerializer})
    def get(self, request: Request) -> Response:
        """Whether sign-up is open (the web app hides it otherwise)."""
        return Response({"enabled": settings.SIGNUP_ENABLED})

    @extend_schema(request=SignupInputSerializer, responses={201: MeSerializer})
    def post(self, request: Request) -> Response:
        if not settings.SIGNUP_ENABLED:
            return Response(_detail("Sign-up is disabled."), status=status.HTTP_403_FORBIDDEN)
        data = SignupInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            user = user_signup(
                username=data.validated_data["username"],
                password=data.validated_data["password"],
                email=data.validated_data["email"],
                hospital_name=data.validated_data["hospital"],
            )
        except SignupError as exc:
            return Response(_detail(str(exc)), status=status.HTTP_400_BAD_REQUEST)
        audit_record(action=AuditEvent.Action.SIGNUP, user=user, request=request,
                     object_type="user", object_id=user.id)
        return Response(MeSerializer(user).data, status=status.HTTP_201_CREATED)


class TokenApi(APIView):
    """Exchange username and password for a new API token (for scripts and integrations).

    The token is shown in this answer only (it is stored hashed) and expires at `expiry`.
    """

    permission_classes = [AllowAny]
    authentication_classes: list = []
    throttle_classes = [AuthRateThrottle, LoginFailureLockout]

    @extend_schema(request=CredentialsSerializer, responses={200: TokenOutputSerializer})
    def post(self, request: Request) -> Response:
        user = _authenticate(request)
        if user is None:
            return Response(_detail(INVALID_CREDENTIALS), status=status.HTTP_400_BAD_REQUEST)
        token = token_issue(user=user)
        audit_record(action=AuditEvent.Action.TOKEN_ISSUED, user=user, request=request,
                     object_type="user", object_id=user.id)
        return Response(_token_body(token))


def _own_token(request: Request) -> AuthToken | None:
    return request.auth if isinstance(request.auth, AuthToken) else None


NOT_A_TOKEN = "Authenticate with the API token itself (Authorization: Token ...)."  # noqa: S105


class TokenRotateApi(APIView):
    """Replace the token this request is authenticated with by a new one (shown once)."""

    authentication_classes = [TokenAuthentication]

    @extend_schema(request=None, responses={201: TokenOutputSerializer})
    def post(self, request: Request) -> Response:
        current = _own_token(request)
        if current is None:
            return Response(_detail(NOT_A_TOKEN), status=status.HTTP_400_BAD_REQUEST)
        token = token_rotate(user=request.user, current=current)
        audit_record(action=AuditEvent.Action.TOKEN_ISSUED, user=request.user,
                     request=request, object_type="user", object_id=request.user.id,
                     detail={"rotated": True})
        return Response(_token_body(token), status=status.HTTP_201_CREATED)


class TokenRevokeApi(APIView):
    """Revoke the token this request is authenticated with (`all=true`: every own token)."""

    authentication_classes = [TokenAuthentication]

    @extend_schema(request=None, responses={204: None})
    def post(self, request: Request) -> Response:
        current = _own_token(request)
        if current is None:
            return Response(_detail(NOT_A_TOKEN), status=status.HTTP_400_BAD_REQUEST)
        every = str(request.query_params.get("all", "")).lower() in ("1", "true", "yes")
        revoked = token_revoke(user=request.user, current=None if every else current)
        audit_record(action=AuditEvent.Action.TOKEN_REVOKED, user=request.user,
                     request=request, object_type="user", object_id=request.user.id,
                     detail={"tokens": revoked})
        return Response(status=status.HTTP_204_NO_CONTENT)


@method_decorator(ensure_csrf_cookie, name="dispatch")
class LoginApi(APIView):
    """Session login for the browser; GET sets the CSRF cookie."""

    permission_classes = [AllowAny]
    throttle_classes = [AuthRateThrottle, LoginFailureLockout]

    @extend_schema(request=None, responses={204: None})
    def get(self, request: Request) -> Response:
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(request=CredentialsSerializer, responses={200: MeSerializer})
    def post(self, request: Request) -> Response:
        # DRF checks CSRF only for already-authenticated sessions; a login form must be
        # protected too (login CSRF), so the token from GET is required here.
        SessionAuthentication().enforce_csrf(request)
        user = _authenticate(request)
        if user is None:
            return Response(_detail(INVALID_CREDENTIALS), status=status.HTTP_400_BAD_REQUEST)
        login(request._request, user)
        audit_record(action=AuditEvent.Action.LOGIN, user=user, request=request,
                     object_type="user", object_id=user.id)
        return Response(MeSerializer(user).data)


class LogoutApi(APIView):
    @extend_schema(request=None, responses={204: None})
    def post(self, request: Request) -> Response:
        audit_record(action=AuditEvent.Action.LOGOUT, user=request.user, request=request,
                     object_type="user", object_id=request.user.id)
        logout(request._request)
        return Response(status=status.HTTP_204_NO_CONTENT)


class MeApi(APIView):
    @extend_schema(responses={200: MeSerializer})
    def get(self, request: Request) -> Response:
        return Response(MeSerializer(request.user).data)


class PasswordChangeApi(APIView):
    """Change one's own password; the session stays valid, API tokens are revoked."""

    throttle_classes = [AuthRateThrottle]

    @extend_schema(request=PasswordChangeInputSerializer, responses={204: None})
    def post(self, request: Request) -> Response:
        data = PasswordChangeInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            user_change_password(user=request.user, **data.validated_data)
        except AccountError as exc:
            return Response(_detail(str(exc)), status=status.HTTP_400_BAD_REQUEST)
        update_session_auth_hash(request._request, request.user)
        audit_record(action=AuditEvent.Action.PASSWORD_CHANGED, user=request.user,
                     request=request, object_type="user", object_id=request.user.id)
        return Response(status=status.HTTP_204_NO_CONTENT)


def _member(request: Request, member_id: int) -> User:
    return get_object_or_404(User, id=member_id, hospital_id=request.user.hospital_id)


class MemberListCreateApi(APIView):
    """The members of the admin's hospital; an admin creates clinician or admin accounts."""

    permission_classes = [IsHospitalAdmin]

    @extend_schema(responses={200: MemberSerializer(many=True)})
    def get(self, request: Request) -> Response:
        live = Q(auth_token_set__expiry__isnull=True) | Q(
            auth_token_set__expiry__gt=timezone.now())
        members = (User.objects.filter(hospital_id=request.user.hospital_id)
                   .annotate(active_tokens=Count("auth_token_set", filter=live))
                   .order_by("username"))
        return Response(MemberSerializer(members, many=True).data)

    @extend_schema(request=MemberCreateInputSerializer, responses={201: MemberSerializer})
    def post(self, request: Request) -> Response:
        data = MemberCreateInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            member = member_create(admin=request.user, **data.validated_data)
        except AccountError as exc:
            return Response(_detail(str(exc)), status=status.HTTP_400_BAD_REQUEST)
        audit_record(action=AuditEvent.Action.MEMBER_CREATED, user=request.user,
                     request=request, object_type="user", object_id=member.id,
                     detail={"username": member.username, "role": member.role})
        return Response(MemberSerializer(member).data, status=status.HTTP_201_CREATED)


class MemberDetailApi(APIView):
    permission_classes = [IsHospitalAdmin]

    @extend_schema(request=MemberUpdateInputSerializer, responses={200: MemberSerializer})
    def patch(self, request: Request, member_id: int) -> Response:
        member = _member(request, member_id)
        data = MemberUpdateInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            member = member_update(admin=request.user, member=member, **data.validated_data)
        except AccountError as exc:
            return Response(_detail(str(exc)), status=status.HTTP_400_BAD_REQUEST)
        audit_record(action=AuditEvent.Action.MEMBER_UPDATED, user=request.user,
                     request=request, object_type="user", object_id=member.id,
                     detail=dict(data.validated_data))
        return Response(MemberSerializer(member).data)


class MemberTokenApi(APIView):
    """Admins issue a member's token (revoking the member's others) or revoke them all."""

    permission_classes = [IsHospitalAdmin]

    @extend_schema(request=None, responses={201: TokenOutputSerializer})
    def post(self, request: Request, member_id: int) -> Response:
        member = _member(request, member_id)
        if not member.is_active:
            return Response(_detail("This account is deactivated."),
                            status=status.HTTP_400_BAD_REQUEST)
        token = token_rotate(user=member)
        audit_record(action=AuditEvent.Action.TOKEN_ISSUED, user=request.user,
                     request=request, object_type="user", object_id=member.id,
                     detail={"rotated_by_admin": True})
        return Response(_token_body(token), status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses={204: None})
    def delete(self, request: Request, member_id: int) -> Response:
        member = _member(request, member_id)
        token_revoke(user=member)
        audit_record(action=AuditEvent.Action.TOKEN_REVOKED, user=request.user,
                     request=request, object_type="user", object_id=member.id)
        return Response(status=status.HTTP_204_NO_CONTENT)


class HospitalSettingsApi(APIView):
    """The hospital's settings: read by its members, changed by its admins (audited)."""

    @extend_schema(responses={200: HospitalSettingsSerializer})
    def get(self, request: Request) -> Response:
        if request.user.hospital is None:
            return Response(_detail("Not a hospital member."), status=status.HTTP_404_NOT_FOUND)
        return Response(HospitalSettingsSerializer(request.user.hospital).data)

    def get_permissions(self) -> list[Any]:
        if self.request.method == "PATCH":
            return [IsHospitalAdmin()]
        return super().get_permissions()

    @extend_schema(request=HospitalSettingsSerializer, responses={200: HospitalSettingsSerializer})
    def patch(self, request: Request) -> Response:
        data = HospitalSettingsSerializer(data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        hospital = request.user.hospital
        changes = hospital_settings_update(hospital=hospital, **data.validated_data)
        if changes:
            audit_record(action=AuditEvent.Action.SETTINGS_CHANGED, user=request.user,
                         request=request, object_type="hospital", object_id=hospital.id,
                         detail=changes)
        return Response(HospitalSettingsSerializer(hospital).data)
