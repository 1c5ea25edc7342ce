from __future__ import annotations

from rest_framework import serializers

from .models import AuditEvent


class AuditFilterSerializer(serializers.Serializer):
    action = serializers.ChoiceField(choices=AuditEvent.Action.choices, required=False)
    object_id = serializers.CharField(max_length=64, required=False)


class AuditEventSerializer(serializers.ModelSerializer):
    class Meta:
        model = AuditEvent
        fields = [
            "id", "created_at", "user", "username", "action", "object_type", "object_id",
            "detail", "ip",
        ]
