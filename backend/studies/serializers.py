from __future__ import annotations

from django.urls import reverse
from rest_framework import serializers

from .models import Image, Study


class StudyCreateInputSerializer(serializers.Serializer):
    files = serializers.ListField(
        child=serializers.FileField(allow_empty_file=True), allow_empty=False
    )
    name = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")
    accession_number = serializers.CharField(
        max_length=64, required=False, allow_blank=True, default=""
    )
    priority = serializers.ChoiceField(choices=Study.Priority.choices, default="routine")


class RejectionSerializer(serializers.Serializer):
    name = serializers.CharField()
    reason = serializers.CharField()


class ResultSerializer(serializers.Serializer):
    label = serializers.CharField()
    probabilities = serializers.DictField(child=serializers.FloatField())
    score = serializers.FloatField()
    threshold = serializers.FloatField()
    etiology_label = serializers.CharField()
    etiology_probabilities = serializers.DictField(child=serializers.FloatField())
    model_name = serializers.CharField()
    model_version = serializers.CharField()
    bbox = serializers.ListField(child=serializers.FloatField(), allow_null=True)


class ImageSerializer(serializers.ModelSerializer):
    result = serializers.SerializerMethodField()
    file_url = serializers.SerializerMethodField()
    heatmap_url = serializers.SerializerMethodField()

    class Meta:
        model = Image
        fields = [
            "id", "original_name", "status", "error", "format", "width", "height", "flags",
            "modality", "view_position", "body_part", "patient_age", "patient_sex",
            "study_instance_uid", "sop_instance_uid", "dicom_accession_number",
            "result", "file_url", "heatmap_url", "created_at", "finished_at",
        ]

    def get_result(self, image: Image) -> dict | None:
        result = getattr(image, "result", None)
        return ResultSerializer(result).data if result is not None else None

    def get_file_url(self, image: Image) -> str:
        return reverse("image-file", kwargs={"image_id": image.id})

    def get_heatmap_url(self, image: Image) -> str | None:
        result = getattr(image, "result", None)
        if result is None or not result.heatmap:
            return None
        return reverse("image-heatmap", kwargs={"image_id": image.id})


class StudySerializer(serializers.ModelSerializer):
    progress = serializers.SerializerMethodField()

    class Meta:
        model = Study
        fields = [
            "id", "name", "accession_number", "priority", "status", "progress",
            "created_at", "finished_at",
        ]

    def get_progress(self, study: Study) -> dict[str, int]:
        return {
            "total": getattr(study, "n_total", 0),
            "done": getattr(study, "n_done", 0),
            "failed": getattr(study, "n_failed", 0),
            "pneumonia": getattr(study, "n_pneumonia", 0),
        }


class StudyDetailSerializer(StudySerializer):
    images = serializers.SerializerMethodField()

    class Meta(StudySerializer.Meta):
        fields = [*StudySerializer.Meta.fields, "images"]

    def get_images(self, study: Study) -> list[dict]:
        return ImageSerializer(self.context["images"], many=True).data


class StudyCreateOutputSerializer(serializers.Serializer):
    study = StudySerializer(allow_null=True)
    accepted = ImageSerializer(many=True)
    rejected = RejectionSerializer(many=True)
