from __future__ import annotations

from rest_framework import serializers

AE_TITLE_HELP = "1-16 characters of the DICOM default repertoire, no backslash."


def _ae_title(value: str) -> str:
    value = value.strip()
    if not value or len(value) > 16 or "\\" in value or not value.isascii() or \
            any(ord(c) < 32 for c in value):
        raise serializers.ValidationError(f"{value!r} is not a valid AE title ({AE_TITLE_HELP})")
    return value


class AeTitleField(serializers.CharField):
    def to_internal_value(self, data: object) -> str:
        return _ae_title(super().to_internal_value(data))


class DestinationSerializer(serializers.Serializer):
    ae_title = AeTitleField(max_length=32)
    host = serializers.CharField(max_length=253)
    port = serializers.IntegerField(min_value=1, max_value=65535)


class DicomConfigSerializer(serializers.Serializer):
    calling_ae_titles = serializers.ListField(child=serializers.CharField(max_length=64),
                                              max_length=50, allow_empty=True)
    destination = DestinationSerializer(allow_null=True)
    dicomweb_url = serializers.URLField(allow_null=True, required=False, max_length=500)

    def validate_calling_ae_titles(self, titles: list[str]) -> list[str]:
        # One flat message naming the bad titles (not an error object per list index).
        return [_ae_title(title) for title in titles]
