"""Django admin for operators: studies, images and results are read-only evidence."""

from django.contrib import admin
from django.http import HttpRequest

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


@admin.register(Image)
class ImageAdmin(ReadOnlyAdmin):
    list_display = ["original_name", "study", "format", "status", "attempts", "created_at"]
    list_filter = ["status", "format"]
    search_fields = ["id", "original_name", "sop_instance_uid", "study__id"]
    exclude = ["file"]  # patient data is reached through the authenticated API only


@admin.register(Result)
class ResultAdmin(ReadOnlyAdmin):
    list_display = ["image", "label", "score", "threshold", "model_name", "model_version",
                    "created_at"]
    list_filter = ["label", "model_name", "model_version"]
    exclude = ["heatmap"]
