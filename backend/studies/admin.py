"""Django admin for operators: studies, images and results are read-only evidence."""

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from .deletion import study_delete
from .models import Image, Result, Study


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


class ImageInline(admin.TabularInline):
    model = Image
    fields = ["original_name", "status", "flags", "error", "attempts"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(Study)
class StudyAdmin(ReadOnlyAdmin):
    list_display = ["id", "hospital", "name", "accession_number", "priority", "status",
                    "created_at", "finished_at"]
    list_filter = ["status", "priority", "hospital"]
    search_fields = ["id", "name", "accession_number"]
    date_hierarchy = "created_at"
    inlines = [ImageInline]

    # Deleting a study removes its files too, and is audited (backend/studies/deletion.py).
    def delete_model(self, request: HttpRequest, obj: Study) -> None:
        study_delete(study_id=obj.id, user=request.user, reason="admin", request=request)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Study]) -> None:
        for study_id in queryset.values_list("id", flat=True):
            study_delete(study_id=study_id, user=request.user, reason="admin", request=request)

    def get_deleted_objects(self, objs: Any, request: HttpRequest) -> Any:
        # Images and results cannot be deleted on their own (their files would stay), but
        # they go with their study: no permission of theirs is needed here.
        deleted, counts, _perms_needed, protected = super().get_deleted_objects(objs, request)
        return deleted, counts, set(), protected


@admin.register(Image)
class ImageAdmin(ReadOnlyAdmin):
    list_display = ["original_name", "study", "format", "status", "attempts", "created_at"]
    list_filter = ["status", "format"]
    search_fields = ["id", "original_name", "sop_instance_uid", "study__id"]
    exclude = ["file"]  # patient data is reached through the authenticated API only

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False  # delete the study: that removes the files too


@admin.register(Result)
class ResultAdmin(ReadOnlyAdmin):
    list_display = ["image", "label", "score", "threshold", "model_name", "model_version",
                    "created_at"]
    list_filter = ["label", "model_name", "model_version"]
    exclude = ["heatmap"]

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False
