from __future__ import annotations

import datetime as dt
from typing import Any

from django.urls import reverse
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from .models import Image, Study


class StudyFilesInputSerializer(serializers.Serializer):
    files = serializers.ListField(
        child=serializers.FileField(allow_empty_file=True), allow_empty=False,
        help_text="JPEG, PNG, DICOM files or ZIP archives of them; repeat the field.",
    )


class StudyCreateInputSerializer(serializers.Serializer):
    files = serializers.ListField(
        child=serializers.FileField(allow_empty_file=True), required=False, default=list,
        help_text="JPEG, PNG, DICOM files or ZIP archives of them; repeat the field. "
                  "Required unless `receiving` is true.",
    )
    receiving = serializers.BooleanField(
        required=False, default=False,
        help_text="More parts follow: append them with POST /api/studies/{id}/files/, then "
                  "POST /api/studies/{id}/close/. The study cannot finish before it is closed.",
    )
    name = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")
    accession_number = serializers.CharField(
        max_length=64, required=False, allow_blank=True, default=""
    )
    priority = serializers.ChoiceField(choices=Study.Priority.choices, default="routine")

    def validate(self, attrs: dict) -> dict:
        if not attrs["files"] and not attrs["receiving"]:
            raise serializers.ValidationError({"files": ["No file was submitted."]})
        return attrs


@extend_schema_field(OpenApiTypes.DATETIME)
class DateOrDateTimeField(serializers.Field):
    """An ISO date-time, or a date (taken as the start of that day, UTC; `end_of_day` for an
    inclusive upper bound)."""

    def __init__(self, *, end_of_day: bool = False, **kwargs: object) -> None:
        self.end_of_day = end_of_day
        super().__init__(**kwargs)

    def to_internal_value(self, data: object) -> dt.datetime:
        text = str(data).strip()
        try:
            # A bare date first: Python's ISO parser would read it as midnight.
            day = parse_date(text) if len(text) == 10 else None
            if day is not None:
                value = dt.datetime.combine(day, dt.time.min)
                if self.end_of_day:
                    value += dt.timedelta(days=1)
            else:
                value = parse_datetime(text)
        except ValueError:
            value = None
        if value is None:
            raise serializers.ValidationError("Expected an ISO date (2026-11-22) or date-time.")
        if timezone.is_naive(value):
            value = timezone.make_aware(value, dt.UTC)
        return value

    def to_representation(self, value: dt.datetime) -> str:
        return value.isoformat()


class StudyFilterSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=Study.Status.choices, required=False)
    priority = serializers.ChoiceField(choices=Study.Priority.choices, required=False)
    search = serializers.CharField(max_length=200, required=False,
                                   help_text="Part of the study name or an accession number.")
    created_after = DateOrDateTimeField(required=False,
                                        help_text="Created at or after (ISO date or date-time).")
    created_before = DateOrDateTimeField(
        required=False, end_of_day=True,
        help_text="Created before this date-time; a date includes that whole day.",
    )
    page = serializers.IntegerField(min_value=1, required=False)


class RejectionSerializer(serializers.Serializer):
    name = serializers.CharField()
    reason = serializers.CharField()


class ResultSerializer(serializers.Serializer):
    label = serializers.CharField(
        allow_null=True,
        help_text="normal | pneumonia; null when withheld (out of scope, hospital enforces).")
    probabilities = serializers.DictField(child=serializers.FloatField())
    score = serializers.FloatField(allow_null=True)
    threshold = serializers.FloatField()
    etiology_label = serializers.CharField()
    etiology_probabilities = serializers.DictField(child=serializers.FloatField())
    model_name = serializers.CharField()
    model_version = serializers.CharField()
    bbox = serializers.ListField(child=serializers.FloatField(), allow_null=True)
    scope = serializers.CharField(help_text="in_scope | out_of_scope")
    scope_reason = serializers.CharField(
        allow_null=True, help_text="adult | lateral | not_chest_radiograph | inverted")
    scope_text = serializers.CharField(
        allow_null=True,
        help_text='e.g. "adult chest X-ray (outside the validated population)"')
    label_withheld = serializers.BooleanField()

    def to_representation(self, instance: Any) -> dict[str, Any]:
        from ml.scope import describe

        data = super().to_representation(instance)
        data["label"] = instance.label or None
        data["scope_reason"] = instance.scope_reason or None
        data["scope_text"] = describe(instance.scope_reason) if instance.scope_reason else None
        return data


class ImageSerializer(serializers.ModelSerializer):
    result = serializers.SerializerMethodField()
    file_url = serializers.SerializerMethodField()
    preview_url = serializers.SerializerMethodField()
    heatmap_url = serializers.SerializerMethodField()
    dicom_delivery = serializers.SerializerMethodField()
    flags = serializers.ListField(child=serializers.CharField(), read_only=True)
    notes = serializers.ListField(child=serializers.CharField(), read_only=True)

    class Meta:
        model = Image
        fields = [
            "id", "original_name", "status", "error", "format", "width", "height", "flags",
            "notes", "modality", "view_position", "body_part", "patient_age", "patient_sex",
            "study_instance_uid", "sop_instance_uid", "dicom_accession_number",
            "result", "file_url", "preview_url", "heatmap_url", "created_at", "finished_at",
            "dicom_delivery",
        ]

    @extend_schema_field(ResultSerializer(allow_null=True))
    def get_result(self, image: Image) -> dict | None:
        result = getattr(image, "result", None)
        return ResultSerializer(result).data if result is not None else None

    def get_file_url(self, image: Image) -> str:
        return reverse("image-file", kwargs={"image_id": image.id})

    def get_preview_url(self, image: Image) -> str:
        return reverse("image-preview", kwargs={"image_id": image.id})

    def get_heatmap_url(self, image: Image) -> str | None:
        result = getattr(image, "result", None)
        if result is None or not result.heatmap:
            return None
        return reverse("image-heatmap", kwargs={"image_id": image.id})

    @extend_schema_field(serializers.DictField(allow_null=True))
    def get_dicom_delivery(self, image: Image) -> dict | None:
        """State of the SR and heatmap sent to the hospital's PACS (null: none made)."""
        from backend.dicomnet.selectors import image_delivery

        return image_delivery(image)


class ProgressSerializer(serializers.Serializer):
    total = serializers.IntegerField()
    done = serializers.IntegerField()
    failed = serializers.IntegerField()
    rejected = serializers.IntegerField(help_text="Refused by their content when decoded.")
    pneumonia = serializers.IntegerField()
    out_of_scope = serializers.IntegerField(
        help_text="Images outside the validated population (not analysed, or warned).")
    not_analysed = serializers.IntegerField(
        help_text="Out-of-scope images whose label was withheld (hospital enforces the scope).")


class StudySerializer(serializers.ModelSerializer):
    progress = serializers.SerializerMethodField()

    class Meta:
        model = Study
        fields = [
            "id", "name", "accession_number", "priority", "status", "receiving", "progress",
            "created_at", "finished_at",
        ]

    @extend_schema_field(ProgressSerializer)
    def get_progress(self, study: Study) -> dict[str, int]:
        return {
            "total": getattr(study, "n_total", 0),
            "done": getattr(study, "n_done", 0),
            "failed": getattr(study, "n_failed", 0),
            "rejected": getattr(study, "n_rejected", 0),
            "pneumonia": getattr(study, "n_pneumonia", 0),
            "out_of_scope": getattr(study, "n_out_of_scope", 0),
            "not_analysed": getattr(study, "n_not_analysed", 0),
        }


class StudyDetailSerializer(StudySerializer):
    images = serializers.SerializerMethodField()
    dicom_delivery = serializers.SerializerMethodField()

    class Meta(StudySerializer.Meta):
        fields = [*StudySerializer.Meta.fields, "images", "dicom_delivery"]

    @extend_schema_field(serializers.DictField(allow_null=True))
    def get_dicom_delivery(self, study: Study) -> dict | None:
        """Results sent to the PACS, counted per state (null: the study has none)."""
        from backend.dicomnet.selectors import study_delivery

        return study_delivery(study)

    @extend_schema_field(ImageSerializer(many=True))
    def get_images(self, study: Study) -> list[dict]:
        return ImageSerializer(self.context["images"], many=True).data


class StudyCreateOutputSerializer(serializers.Serializer):
    study = StudySerializer(allow_null=True)
    accepted = ImageSerializer(many=True)
    rejected = RejectionSerializer(many=True)


class StudyActionOutputSerializer(serializers.Serializer):
    study = StudySerializer()
    images_changed = serializers.IntegerField()
