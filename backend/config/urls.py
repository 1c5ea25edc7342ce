from django.contrib import admin
from django.urls import include, path
from django.views.generic import TemplateView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from backend.core.api import LivenessApi, ReadinessApi
from backend.core.metrics import metrics_view

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/auth/", include("backend.accounts.urls")),
    path("api/hospital/", include("backend.accounts.hospital_urls")),
    path("api/", include("backend.dicomnet.urls")),
    path("api/health/", ReadinessApi.as_view(), name="health"),
    path("api/health/ready/", ReadinessApi.as_view(), name="health-ready"),
    path("api/health/live/", LivenessApi.as_view(), name="health-live"),
    path("metrics", metrics_view, name="metrics"),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("api/", include("backend.studies.urls")),
    path("", TemplateView.as_view(template_name="index.html"), name="app"),
]
