from django.urls import path

from . import api

urlpatterns = [
    path("studies/", api.StudyListCreateApi.as_view(), name="study-list"),
    path("studies/<uuid:study_id>/", api.StudyDetailApi.as_view(), name="study-detail"),
    path("studies/<uuid:study_id>/images/", api.StudyImagesApi.as_view(), name="study-images"),
    path("images/<uuid:image_id>/file/", api.ImageFileApi.as_view(), name="image-file"),
    path("images/<uuid:image_id>/heatmap/", api.ImageHeatmapApi.as_view(), name="image-heatmap"),
]
