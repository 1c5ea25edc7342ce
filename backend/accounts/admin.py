from django.contrib import admin
from django.contrib.auth.admin import UserAdmin

from .models import Hospital, User


@admin.register(Hospital)
class HospitalAdmin(admin.ModelAdmin):
    list_display = ["name", "upload_quota_bytes_per_day", "created_at"]
    search_fields = ["name"]


@admin.register(User)
class HospitalUserAdmin(UserAdmin):
    list_display = ["username", "email", "hospital", "role", "is_staff"]
    list_filter = ["hospital", "role", "is_staff"]
    fieldsets = (*UserAdmin.fieldsets, ("Hospital", {"fields": ("hospital", "role")}))
