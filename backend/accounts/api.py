"""Account endpoints: one view per operation, thin, delegating to services."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth import authenticate, login, logout
from django.views.decorators.csrf import ensure_csrf_cookie
from django.utils.decorators import method_decorator
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from .serializers import (
    CredentialsSerializer,
    MeSerializer,
    SignupInputSerializer,
    TokenOutputSerializer,
)
from .services import SignupError, token_get_or_create, user_signup


class SignupApi(APIView):
    permission_classes = [AllowAny]

    @extend_schema(request=SignupInputSerializer, responses={201: MeSerializer})
    def post(self, request: Request) -> Response:
        if not settings.SIGNUP_ENABLED:
            return Response({"detail": "Sign-up is disabled."}, status=status.HTTP_403_FORBIDDEN)
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
            return Response({"detail": str(exc)}, status=status.HTTP_400_BAD_REQUEST)
        return Response(MeSerializer(user).data, status=status.HTTP_201_CREATED)


class TokenApi(APIView):
    """Exchange username and password for an API token (for scripts and integrations)."""

    permission_classes = [AllowAny]
    authentication_classes: list = []

    @extend_schema(request=CredentialsSerializer, responses={200: TokenOutputSerializer})
    def post(self, request: Request) -> Response:
        creds = CredentialsSerializer(data=request.data)
        creds.is_valid(raise_exception=True)
        user = authenticate(request._request, **creds.validated_data)
        if user is None:
            return Response(
                {"detail": "Invalid username or password."}, status=status.HTTP_400_BAD_REQUEST
            )
        return Response({"token": token_get_or_create(user=user)})


@method_decorator(ensure_csrf_cookie, name="dispatch")
class LoginApi(APIView):
    """Session login for the browser; GET sets the CSRF cookie."""

    permission_classes = [AllowAny]

    @extend_schema(responses={204: None})
    def get(self, request: Request) -> Response:
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(request=CredentialsSerializer, responses={200: MeSerializer})
    def post(self, request: Request) -> Response:
        creds = CredentialsSerializer(data=request.data)
        creds.is_valid(raise_exception=True)
        user = authenticate(request._request, **creds.validated_data)
        if user is None:
            return Response(
                {"detail": "Invalid username or password."}, status=status.HTTP_400_BAD_REQUEST
            )
        login(request._request, user)
        return Response(MeSerializer(user).data)


class LogoutApi(APIView):
    @extend_schema(request=None, responses={204: None})
    def post(self, request: Request) -> Response:
        logout(request._request)
        return Response(status=status.HTTP_204_NO_CONTENT)


class MeApi(APIView):
    @extend_schema(responses={200: MeSerializer})
    def get(self, request: Request) -> Response:
        return Response(MeSerializer(request.user).data)
