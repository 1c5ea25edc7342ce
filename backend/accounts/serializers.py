from __future__ import annotations

from rest_framework import serializers

from .models import User


class SignupInputSerializer(serializers.Serializer):
    username = serializers.CharField(max_length=150)
    password = serializers.CharField(write_only=True, style={"input_type": "password"})
    email = serializers.EmailField(required=False, allow_blank=True, default="")
    hospital = serializers.CharField(max_length=200)


class SignupStateSerializer(serializers.Serializer):
    enabled = serializers.BooleanField()


class CredentialsSerializer(serializers.Serializer):
    username = serializers.CharField(max_length=150)
    password = serializers.CharField(write_only=True, style={"input_type": "password"})


class TokenOutputSerializer(serializers.Serializer):
    token = serializers.CharField(help_text="Shown once: only its hash is stored.")
    expiry = serializers.DateTimeField(allow_null=True)


class PasswordChangeInputSerializer(serializers.Serializer):
    old_password = serializers.CharField(write_only=True, style={"input_type": "password"})
    new_password = serializers.CharField(write_only=True, style={"input_type": "password"})


class MeSerializer(serializers.ModelSerializer):
    hospital = serializers.CharField(source="hospital.name", default=None)

    class Meta:
        model = User
        fields = ["id", "username", "email", "hospital", "role"]


class MemberCreateInputSerializer(serializers.Serializer):
    username = serializers.CharField(max_length=150)
    password = serializers.CharField(write_only=True, style={"input_type": "password"})
    email = serializers.EmailField(required=False, allow_blank=True, default="")
    role = serializers.ChoiceField(choices=User.Role.choices, default=User.Role.CLINICIAN)


class MemberUpdateInputSerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=User.Role.choices, required=False)
    is_active = serializers.BooleanField(required=False)


class MemberSerializer(serializers.ModelSerializer):
    has_token = serializers.SerializerMethodField()

    class Meta:
        model = User
        fields = ["id", "username", "email", "role", "is_active", "date_joined", "last_login",
                  "has_token"]

    def get_has_token(self, user: User) -> bool:
        """Whether the member holds an unexpired API token."""
        active = getattr(user, "active_tokens", None)
        if active is None:
            from .services import tokens_active

            return tokens_active(user=user).exists()
        return active > 0


class HospitalSettingsSerializer(serializers.Serializer):
    name = serializers.CharField(read_only=True)
    scope_mode = serializers.ChoiceField(
        choices=["enforce", "warn"],
        help_text="Images outside the validated population (adult, lateral, not a chest "
        "radiograph, inverted): `enforce` withholds the label (default), `warn` gives the "
        "label with a visible warning.",
    )
