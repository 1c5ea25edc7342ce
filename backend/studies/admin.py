from django.contrib import admin

from .models import Image, Result, Study


class ImageInline(admin.TabularInline):
    model = Image
    fields = ["original_name", "status", "error", "attempts"]
    readonly_fields = fields
    extra = 0
    can_delete = False


@admin.register(Study)
class StudyAdmin(admin.ModelAdmin):
    list_display = ["id", "hospital", "name", "priority", "status", "created_at"]
    list_filter = ["status", "priority", "hospital"]
    search_fields = ["name", "accession_number"]
    inlines = [ImageInline]


@admin.register(Image)
class ImageAdmin(admin.ModelAdmin):
    list_display = ["original_name", "study", "status", "attempts", "created_at"]
    list_filter = ["status"]


@admin.register(Result)
class ResultAdmin(admin.ModelAdmin):
    list_display = ["image", "label", "score", "model_name", "model_version"]
