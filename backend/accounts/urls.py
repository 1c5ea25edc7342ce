from django.urls import path

from . import api

urlpatterns = [
    path("signup/", api.SignupApi.as_view(), name="auth-signup"),
    path("token/", api.TokenApi.as_view(), name="auth-token"),
    path("token/rotate/", api.TokenRotateApi.as_view(), name="auth-token-rotate"),
    path("token/revoke/", api.TokenRevokeApi.as_view(), name="auth-token-revoke"),
    path("login/", api.LoginApi.as_view(), name="auth-login"),
    path("logout/", api.LogoutApi.as_view(), name="auth-logout"),
    path("me/", api.MeApi.as_view(), name="auth-me"),
    path("password/", api.PasswordChangeApi.as_view(), name="auth-password"),
]
