from __future__ import annotations

from rest_framework import serializers

from .models import User


class SignupInputSerializer(serializers.Serializer):
    username = serializers.CharField(max_length=150)
    password = serializers.CharField(write_only=True, style={"input_type": "password"})
    email = serializers.EmailField(required=False, allow_blank=True, default="")
    hospital = serializers.CharField(max_length=200)


class CredentialsSerializer(serializers.Serializer):
    username = serializers.CharField()
    password = serializers.CharField(write_only=True, style={"input_type": "password"})


class TokenOutputSerializer(serializers.Serializer):
    token = serializers.CharField()


class MeSerializer(serializers.ModelSerializer):
    hospital = serializers.CharField(source="hospital.name", default=None)

    class Meta:
        model = User
        fields = ["id", "username", "email", "hospital", "role"]
