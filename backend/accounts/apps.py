from django.apps import AppConfig
from django.contrib.admin import apps as admin_apps


class AccountsConfig(AppConfig):
    name = "backend.accounts"
    label = "accounts"
    default_auto_field = "django.db.models.BigAutoField"


class PneumoAdminConfig(admin_apps.AdminConfig):
    """Django's admin, whose login shares the API's brute-force defences."""

    default = False  # named explicitly in INSTALLED_APPS; accounts' own config stays default
    default_site = "backend.accounts.admin_site.PneumoAdminSite"
